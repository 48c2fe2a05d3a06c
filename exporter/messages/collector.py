"""The message counting protocol, run once per collection and at each reconciliation.

A collection:

1. The probe of which transactions are still open, in a statement of its own, when a
   batch is old enough to settle: before the snapshot the batches are checked in, so
   that a transaction that has ended by now is in that snapshot (within one statement,
   pg_stat_activity would be read after the snapshot, and a commit in between would be
   in neither).
2. In one read-only transaction (one snapshot where the database has them): the summary
   with the fence for the new batch (the rows of the batches that settle now, their
   checksum, and the newest key above them);
3. if the settling batches changed (a late commit, a deletion), a recount of them per
   series; they settle;
4. one grouped count of the new rows only, up to that newest key; counting-since for
   (org, direction) pairs new in it.

The first count (the whole table, per series) and reconciliation run in key ranges
(``scan.py``), each range in a snapshot of its own with its own fence, over as many
collections as they take; each range of the first count is a batch, checked again when
it settles, like any other.

Where the database reads each statement's newest data (SQLite), a row committed after
the summary is past its newest key and waits for the next collection; one committed
into a settling range changes its checksum, so it is recounted. The counts stay exact.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import ExitStack, contextmanager
from functools import partial
from typing import Any

from sqlalchemy import Connection
from sqlalchemy.exc import SQLAlchemyError

from ..db import Database, Reader, connection
from ..dialects import NO_FENCE, Fence
from ..errors import QueryError
from ..mapping import MessagesSpec, Shard
from ..snapshot import MetricData
from .counter import MessageCounter, Pair, SeriesKey, Shape, Summary
from .ranges import Opened, read_ranges
from .scan import Reconciliation, Scan
from .sql import BOUNDS, CEILING, FLOOR, KeyRange, by_labels_layout

log = logging.getLogger("convrs_exporter.messages")

BY_LABELS_MAX_ROWS = 1_000_000
"""New rows one steady count reads as arrays of orgs at most (a million org ids is a few
MB), estimated from the new keys and the last count's rows per key; more (a catch-up) are
counted one row per series."""
SETTLE_ROWS = 1_000_000
"""Rows the batches that settle in one collection hold at most (one batch at least): a
first count's ranges are checked again one by one, each statement small."""


def read_bounds(reader: Reader, conn: Connection, bounds: str) -> tuple[int | None, int | None]:
    """The lowest and the highest key (``sql.BOUNDS``); None for an empty table."""
    with reader.read_only(conn):
        (row,) = reader.fetch(conn, bounds)
    low, high = (row[BOUNDS.at(c)] for c in BOUNDS.columns)
    return (None if low is None else int(low)), (None if high is None else int(high))


