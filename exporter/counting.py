"""Incremental message counting: per-series running totals past a settled watermark.

Rows with a key at or below the watermark F were counted once and are final. Rows
above it are the "tail": counted, in batches (the rows one collection counted), but a
transaction that took a lower id may still commit (ids are not committed in order), so
a batch is checked once more when it settles. Each collection costs the rows added
since the last one (and those of the batches that settle), not the table:

1. A one-row summary: the highest key and, for the batches that settle now, how many
   rows they hold now and a checksum of their keys (compared with what was counted).
2. If those changed (a late commit, or a deletion), they are recounted per series; a
   rise counts (committed late), a fall does not (deleted).
3. One grouped count of the new rows only (up to that highest key): each moves its
   series' total at once.

On PostgreSQL all three read one REPEATABLE READ snapshot, the fence is taken in the
summary's statement (``db.pg_fenced``), and the probe of which transactions are still
open in a statement before it (``db.pg_probe``). Elsewhere the statements may read newer
data one after another; the counts stay exact (a late row makes the check differ, so
the batch is recounted). A batch settles once ``settle_after`` has passed and every
transaction open when it was counted has ended (the xid fence, see ``db.Fence``); F then
moves past it and its rows are final.

The exported total of a series only moves up. Deleted or archived messages lower the
recount, never the total. After a restart the first collection counts the whole table,
so the totals are rebuilt from what is there (a counter reset).

Per-series state lives in flat arrays indexed by series number (8 bytes a value, no
object per series); the key tuples are shared with the snapshots, which only append.
"""

from __future__ import annotations

import datetime as dt
import sys
from array import array
from collections import Counter, deque
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from decimal import Decimal
from math import inf
from operator import call
from typing import Any, Literal, cast

from .db import Fence, Probe
from .mapping import MessagesSpec
from .snapshot import MessageTotals

SeriesKey = tuple[str, ...]
"""(org, direction[, channel][, sender]) in the order of the spec's labels."""

FLOOR = -(2**63)
"""Below every key: the first collection counts the whole table."""
CEILING = 2**63 - 1
"""Above every key: the first collection's upper bound."""

Shape = Literal["full", "counts", "by_labels"]
"""Rows of a count (mapping.MessagesSpec): of ``sql``, ``counts_sql`` or ``by_labels_sql``."""


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


class LabelValues(dict[Any, str]):
    """One column's database values as label values, each converted once (org ids and
    channel names repeat in every collection), read in C (``__getitem__``). One per column:
    a column's values are of one type, so values that compare equal read the same (a JSON
    column holding both 1 and true would show the first one's text for both)."""

    LIMIT = 250_000
    """Values remembered at most; past it (values that churn) the cache starts over."""

    def __missing__(self, value: Any) -> str:
        if len(self) >= self.LIMIT:
            self.clear()
        text = self[value] = label_value(value)
        return text


def labels_of(columns: Sequence[Callable[[Any], str]], row: Sequence[Any]) -> tuple[str, ...]:
    """A row's first values as label values, each through its column (LabelValues)."""
    try:
        return tuple(map(call, columns, row))
    except TypeError:  # a value that cannot be a dict key (an array, a JSON object)
        return tuple(map(label_value, row[: len(columns)]))


@dataclass
class _Batch:
    """The rows one collection counted: keys in (the previous highest, ``upper``]."""

    upper: int
    at: float
    """Monotonic time of the count."""
    fence: Fence | None
    series: Sequence[int]
    counts: Sequence[int]
    """Rows per series, ``counts[j]`` for series number ``series[j]``: arrays for a full
    count (large counts, no object each), lists for a steady one (its series numbers are
    the counter's own int objects, and its counts mostly 1: a list costs no more)."""
    rows: int
    checksum: int

    def by_series(self, into: dict[int, int]) -> None:
        for i, n in zip(self.series, self.counts, strict=True):
            into[i] = into.get(i, 0) + n


@dataclass
class _Fold:
    """Full-shape rows read into per-series counts, not yet applied."""

    counts: dict[int, int] = field(default_factory=dict)
    rows: int = 0
    checksum: int = 0
    top: int = FLOOR
    firsts: dict[tuple[str, str], float] = field(default_factory=dict)

    def columns(self) -> tuple[array[int], array[int]]:
        """Series numbers and their counts, as a batch keeps them."""
        return array("q", self.counts.keys()), array("q", self.counts.values())

    def batch(self, upper: int, at: float, fence: Fence | None) -> _Batch:
        return _Batch(upper, at, fence, *self.columns(), self.rows, self.checksum)


