"""Immutable snapshots of collected values, and the store that swaps in a whole one at once.

The HTTP side only ever reads ``Store.current``: one attribute read, no lock, and
the object it gets never changes under it.
"""

from __future__ import annotations

import threading
import zlib
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
    """Monotonic time of the read (for staleness)."""


@dataclass(frozen=True)
class Rendered:
    """The data part of /metrics, rendered once per collection, in each encoding."""

    text: bytes = b""
    openmetrics: bytes = b""
    """Without the closing ``# EOF``: the exporter's own metrics follow it."""
    text_gzip: GzipPrefix = field(default_factory=lambda: GzipPrefix(b""))
    openmetrics_gzip: GzipPrefix = field(default_factory=lambda: GzipPrefix(b""))


class GzipPrefix:
    """The data part compressed once, as the open start of a gzip stream.

    ``finish(tail)`` appends the per-scrape tail and closes the stream by copying the
    compressor's saved state, so a scrape compresses only its few own lines and the
    client still gets one ordinary gzip stream (curl reads only the first of several).
    """

    def __init__(self, data: bytes, level: int = 1) -> None:
        self._compressor = zlib.compressobj(level, zlib.DEFLATED, 31)  # 31: gzip wrapper
        self.prefix = self._compressor.compress(data) + self._compressor.flush(zlib.Z_SYNC_FLUSH)

    def finish(self, tail: bytes) -> bytes:
        c = self._compressor.copy()
        return self.prefix + c.compress(tail) + c.flush()


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
        """Runs are serialized by the scheduler, so the latest published is the newest."""
        with self._write:
            self._current = snapshot
