"""Incremental message counting: per-series running totals past a settled watermark.

Each collection runs one grouped query over the rows whose key is above the
watermark F (a bound parameter). Rows at or below F were counted once and are
final; rows above it (the "tail") are recounted every time, because ids are not
committed in order: a transaction that took a lower id may commit after a higher
one was seen. F moves up to a key seen earlier only once that key is settled:
``settle_after`` has passed and, on PostgreSQL, every transaction that was open
when it was seen has ended (snapshot xmin past the xmax recorded then). So the
cost is the rows added since about two collections ago, not the table.

The exported total of a series only moves up: it grows by how much the recount
of (F, inf) grew since the last collection. Deleted or archived messages lower
the recount, never the total. After a restart the first collection counts the
whole table, so the totals are rebuilt from what is there (a counter reset).
"""

from __future__ import annotations

import datetime as dt
from collections import deque
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

from .mapping import MessagesSpec

SeriesKey = tuple[str, ...]
"""(org, direction[, channel][, sender]) in the order of the spec's labels."""

FLOOR = -(2**63)
"""Below every key: the first collection counts the whole table."""


def to_unix(value: Any) -> float | None:
    """A timestamp from any driver (aware or naive datetime, ISO text, epoch) in Unix seconds."""
    if value is None:
        return None
    if isinstance(value, dt.datetime):
        if value.tzinfo is None:
            value = value.replace(tzinfo=dt.UTC)
        return float(value.timestamp())
    if isinstance(value, dt.date):
        return dt.datetime(value.year, value.month, value.day, tzinfo=dt.UTC).timestamp()
    if isinstance(value, int | float | Decimal):
        return float(value)
    if isinstance(value, str):
        return to_unix(dt.datetime.fromisoformat(value.strip()))
    raise TypeError(f"not a timestamp: {type(value).__name__}")


def label_value(value: Any) -> str:
    """Any database value as a label value: ints plainly, bytes decoded leniently."""
    if value is None:
        return ""
    if isinstance(value, bytes | bytearray | memoryview):
        return bytes(value).decode("utf-8", errors="replace")
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


@dataclass
class _Series:
    total: int = 0
    """Exported: only ever grows."""
    settled: int = 0
    """Rows at or below the watermark, counted once."""
    tail: int = 0
    """Rows above the watermark at the last collection."""


@dataclass(frozen=True)
class _Seen:
    at: float
    max_key: int
    xmax: int | None


@dataclass
class MessageCounter:
    spec: MessagesSpec
    settle_after: float
    watermark: int = FLOOR
    series: dict[SeriesKey, _Series] = field(default_factory=dict)
    since: dict[tuple[str, str], float] = field(default_factory=dict)
    """Counting-since per (org, direction): oldest message at first sight; never moves."""
    collections: int = 0
    _seen: deque[_Seen] = field(default_factory=deque)

    @property
    def ready(self) -> bool:
        """True once the whole table has been counted (the first collection)."""
        return self.collections > 0

    def params(self, now: float, xmin: int | None) -> dict[str, int]:
        """Bounds for the next query: count above ``after``; at or below ``settle`` is final."""
        settle = self.watermark
        while self._seen and self._is_settled(self._seen[0], now, xmin):
            settle = max(settle, self._seen.popleft().max_key)
        return {"after": self.watermark, "settle": settle}

    def _is_settled(self, seen: _Seen, now: float, xmin: int | None) -> bool:
        if now - seen.at < self.settle_after:
            return False
        return seen.xmax is None or (xmin is not None and xmin >= seen.xmax)

    def apply(
        self, rows: Iterable[Sequence[Any]], params: dict[str, int], now: float, xmax: int | None
    ) -> None:
        """Fold one query's rows (org, labels..., n, n_settling, first_ts, max_key) in."""
        width = 1 + len(self.spec.labels)
        counted: dict[SeriesKey, tuple[int, int]] = {}
        max_key = params["settle"]
        firsts: dict[tuple[str, str], float] = {}
        for row in rows:
            key = tuple(label_value(v) for v in row[:width])
            n, n_settling, first_ts, row_max = row[width : width + 4]
            prev = counted.get(key, (0, 0))  # label values that differ only in type merge
            counted[key] = (prev[0] + int(n), prev[1] + int(n_settling or 0))
            if row_max is not None:
                max_key = max(max_key, int(row_max))
            first = to_unix(first_ts)
            od = (key[0], key[1])
            if first is not None and (od not in firsts or first < firsts[od]):
                firsts[od] = first
        for key in set(counted) | set(self.series):
            state = self.series.setdefault(key, _Series())
            n, n_settling = counted.get(key, (0, 0))
            if n > state.tail:
                state.total += n - state.tail
            state.settled += n_settling
            state.tail = n - n_settling
        for od, first in firsts.items():
            self.since.setdefault(od, first)
        self.watermark = params["settle"]
        if max_key > self.watermark:
            self._seen.append(_Seen(now, max_key, xmax))
        self.collections += 1

    def totals(self) -> dict[SeriesKey, int]:
        return {key: s.total for key, s in self.series.items() if s.total > 0}
