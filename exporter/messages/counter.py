"""Per-series running totals of messages past a settled watermark: the state of message
counting and the steps that change it. ``collector.py`` runs them in order.

Rows with a key at or below the watermark were counted once and are final. Rows above
it were counted in batches (the rows one collection counted), but a transaction that
took a lower key may still commit (keys are not committed in order), so a batch is
checked once more when it settles: once ``settle_after`` has passed and its fence (what
was open when it was counted) has passed the probe. A batch whose rows changed by then
is recounted per series: a rise counts (committed late), a fall does not (deleted).

The exported total of a series only moves up. Deleted or archived messages lower the
recount, never the total.

Per-series state lives in flat arrays indexed by series number (8 bytes a value, no
object per series); the key tuples are shared with the snapshots, which only append.
"""

from __future__ import annotations

import datetime as dt
from array import array
from collections import Counter, deque
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from math import inf
from typing import Any, Literal, cast

from ..dialects import Fence, Probe
from ..labels import columns, label_value, labels_of, to_unix
from ..snapshot import MessageTotals
from .sql import FLOOR, SUMMARY, KeyRange, by_labels_layout, full_layout, per_series_layout

SeriesKey = tuple[str, ...]
"""(org, direction[, channel][, sender]) in the order of the mapping's labels."""
Pair = tuple[str, str]
"""(org, direction): what counting-since is kept for."""

Shape = Literal["full", "per_series", "by_labels"]
"""The layout of a count's rows (sql.py): ``full_layout``, ``per_series_layout`` or
``by_labels_layout``."""


@dataclass
class Batch:
    """The rows one collection counted: keys in (the previous batch's ``upper``, ``upper``]."""

    upper: int
    at: float
    """Monotonic time of the count."""
    fence: Fence
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


def _older(a: Any, b: Any) -> Any:
    """The older of two timestamps as a driver gives them (compared as they are where they
    can be: datetimes of one kind, ISO text of one form; else in Unix seconds)."""
    if type(a) is type(b) and not isinstance(a, str):
        try:
            return b if b < a else a
        except TypeError:  # naive beside aware
            pass
    ua, ub = to_unix(a), to_unix(b)
    return b if ua is None or (ub is not None and ub < ua) else a


@dataclass
class _Fold:
    """Full-layout rows read into per-series counts, not yet applied."""

    counts: dict[int, int] = field(default_factory=dict)
    rows: int = 0
    checksum: int = 0
    max_key: int = FLOOR
    firsts: dict[Pair, float] = field(default_factory=dict)

    def columns(self) -> tuple[array[int], array[int]]:
        """Series numbers and their counts, as a batch keeps them."""
        return array("q", self.counts.keys()), array("q", self.counts.values())

    def batch(self, upper: int, at: float, fence: Fence) -> Batch:
        return Batch(upper, at, fence, *self.columns(), self.rows, self.checksum)


@dataclass(frozen=True)
class Summary:
    """The summary statement's row (``sql.SUMMARY``)."""

    settling_rows: int
    settling_checksum: int
    newest_key: int | None
    """The highest key above the settling batches: the upper bound of this count."""

    @classmethod
    def of(cls, row: Sequence[Any]) -> Summary:
        rows, checksum, newest = (row[SUMMARY.at(c)] for c in SUMMARY.columns)
        return cls(int(rows or 0), int(checksum or 0), None if newest is None else int(newest))