class MessagesCollector:
    key = "messages"

    def __init__(
        self,
        db: Database,
        spec: MessagesSpec,
        shard: Shard,
        counter: MessageCounter,
        clock: Callable[[], float],
        monotonic: Callable[[], float],
    ) -> None:
        self.db = db
        self.spec = spec
        self.shard = shard
        self.counter = counter
        self.clock = clock
        """Wall clock: the counting-since of a pair whose first rows are gone."""
        self.monotonic = monotonic
        self.reader = Reader(db, self.key, spec.timeout)
        self.null_orgs = [0]
        """Rows skipped for a NULL org since the collection last asked."""
        self.budget = spec.interval / 2
        """Seconds one collection (or one turn of a reconciliation) reads ranges at most."""
        self.by_labels = spec.sql.by_labels is not None
        """Whether steady counts read ``by_labels`` rows (until they come back unreadable)."""
        self._orgs_at = by_labels_layout(spec.labels).at("orgs")
        self.rows_per_key = 1.0
        """Of the latest steady count: how densely keys are used (1 for a plain sequence,
        far less for keys with gaps, such as time-based ids)."""
        self.first_count: Scan | None = None
        self._firsts: dict[Pair, float] = {}
        self.reconciliation: Reconciliation | None = None
        self.last_scan: Scan | None = None
        """The latest count in ranges, under way or done (for the progress metrics)."""
        self.stopping = False
        self.watch: Callable[[Any], None] = lambda _: None
        """Told each further connection's driver connection (Collection: to cancel it)."""
        self.unwatch: Callable[[Any], None] = lambda _: None
        """Told when that connection has gone back to the pool."""

    def _rows(self, conn: Connection, sql: str, keys: KeyRange) -> Iterable[Sequence[Any]]:
        return self.shard.mine(self.reader.stream(conn, sql, keys.params()), self.null_orgs)

    def collect(self, conn: Connection, now: float) -> MetricData:
        c, sql, dialect = self.counter, self.spec.sql, self.db.dialect
        if not c.ready:
            self._count_first(conn)
            return MetricData(self.key, (), now)
        probe = None
        if c.may_settle(now):  # else no batch can settle by time: no need to ask
            with self.reader.read_only(conn, snapshot=True):
                probe = dialect.probe(conn)
        point = c.settle_point(now, probe, SETTLE_ROWS)
        with self.reader.read_only(conn, snapshot=True):
            fence: Fence = NO_FENCE
            summary = None
            head = dialect.fenced(sql.summary)
            if head is not None:
                # the settling part is the batches that settle now; none: an empty range
                (row,) = self.reader.fetch(conn, head, KeyRange(c.watermark, point).params())
                fence, row = dialect.split_fence(row)
                if sql.summary is not None:
                    summary = Summary.of(row)
            if point > c.watermark:
                if summary is None or not c.settling_unchanged(summary, point):
                    keys = KeyRange(c.watermark, point)
                    late = c.recount_settling(point, self._rows(conn, sql.full, keys))
                    if late:
                        log.debug("late commits counted", extra={"messages": late})
                c.settle(point)
            self._count_new(conn, summary, now, fence)
        return MetricData(self.key, (), now)  # the totals are read from the counter

    def _bounds(self, conn: Connection) -> tuple[int | None, int | None]:
        return read_bounds(self.reader, conn, self.spec.sql.bounds)

    def _count_first(self, conn: Connection) -> None:
        """The whole table, per series, in ranges: as many as fit in this collection's
        budget; the count goes on in the next collection where it stopped."""
        scan = self.first_count
        if scan is None:
            low, high = self._bounds(conn)
            if low is None or high is None:  # no messages yet: counted
                self.counter.finish_first_count({})
                return
            scan = self.first_count = Scan("first count", low - 1, high, self.monotonic())
            self._firsts, self.last_scan = {}, scan
        self._run_scan(conn, scan, partial(self._open, fenced=True), self._fold_first)
        if scan.finished:
            self.counter.finish_first_count(self._firsts)
            self.first_count, self._firsts = None, {}
            log.info(
                "first count of messages done",
                extra={"rows": scan.rows, "seconds": round(self.monotonic() - scan.started, 1)},
            )

    def _open(self, conn: Connection, keys: KeyRange, streams: int, fenced: bool) -> Opened:
        """A range's statement run, in a transaction of its own: a first count's with its
        fence, read in the snapshot the range is read in; a reconciliation's with none
        (it settles nothing)."""
        dialect = self.db.dialect
        with ExitStack() as transaction:
            transaction.enter_context(self.reader.read_only(conn, snapshot=fenced, bulk=streams))
            fence: Fence = NO_FENCE
            head = dialect.fenced(None) if fenced else None
            if head is not None:
                (row,) = self.reader.fetch(conn, head)
                fence, _ = dialect.split_fence(row)
            rows, took = transaction.enter_context(
                self.reader.timed(conn, self.spec.sql.full, keys.params())
            )
            return Opened(keys, rows, took, fence, transaction.pop_all())

    def _fold_first(self, opened: Opened) -> int:
        with opened.transaction:
            rows = self.shard.mine(opened.rows, self.null_orgs)
            return self.counter.add_range(
                rows, opened.keys.upto, self.monotonic(), opened.fence, self._firsts
            )

    def _run_scan(
        self,
        conn: Connection,
        scan: Scan,
        open_range: Callable[[Connection, KeyRange, int], Opened],
        fold: Callable[[Opened], int],
    ) -> None:
        """Ranges until the scan is done or the budget spent (``ranges.read_ranges``), two
        at a time where a second connection can be had."""
        with self._connections(conn) as conns:
            read_ranges(
                scan,
                conns,
                open_range,
                fold,
                self.budget,
                self.reader.timeout,
                lambda: self.stopping,
                self.monotonic,
            )
        if self.stopping and not scan.finished:
            raise QueryError(self.key, "cancelled: stopping")

    @contextmanager
    def _connections(self, conn: Connection) -> Iterator[list[Connection]]:
        """``conn``, and a second connection from the pool where the dialect reads ranges
        at once and the pool has one to spare (else ranges are read one at a time)."""
        conns, watched = [conn], []

        def watch(driver_conn: Any) -> None:
            watched.append(driver_conn)
            self.watch(driver_conn)

        try:
            with ExitStack() as stack:
                pool_size = getattr(self.db.engine.pool, "size", lambda: 1)()
                if self.db.dialect.concurrent_ranges and pool_size > 1:
                    try:
                        conns.append(stack.enter_context(connection(self.db, watch)))
                    except SQLAlchemyError as exc:
                        log.debug(
                            "reading ranges one at a time: no second connection",
                            extra={"err": self.reader.fail(exc).message},
                        )
                yield conns
        finally:  # back in the pool: a stop must not cancel what it runs next
            for driver_conn in watched:
                self.unwatch(driver_conn)

    def _count_new(
        self, conn: Connection, summary: Summary | None, now: float, fence: Fence
    ) -> None:
        """The new rows, up to the summary's newest key (``_steady_rows``)."""
        c = self.counter
        before = c.counted_to
        upper = None if summary is None else summary.newest_key
        keys = KeyRange(before, CEILING if upper is None else upper)
        rows: Iterable[Sequence[Any]] = []
        shape: Shape = "full"
        if summary is not None and (upper is None or keys.empty):
            shape = "per_series"  # nothing above the highest key in the summary's view
        elif summary is None:  # no summary (a shard not filtered in SQL): per series
            rows = self._rows(conn, self.spec.sql.full, keys)
        else:
            rows, shape = self._steady_rows(conn, keys)
        pairs = c.add_new(rows, shape, upper, now, fence)
        if shape != "full" and before != FLOOR and c.counted_to > before:
            self.rows_per_key = c.batches[-1].rows / (c.counted_to - before)
        if pairs:  # new (org, direction) pairs: when their first message was sent
            since = self._rows(conn, self.spec.sql.since, KeyRange(before, c.counted_to))
            c.add_counting_since(since, pairs, self.clock())

    def _steady_rows(self, conn: Connection, keys: KeyRange) -> tuple[list[Sequence[Any]], Shape]:
        """The new rows of a steady count, and their layout: grouped by label values (a
        few dozen rows; the SQL filtered the shard) where ``steady_shape`` says so and they
        come back whole, else one row per series."""
        sql = self.spec.sql
        if self.steady_shape(keys) == "by_labels":
            assert sql.by_labels is not None
            fetched = self.reader.fetch(conn, sql.by_labels, keys.params())
            lists = self.db.dialect.org_lists(fetched, self._orgs_at)
            if lists is None:  # cut short this time (a long catch-up): per series, this once
                log.info("org arrays came back cut short; counting these rows per series")
                rows = self.reader.fetch(conn, sql.per_series, keys.params())
                return list(self.shard.mine(rows, self.null_orgs)), "per_series"
            rows = lists
            if self.counter.by_labels_whole(rows):
                self.null_orgs[0] += self.counter.drop_null_orgs(rows)
                return rows, "by_labels"
            log.warning(
                "org ids of this type come back from arrays as text; "
                "counting new messages one row per series from now on"
            )
            self.by_labels = False
        rows = self.reader.fetch(conn, sql.per_series, keys.params())
        return list(self.shard.mine(rows, self.null_orgs)), "per_series"

    def steady_shape(self, keys: KeyRange) -> Shape:
        """``by_labels`` where the database has org arrays, unless the new rows are likely
        too many for one array of orgs (a catch-up after an outage, a bulk load)."""
        if not self.by_labels or keys.upto == CEILING:
            return "per_series"
        if (keys.upto - keys.after) * self.rows_per_key > BY_LABELS_MAX_ROWS:
            return "per_series"
        return "by_labels"

    def reconcile(self, conn: Connection, budget: bool = True) -> dict[SeriesKey, int] | None:
        """The safety net: a full count of the messages at or below the watermark, in
        ranges. Returns the uncounted messages it found (and added) per series once it is
        done; None while it goes on (``budget``: this turn reads for ``self.budget``
        seconds at most; without, to the end)."""
        r = self.reconciliation
        if r is None:
            keys = self.counter.reconcile_range()
            if keys is None:
                return {}
            low, _ = self._bounds(conn)
            if low is None:
                return {}
            scan = self.last_scan = Scan("reconciliation", low - 1, keys.upto, self.monotonic())
            r = self.reconciliation = Reconciliation(scan, self.counter.settled_per_series())

        def fold(opened: Opened) -> int:
            with opened.transaction:
                rows = self.shard.mine(opened.rows, self.null_orgs)
                return self.counter.reconcile_fold(rows, r.found)

        saved = self.budget
        if not budget:
            self.budget = float("inf")
        try:
            opened = partial(self._open, fenced=False)
            self._run_scan(conn, r.scan, opened, fold)  # a failed range: it goes on there next
        finally:
            self.budget = saved
        if not r.scan.finished:
            return None
        self.reconciliation = None
        return self.counter.reconciled(r.found, r.settled)
