"""Immutable snapshots of collected values, and the store that swaps in a whole one at once:
a reader gets, with one attribute read and no lock, an object that never changes under it.
"""

from __future__ import annotations

import threading
from array import array
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType


@dataclass(frozen=True, slots=True)
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
class MessageTotals:
    """What a snapshot keeps of the message counter: the first ``size`` series keys (a list
    the counter shares and only appends to), a copy of their totals, and counting-since
    per (org, direction). No object per series: 200,000 series are 1.6 MB of totals."""

    keys: list[tuple[str, ...]]
    size: int
    totals: array[int]
    since: Mapping[tuple[str, str], float]


@dataclass(frozen=True)
class Snapshot:
    metrics: Mapping[str, MetricData] = field(default_factory=lambda: MappingProxyType({}))
    taken_at: float = 0.0
    messages: MessageTotals | None = None
    """None before the first count, or when the message counts are stale."""
    org_since: Mapping[str, float] = field(default_factory=lambda: MappingProxyType({}))
    """Counting-since by org where the mapping reads one (``organizations.counting_since``):
    the latest read, kept while the organizations query fails."""
    complete: bool = False
    """Every query's latest run succeeded and the whole table has been counted."""


class Store:
    """Holds the newest snapshot; a collection replaces it whole, so readers need no lock."""

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