@dataclass
class MessageCounter:
    """Per-series running totals past a settled watermark (see the module docstring)."""

    labels: tuple[str, ...]
    settle_after: float
    owns: Callable[[str], bool] = field(default=lambda org: True, repr=False)
    """Whether an org is this shard's (mapping.Shard.owns): checked for each org a steady
    ``by_labels`` count meets for the first time."""
    timezone: dt.tzinfo = dt.UTC
    """The zone of timestamps the database gives without one (``database.timezone``)."""
    watermark: int = FLOOR
    ready: bool = False
    """True once the whole table has been counted (the first count)."""
    keys: list[SeriesKey] = field(default_factory=list)
    series_of: dict[tuple[str, ...], dict[str, int]] = field(default_factory=dict)
    """Series number by label values (all but the org's), then org: one small dict per
    set of label values, so that ``by_labels`` rows find their series with no key made
    per series. All text: values of other types that read the same as text (1 and "1")
    are one series."""
    totals: array[int] = field(default_factory=lambda: array("q"))
    """Exported: only ever grow."""
    gone: array[int] = field(default_factory=lambda: array("q"))
    """Rows in the totals that a recount or a reconciliation no longer found (deleted or
    archived). What has settled per series follows: totals, less the batches not yet
    settled, less these (``settled_per_series``); so settling a batch is no work per
    series."""
    since: dict[Pair, float] = field(default_factory=dict)
    """Counting-since per (org, direction): oldest message at first sight; never moves."""
    batches: deque[Batch] = field(default_factory=deque)
    """Counted, not yet settled, oldest first."""
    pending: set[Pair] = field(default_factory=set)
    """(org, direction) pairs with series but no counting-since yet."""
    _since_copy: dict[Pair, float] = field(default_factory=dict, repr=False)
    """What the snapshots share of ``since`` (copied when it grew)."""

    def __post_init__(self) -> None:
        self._columns = columns(1 + len(self.labels))
        """Each leading column's values as label values (org ids, then the labels)."""
        full = full_layout(self.labels)
        self._full = tuple(map(full.at, ("n", "first_ts", "max_key", "checksum")))
        per_series = per_series_layout(self.labels)
        self._per_series = tuple(map(per_series.at, ("n", "checksum")))
        by_labels = by_labels_layout(self.labels)
        self._by_labels = tuple(map(by_labels.at, ("orgs", "n", "checksum")))

    @property
    def counted_to(self) -> int:
        """The highest key counted so far."""
        return self.batches[-1].upper if self.batches else self.watermark

    @property
    def unsettled_rows(self) -> int:
        """Rows above the watermark: counted, to be checked again when they settle."""
        return sum(b.rows for b in self.batches)

    # --- settling --------------------------------------------------------------------

    def may_settle(self, now: float) -> bool:
        """Whether the oldest batch is old enough to settle (``now`` monotonic): only then
        is a probe worth taking."""
        return bool(self.batches) and now - self.batches[0].at >= self.settle_after

    def settle_point(self, now: float, probe: Probe | None, max_rows: int | None = None) -> int:
        """The highest batch bound that may settle now (None: no probe, nothing may); with
        ``max_rows``, as few batches as hold at most that many rows (one at least), so that
        the statements that check them stay small (a first count's ranges settle one by
        one)."""
        point, rows = self.watermark, 0
        if probe is None:
            return point
        for batch in self.batches:
            if now - batch.at < self.settle_after or not probe.passed(batch.fence):
                break
            rows += batch.rows
            if max_rows is not None and rows > max_rows and point > self.watermark:
                break
            point = batch.upper
        return point

    def settling(self, point: int) -> list[Batch]:
        """The batches at or below key ``point``: those that settle now."""
        return [b for b in self.batches if b.upper <= point]

    def settling_unchanged(self, summary: Summary, point: int) -> bool:
        """Whether the batches that settle now still hold exactly the rows counted there:
        no late commit, no delete."""
        settling = self.settling(point)
        rows = sum(b.rows for b in settling)
        checksum = sum(b.checksum for b in settling)
        return (summary.settling_rows, summary.settling_checksum) == (rows, checksum)

    def recount_settling(self, point: int, rows: Iterable[Sequence[Any]]) -> int:
        """Fold a per-series recount (full layout) of the batches that settle now. A rise
        over what was counted is a late commit and is added; a fall is a deletion and
        changes nothing. They become one batch of what is there now, for ``settle()``.
        The rows are read whole before anything is applied. Returns the late rows."""
        low = self.settling(point)
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
        rest = [b for b in self.batches if b.upper > point]
        self.batches = deque([fold.batch(newest.upper, newest.at, newest.fence), *rest])
        return late

    def settle(self, point: int) -> None:
        """Make final the batches at or below ``point`` (checked against the table just now)."""
        while self.batches and self.batches[0].upper <= point:
            self.watermark = self.batches.popleft().upper

    def settled_per_series(self) -> list[int]:
        """Per series, the rows at or below the watermark as last checked: as the last
        reconciliation found them, plus the batches settled since."""
        pending: dict[int, int] = {}
        for batch in self.batches:
            batch.by_series(pending)
        return [
            total - pending.get(i, 0) - gone
            for i, (total, gone) in enumerate(zip(self.totals, self.gone, strict=True))
        ]

    # --- new rows --------------------------------------------------------------------

    def add_new(
        self,
        rows: Iterable[Sequence[Any]],
        shape: Shape,
        upper: int | None,
        now: float,
        fence: Fence,
    ) -> set[Pair]:
        """Fold the count of the new rows, keys up to ``upper`` (None: up to the highest
        key the ``full`` rows show). Each row moves its series' total at once; together
        they become a batch. Nothing is applied until every row has been read.
        Returns the (org, direction) pairs seen here for the first time whose
        counting-since is still to be read (``add_counting_since``)."""
        known = len(self.keys)
        before = self.counted_to
        highest = before if upper is None else max(before, upper)
        found: Sequence[int]
        ns: Sequence[int]
        if shape == "full":  # streamed: read whole into per-series counts, then applied
            fold = self._fold_full(rows)
            self._first_seen(fold.firsts)
            highest = max(highest, fold.max_key)
            found, ns = fold.columns()
            n_rows, checksum = fold.rows, fold.checksum
        elif shape == "by_labels":
            found, ns, n_rows, checksum = self._fold_by_labels(rows)
        else:
            found, ns, n_rows, checksum = self._fold_per_series(rows)
        totals = self.totals
        for i, n in zip(found, ns, strict=True):
            totals[i] += n
        if highest > before:  # even with no rows here (another shard's, filtered out)
            self.batches.append(Batch(highest, now, fence, found, ns, n_rows, checksum))
        self.ready = True
        return {(k[0], k[1]) for k in self.keys[known:]} & self.pending

    def add_range(
        self,
        rows: Iterable[Sequence[Any]],
        upper: int,
        now: float,
        fence: Fence,
        firsts: dict[Pair, float],
    ) -> int:
        """Fold one range of a first count in ranges (full layout, keys up to ``upper``):
        its rows move their totals and become a batch; the oldest first-message time of
        each pending pair is kept in ``firsts`` across ranges (``finish_first_count``).
        Returns its rows."""
        fold = self._fold_full(rows)
        for pair, first in fold.firsts.items():
            if first < firsts.get(pair, inf):
                firsts[pair] = first
        totals = self.totals
        for i, n in fold.counts.items():
            totals[i] += n
        if upper > self.counted_to:
            self.batches.append(fold.batch(upper, now, fence))
        return fold.rows

    def finish_first_count(self, firsts: dict[Pair, float]) -> None:
        """The whole table is counted: counting-since of the pairs it found, and ready."""
        self._first_seen(firsts)
        self.ready = True

    def add_counting_since(
        self, rows: Iterable[Sequence[Any]], pairs: set[Pair], fallback: float
    ) -> None:
        """Counting-since for ``pairs`` (new in the latest count) from rows (``sql.SINCE``)
        over that count's keys; a pair they do not show (its rows deleted since) gets
        ``fallback``, the time counting began for it."""
        firsts: dict[Pair, float] = {}
        for org, direction, first_ts in rows:
            self._earliest(firsts, (label_value(org), label_value(direction)), first_ts)
        self._first_seen({**dict.fromkeys(pairs, fallback), **firsts})

    def _fold_full(self, rows: Iterable[Sequence[Any]]) -> _Fold:
        """Full-layout rows, read one at a time, into per-series counts (nothing applied)."""
        n_at, first_at, max_at, checksum_at = self._full
        fold = _Fold()
        counts, keys, pending = fold.counts, self.keys, self.pending
        oldest: dict[Pair, Any] = {}
        """The oldest first-message time of each pending pair, as the driver gave it:
        made a timestamp once per pair, not once per row (a first count's ranges hold
        every series)."""
        for row in rows:
            i = self._series(row)
            n = int(row[n_at])
            counts[i] = counts.get(i, 0) + n
            fold.rows += n
            fold.checksum += int(row[checksum_at] or 0)
            top = row[max_at]
            if top is not None and top > fold.max_key:
                fold.max_key = int(top)
            ts = row[first_at]
            if ts is not None:
                key = keys[i]
                pair = (key[0], key[1])
                if pair in pending:
                    seen = oldest.get(pair)
                    oldest[pair] = ts if seen is None else _older(seen, ts)
        for pair, ts in oldest.items():
            self._earliest(fold.firsts, pair, ts)
        return fold

    def _fold_per_series(
        self, rows: Iterable[Sequence[Any]]
    ) -> tuple[Sequence[int], Sequence[int], int, int]:
        """Per-series rows (where the database has no org arrays), each through ``_series``."""
        n_at, checksum_at = self._per_series
        found: list[int] = []
        ns: list[int] = []
        checksum = 0
        for row in rows:
            found.append(self._series(row))
            ns.append(int(row[n_at]))
            checksum += int(row[checksum_at] or 0)
        return found, ns, sum(ns), checksum

    def _fold_by_labels(
        self, rows: Iterable[Sequence[Any]]
    ) -> tuple[Sequence[int], Sequence[int], int, int]:
        """``by_labels`` rows: a few dozen, each with the org of every new message of its
        label values. The orgs are made label values and counted (LabelValues and Counter,
        both in C), and found in the dict of their label values (``series_of``): no key
        and no Python call per series."""
        orgs_at, n_at, checksum_at = self._by_labels
        org_label, label_columns = self._columns[0], self._columns[1:]
        found: list[int] = []
        ns: list[int] = []
        n_rows = checksum = 0
        for row in rows:
            labels = labels_of(label_columns, row)
            orgs = row[orgs_at] or ()
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
            n_rows += int(row[n_at] or 0)
            checksum += int(row[checksum_at] or 0)
        return found, ns, n_rows, checksum

    def by_labels_whole(self, rows: Sequence[Sequence[Any]]) -> bool:
        """Whether ``by_labels`` rows came back whole: each row's orgs a list, one org per
        row it counted. psycopg reads an array of a type it does not know (an enum, citext)
        as one string."""
        orgs_at, n_at, _ = self._by_labels
        return all(type(r[orgs_at]) is list and len(r[orgs_at]) == r[n_at] for r in rows)

    def drop_null_orgs(self, rows: list[Sequence[Any]]) -> int:
        """``by_labels`` rows without the NULL orgs in their arrays (rows of no
        organization); returns how many. The rows' own count and checksum keep them, as
        every check of the range does."""
        orgs_at = self._by_labels[0]
        dropped = 0
        for j, row in enumerate(rows):
            orgs = row[orgs_at]
            if None in orgs:
                kept = [o for o in orgs if o is not None]
                dropped += len(orgs) - len(kept)
                rows[j] = (*row[:orgs_at], kept, *row[orgs_at + 1 :])
        return dropped

    def _earliest(self, firsts: dict[Pair, float], pair: Pair, ts: Any) -> None:
        """Keep in ``firsts`` the oldest first-message time of a pair still pending."""
        if pair in self.pending:
            first = to_unix(ts, self.timezone)
            if first is not None and first < firsts.get(pair, inf):
                firsts[pair] = first

    def _first_seen(self, firsts: dict[Pair, float]) -> None:
        for pair, first in firsts.items():
            if pair in self.pending:
                self.since.setdefault(pair, first)
                self.pending.discard(pair)

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

    def reconcile_range(self) -> KeyRange | None:
        """Keys at or below the watermark; None before anything settled."""
        if self.watermark == FLOOR:
            return None
        return KeyRange(FLOOR, self.watermark)

    def reconcile_fold(self, rows: Iterable[Sequence[Any]], into: dict[int, int]) -> int:
        """One range of a reconciliation in ranges, added to ``into`` (per series); returns
        its rows."""
        fold = self._fold_full(rows)
        self._first_seen(fold.firsts)
        for i, n in fold.counts.items():
            into[i] = into.get(i, 0) + n
        return fold.rows

    def reconciled(self, found: dict[int, int], settled: list[int]) -> dict[SeriesKey, int]:
        """Apply a reconciliation: ``found`` per series at or below the watermark it read
        up to; ``settled``, what was counted there when it began (``settled_per_series``;
        series added since then had none there).

        More rows than counted means some were committed below the watermark after it
        moved past them (a transaction that outlived every check): their number is added
        to the totals and returned. Fewer means deletions, which change nothing. Either
        way the table's count becomes the new baseline.
        """
        added: dict[SeriesKey, int] = {}
        for i, was in enumerate(settled):
            now = found.get(i, 0)
            if now > was:
                added[self.keys[i]] = now - was
                self.totals[i] += now - was
            elif now < was:
                self.gone[i] += was - now
        for i in range(len(settled), len(self.keys)):
            if found.get(i, 0):  # a series first seen in a range below the watermark
                added[self.keys[i]] = found[i]
                self.totals[i] += found[i]
        return added

    # --- restoring --------------------------------------------------------------------

    def restore(
        self,
        watermark: int,
        keys: Iterable[Sequence[str]],
        totals: array[int],
        gone: array[int],
        since: dict[Pair, float],
        pending: set[Pair],
        batches: deque[Batch],
    ) -> None:
        """A new counter takes a saved state (state.py checks it first)."""
        for key in keys:
            self._series_at(key[0], tuple(key[1:]))
        self.watermark, self.totals, self.gone = watermark, totals, gone
        self.since, self.pending, self.batches = since, pending, batches
        self.ready = True

    # --- reading ---------------------------------------------------------------------

    def snapshot(self) -> MessageTotals:
        if len(self._since_copy) != len(self.since):  # entries never change, only arrive
            self._since_copy = dict(self.since)
        return MessageTotals(self.keys, len(self.keys), array("q", self.totals), self._since_copy)

    def totals_by_key(self) -> dict[SeriesKey, int]:
        return {key: t for key, t in zip(self.keys, self.totals, strict=True) if t > 0}
