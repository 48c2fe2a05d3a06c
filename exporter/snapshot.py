"""Immutable snapshots of collected values, and the store that swaps in a whole one at once.

The HTTP side only ever reads ``Store.current``: one attribute read, no lock, and
the object it gets never changes under it.
"""

from __future__ import annotations

import threading
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType


@dataclass(frozen=True)
class Series:
    labels: tuple[str, ...]
    value: float
    created: float | None = None


@dataclass(frozen=True)
class MetricData:
    """One metric's series as last read, and when."""

    key: str
    series: tuple[Series, ...]
    collected_at: float


@dataclass(frozen=True)
class Rendered:
    """The data part of /metrics, rendered once per collection, in each encoding."""

    text: bytes = b""
    openmetrics: bytes = b""
    """Without the closing ``# EOF``: the exporter's own metrics follow it."""
    text_gzip: bytes = b""
    openmetrics_gzip: bytes = b""


@dataclass(frozen=True)
class Snapshot:
    metrics: Mapping[str, MetricData] = field(default_factory=lambda: MappingProxyType({}))
    taken_at: float = 0.0
    rendered: Rendered = Rendered()


class Store:
    """Holds the latest snapshot; writers replace it whole."""

    def __init__(self) -> None:
        self._current = Snapshot()
        self._write = threading.Lock()

    @property
    def current(self) -> Snapshot:
        return self._current

    def publish(self, snapshot: Snapshot) -> None:
        with self._write:
            if snapshot.taken_at >= self._current.taken_at:
                self._current = snapshot