@dataclass(frozen=True)
class Summary:
    """One row: the tail's rows now and their checksum, and the highest key above it."""

    tail_rows: int
    tail_checksum: int
    highest: int | None

    @classmethod
    def of(cls, row: Sequence[Any]) -> Summary:
        top = None if row[2] is None else int(row[2])
        return cls(int(row[0] or 0), int(row[1] or 0), top)


@dataclass
class MessageCounter:
    """Per-series running totals past a settled watermark (see the module docstring)."""

    spec: MessagesSpec
    settle_after: float
    watermark: int = FLOOR
    highest: int = FLOOR
    """The highest key counted so far."""
    keys: list[SeriesKey] = field(default_factory=list)
    series_of: dict[tuple[str, ...], dict[str, int]] = field(default_factory=dict)
    """Series number by label values (all but the org's), then org: one small dict per
    set of label values, so that a steady count's ``by_labels`` rows find their series with
    no key made per series. All text: values of other types that read the same as text
    (1 and "1") are one series."""
    owns: Callable[[str], bool] = field(default=lambda org: True, repr=False)
    """Whether an org is this shard's (mapping.Shard.owns): checked for each org a steady
    ``by_labels`` count meets for the first time, as ``Collection._mine`` checks rows."""
    _columns: tuple[Callable[[Any], str], ...] = field(default=(), init=False, repr=False)
    """Each column's values as label values (org ids, then the labels), remembered."""
    _since_copy: dict[tuple[str, str], float] = field(default_factory=dict)
    """What the snapshots share of ``since`` (copied when it grew)."""
    totals: array[int] = field(default_factory=lambda: array("q"))
    """Exported: only ever grow."""
    gone: array[int] = field(default_factory=lambda: array("q"))
    """Rows in the totals that a recount or a reconciliation no longer found (deleted or
    archived). What has settled per series follows: totals, less the batches not yet
    settled, less these (``_settled``); so settling a batch is no work per series."""
    since: dict[tuple[str, str], float] = field(default_factory=dict)
    """Counting-since per (org, direction): oldest message at first sight; never moves."""
    collections: int = 0
    rows_per_key: float = 1.0
    """Of the latest steady count: how densely keys are used (1 for a plain sequence,
    far less for keys with gaps, such as time-based ids)."""
    batches: deque[_Batch] = field(default_factory=deque)
    pending: set[tuple[str, str]] = field(default_factory=set)
    """(org, direction) pairs with series but no counting-since yet."""

    def __post_init__(self) -> None:
        self._columns = tuple(LabelValues().__getitem__ for _ in range(self.width))

    @property
    def ready(self) -> bool:
        """True once the whole table has been counted (the first collection)."""
        return self.collections > 0

    @property
    def recounted(self) -> int:
        """Rows above the watermark, checked again before they settle."""
        return sum(b.rows for b in self.batches)

    @property
    def width(self) -> int:
        return 1 + len(self.spec.labels)

    # --- a collection ----------------------------------------------------------------

    def due(self, now: float) -> bool:
        """Whether the oldest batch may settle now by time (else the probe is not needed)."""
        return bool(self.batches) and now - self.batches[0].at >= self.settle_after

    def settle_to(self, now: float, probe: Probe | None) -> int:
        """The highest batch bound that is settled now (``now`` is monotonic)."""
        settle = self.watermark
        for batch in self.batches:
            if not self._is_settled(batch, now, probe):
                break
            settle = batch.upper
        return settle

    def _is_settled(self, batch: _Batch, now: float, probe: Probe | None) -> bool:
        if now - batch.at < self.settle_after:
            return False
        if batch.fence is None:  # not PostgreSQL: the time alone
            return True
        return probe is not None and probe.passed(batch.fence)

    def tail_matches(self, summary: Summary, settle: int) -> bool:
        """Whether the batches that settle now (up to key ``settle``) still hold exactly the
        rows counted there: no late commit, no delete."""
        settling = self._settling(settle)
        rows = sum(b.rows for b in settling)
        checksum = sum(b.checksum for b in settling)
        return (summary.tail_rows, summary.tail_checksum) == (rows, checksum)

    def recount_tail(self, settle: int, rows: Iterable[Sequence[Any]]) -> int:
        """Fold a per-series recount of the batches that settle now, keys up to ``settle``
        (rows of the full shape: org, labels..., n, first_ts, max_key, checksum). A rise
        over what was counted is a late commit and is added; a fall is a deletion and
        changes nothing. They become one batch of what is there now, for ``settle()``.
        The rows are read whole before anything is applied. Returns the late rows."""
        low = self._settling(settle)
        if not low:
            return 0
        fold = self._fold_full(rows)
        before: dict[int, int] = {}
        for batch in low:
            batch.by_series(before)
        late = 0
        for i in before.keys() | fold.counts.keys():
            change = fold.counts.get(i, 0) - before.get(i, 0)
            if change > 0:
                self.totals[i] += change
                late += change
            elif change < 0:
                self.gone[i] -= change
        self._first_seen(fold.firsts)
        newest = low[-1]
        rest = [b for b in self.batches if b.upper > settle]
        self.batches = deque([fold.batch(newest.upper, newest.at, newest.fence), *rest])
        return late

    def _settling(self, settle: int) -> list[_Batch]:
        """The batches at or below key ``settle``: those that settle now."""
        return [b for b in self.batches if b.upper <= settle]

    def _fold_full(self, rows: Iterable[Sequence[Any]]) -> _Fold:
        """Full-shape rows, read one at a time, into per-series counts (nothing applied)."""
        width = self.width
        fold = _Fold()
        counts, firsts = fold.counts, fold.firsts
        for row in rows:
            i = self._series(row)
            n = int(row[width])
            counts[i] = counts.get(i, 0) + n
            fold.rows += n
            fold.checksum += int(row[width + 3] or 0)
            top = row[width + 2]
            if top is not None and top > fold.top:
                fold.top = int(top)
            key = self.keys[i]
            self._earliest(firsts, (key[0], key[1]), row[width + 1])
        return fold

    def _earliest(self, firsts: dict[tuple[str, str], float], od: tuple[str, str], ts: Any) -> None:
        """Keep in ``firsts`` the oldest first-message time of a pair still pending."""
        if od in self.pending:
            first = to_unix(ts)
            if first is not None and first < firsts.get(od, inf):
                firsts[od] = first

    def _first_seen(self, firsts: dict[tuple[str, str], float]) -> None:
        for od, first in firsts.items():
            if od in self.pending:
                self.since.setdefault(od, first)
                self.pending.discard(od)

    def settle(self, upto: int) -> None:
        """Make final the batches at or below ``upto`` (checked against the table just now)."""
        while self.batches and self.batches[0].upper <= upto:
            self.watermark = self.batches.popleft().upper

    def _settled(self) -> list[int]:
        """Per series, the rows at or below the watermark as last checked: as the last
        reconciliation found them, plus the batches settled since."""
        pending: dict[int, int] = {}
        for batch in self.batches:
            batch.by_series(pending)
        return [
            total - pending.get(i, 0) - gone
            for i, (total, gone) in enumerate(zip(self.totals, self.gone, strict=True))
        ]

    def add_fresh(
        self,
        rows: Iterable[Sequence[Any]],
        upper: int | None,
        now: float,
        fence: Fence | None,
        shape: Shape,
    ) -> set[tuple[str, str]]:
        """Fold the grouped count of the new rows, up to key ``upper``, rows of the given
        ``shape``: ``full`` (org, labels..., n, first_ts, max_key, checksum; the highest key
        is read from the rows), ``counts`` (org, labels..., n, checksum) or ``by_labels``
        (labels..., orgs, n, checksum). Each row moves its series' total at once; together
        they become a batch. Nothing is applied until every row has been read.
        Returns the (org, direction) pairs seen here for the first time whose
        counting-since is still to be read (``add_since``)."""
        known = len(self.keys)
        highest = self.highest if upper is None else max(self.highest, upper)
        found: Sequence[int]
        ns: Sequence[int]
        if shape == "full":  # streamed: read whole into per-series counts, then applied
            fold = self._fold_full(rows)
            self._first_seen(fold.firsts)
            highest = max(highest, fold.top)
            found, ns = fold.columns()
            n_rows, checksum = fold.rows, fold.checksum
        elif shape == "by_labels":
            found, ns, n_rows, checksum = self._fold_by_labels(rows)
        else:
            found, ns, n_rows, checksum = self._fold_counts(rows)
        totals = self.totals
        for i, n in zip(found, ns, strict=True):
            totals[i] += n
        if highest > self.highest:  # even with no rows here (another shard's, filtered out)
            self.batches.append(_Batch(highest, now, fence, found, ns, n_rows, checksum))
            if shape != "full" and self.highest != FLOOR:
                self.rows_per_key = n_rows / (highest - self.highest)
        self.highest = highest
        self.collections += 1
        return {(k[0], k[1]) for k in self.keys[known:]} & self.pending

    def _fold_counts(
        self, rows: Iterable[Sequence[Any]]
    ) -> tuple[Sequence[int], Sequence[int], int, int]:
        """``counts`` rows (where the database has no ``by_labels`` statement), each found
        through ``_series``."""
        width = self.width
        found: list[int] = []
        ns: list[int] = []
        checksum = 0
        for row in rows:
            found.append(self._series(row))
            ns.append(int(row[width]))
            checksum += int(row[width + 1] or 0)
        return found, ns, sum(ns), checksum

    def _fold_by_labels(
        self, rows: Iterable[Sequence[Any]]
    ) -> tuple[Sequence[int], Sequence[int], int, int]:
        """``by_labels`` rows: a few dozen, each with the org of every new message of its
        label values. The orgs are made label values and counted (LabelValues and Counter,
        both in C), and found in the dict of their label values (``series_of``): no key
        and no Python call per series."""
        k = self.width - 1
        org_label, label_columns = self._columns[0], self._columns[1:]
        found: list[int] = []
        ns: list[int] = []
        n_rows = checksum = 0
        for row in rows:
            labels = labels_of(label_columns, row)
            orgs = row[k] or ()
            try:
                per_org = Counter(map(org_label, orgs))
            except TypeError:  # an org id that cannot be a dict key
                per_org = Counter(map(label_value, orgs))
            by_org = self.series_of.get(labels, {})
            maybe: list[int | None] = list(map(by_org.get, per_org))
            if None in maybe:  # new series (rare after the first count), or another shard's
                for org, n in per_org.items():
                    if self.owns(org):
                        found.append(self._series_at(org, labels))
                        ns.append(n)
            else:
                found += cast(list[int], maybe)
                ns += per_org.values()
            n_rows += int(row[k + 1] or 0)
            checksum += int(row[k + 2] or 0)
        return found, ns, n_rows, checksum

    def fits_by_labels(self, rows: Sequence[Sequence[Any]]) -> bool:
        """Whether ``by_labels`` rows came back whole: each row's orgs a list, one org per
        row it counted. psycopg reads an array of a type it does not know (an enum, citext)
        as one string; such a count is read again as ``counts`` rows."""
        k = self.width - 1
        return all(type(r[k]) is list and len(r[k]) == r[k + 1] for r in rows)

    def add_since(
        self, rows: Iterable[Sequence[Any]], pairs: set[tuple[str, str]], fallback: float
    ) -> None:
        """Counting-since for ``pairs`` (new in the latest count) from rows (org, direction,
        first_ts) over that count's keys; a pair they do not show (its rows deleted since)
        gets ``fallback``, the time counting began for it."""
        firsts: dict[tuple[str, str], float] = {}
        for row in rows:
            self._earliest(firsts, (label_value(row[0]), label_value(row[1])), row[2])
        self._first_seen({**dict.fromkeys(pairs, fallback), **firsts})

    def _series(self, row: Sequence[Any]) -> int:
        """The series number of a row (org, labels...), adding the series if it is new."""
        key = labels_of(self._columns, row)
        return self._series_at(key[0], key[1:])

    def _series_at(self, org: str, labels: tuple[str, ...]) -> int:
        by_org = self.series_of.get(labels)
        if by_org is None:
            by_org = self.series_of[labels] = {}
        i = by_org.get(org)
        if i is None:
            i = by_org[org] = len(self.keys)
            key = (org, *labels)
            self.keys.append(key)
            self.totals.append(0)
            self.gone.append(0)
            if (org, key[1]) not in self.since:
                self.pending.add((org, key[1]))
        return i

    # --- reconciliation --------------------------------------------------------------

    def reconcile_params(self) -> dict[str, int] | None:
        """Bounds for a full count at or below the watermark; None before anything settled."""
        if self.watermark == FLOOR:
            return None
        return {"after": FLOOR, "upto": self.watermark}

    def reconcile(self, rows: Iterable[Sequence[Any]]) -> dict[SeriesKey, int]:
        """Compare a full count at or below the watermark (full-shape rows) with what was
        counted there.

        More rows than counted means some were committed below the watermark after it
        moved past them (a transaction that outlived every check): their number is added
        to the totals and returned. Fewer means deletions, which change nothing. Either
        way the table's count becomes the new baseline.
        """
        fold = self._fold_full(rows)
        found = fold.counts
        self._first_seen(fold.firsts)
        added: dict[SeriesKey, int] = {}
        for i, settled in enumerate(self._settled()):
            now = found.get(i, 0)
            if now > settled:
                added[self.keys[i]] = now - settled
                self.totals[i] += now - settled
            elif now < settled:
                self.gone[i] += settled - now
        return added

    # --- reading ---------------------------------------------------------------------

    def snapshot(self) -> MessageTotals:
        if len(self._since_copy) != len(self.since):  # entries never change, only arrive
            self._since_copy = dict(self.since)
        return MessageTotals(self.keys, len(self.keys), array("q", self.totals), self._since_copy)

    def totals_by_key(self) -> dict[SeriesKey, int]:
        return {key: t for key, t in zip(self.keys, self.totals, strict=True) if t > 0}
