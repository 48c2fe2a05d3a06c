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
import sys
from collections import deque
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

from .db import Fence, Probe
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
    if type(value) is str:  # the common case, first
        return sys.intern(value)
    if value is None:
        return ""
    if isinstance(value, bytes | bytearray | memoryview):
        text = bytes(value).decode("utf-8", errors="replace")
    elif isinstance(value, float) and value.is_integer():
        text = str(int(value))
    else:
        text = str(value)
    # interned: the same few org ids and channel names repeat across thousands of series
    return sys.intern(text)


@dataclass(slots=True)
class _Series:
    total: int = 0
    """Exported: only ever grows."""
    settled: int = 0
    """Rows at or below the watermark: as the last reconciliation found them, plus those
    settled since."""
    tail: int = 0
    """Rows above the watermark at the last collection (all at or below the highest key seen)."""


@dataclass(frozen=True)
class _Seen:
    at: float
    """Monotonic time of the count that saw ``max_key``."""
    max_key: int
    fence: Fence | None


@dataclass
class MessageCounter:
    """Per-series running totals past a settled watermark (see the module docstring).

    Each query counts, per series, the rows above the watermark ``after`` (``n``), the part
    at or below ``settle`` that becomes final now (``n_settling``), and the part above the
    highest key seen before, ``seen`` (``n_fresh``): new rows count at once; a change among
    the older tail rows counts only when it is a rise (a late commit), never a fall (a delete).
    """

    spec: MessagesSpec
    settle_after: float
    watermark: int = FLOOR
    highest: int = FLOOR
    """The highest key seen so far."""
    series: dict[SeriesKey, _Series] = field(default_factory=dict)
    since: dict[tuple[str, str], float] = field(default_factory=dict)
    """Counting-since per (org, direction): oldest message at first sight; never moves."""
    collections: int = 0
    _seen: deque[_Seen] = field(default_factory=deque)
    _tailed: set[SeriesKey] = field(default_factory=set)
    """Series with rows above the watermark: the only ones besides those in a query's rows
    whose state can change, so a collection touches what moved, not every series."""

    @property
    def ready(self) -> bool:
        """True once the whole table has been counted (the first collection)."""
        return self.collections > 0

    @property
    def recounted(self) -> int:
        """Rows above the watermark, counted again on every collection."""
        return sum(s.tail for s in self.series.values())

    def params(self, now: float, probe: Probe | None) -> dict[str, int]:
        """Bounds for the next query (``now`` is monotonic)."""
        settle = self.watermark
        while self._seen and self._is_settled(self._seen[0], now, probe):
            settle = max(settle, self._seen.popleft().max_key)
        return {"after": self.watermark, "settle": settle, "seen": self.highest}

    def _is_settled(self, seen: _Seen, now: float, probe: Probe | None) -> bool:
        if now - seen.at < self.settle_after:
            return False
        if seen.fence is None:  # not PostgreSQL: the time alone
            return True
        return probe is not None and probe.passed(seen.fence)

    def apply(
        self,
        rows: Iterable[Sequence[Any]],
        params: dict[str, int],
        now: float,
        fence: Fence | None,
    ) -> None:
        """Fold one query's rows (org, labels..., n, n_settling, n_fresh, first_ts, max_key)."""
        width = 1 + len(self.spec.labels)
        counted: dict[SeriesKey, tuple[int, int, int]] = {}
        highest = self.highest
        firsts: dict[tuple[str, str], float] = {}
        since = self.since
        for row in rows:
            key = tuple(map(label_value, row[:width]))
            n, n_settling, n_fresh, first_ts, row_max = row[width : width + 5]
            prev = counted.get(key)  # label values that differ only in type merge
            if prev is None:
                counted[key] = (int(n), int(n_settling or 0), int(n_fresh or 0))
            else:
                counted[key] = (
                    prev[0] + int(n),
                    prev[1] + int(n_settling or 0),
                    prev[2] + int(n_fresh or 0),
                )
            if row_max is not None and row_max > highest:
                highest = int(row_max)
            od = (key[0], key[1])
            if od in since:  # counting-since is taken once: no need to read the time again
                continue
            first = to_unix(first_ts)
            if first is not None and (od not in firsts or first < firsts[od]):
                firsts[od] = first
        tailed = self._tailed
        for key in set(counted) | tailed:
            state = self.series.get(key)
            if state is None:
                state = self.series[key] = _Series()
            n, n_settling, n_fresh = counted.get(key, (0, 0, 0))
            late = (n - n_fresh) - state.tail  # < 0: deleted; > 0: committed late
            state.total += n_fresh + max(0, late)
            state.settled += n_settling
            state.tail = n - n_settling
            if state.tail:
                tailed.add(key)
            else:
                tailed.discard(key)
        for od, first in firsts.items():
            self.since.setdefault(od, first)
        self.watermark = params["settle"]
        if highest > self.highest:
            self._seen.append(_Seen(now, highest, fence))
            self.highest = highest
        self.collections += 1

    def reconcile_params(self) -> dict[str, int] | None:
        """Bounds for a full count whose ``n_settling`` is each series' rows at or below the
        watermark; None before anything settled."""
        if self.watermark == FLOOR:
            return None
        return {"after": FLOOR, "settle": self.watermark, "seen": self.highest}

    def reconcile(self, rows: Iterable[Sequence[Any]]) -> dict[SeriesKey, int]:
        """Compare a full count at or below the watermark with what was counted there.

        More rows than counted means some were committed below the watermark after it
        moved past them (a transaction that outlived every check): their number is added
        to the totals and returned. Fewer means deletions, which change nothing. Either
        way the table's count becomes the new baseline.
        """
        width = 1 + len(self.spec.labels)
        found: dict[SeriesKey, int] = {}
        for row in rows:
            key = tuple(label_value(v) for v in row[:width])
            found[key] = found.get(key, 0) + int(row[width + 1] or 0)
        added: dict[SeriesKey, int] = {}
        for key in set(found) | set(self.series):
            state = self.series.setdefault(key, _Series())
            now = found.get(key, 0)
            if now > state.settled:
                added[key] = now - state.settled
                state.total += now - state.settled
            state.settled = now
        return added

    def totals(self) -> dict[SeriesKey, int]:
        return {key: s.total for key, s in self.series.items() if s.total > 0}
