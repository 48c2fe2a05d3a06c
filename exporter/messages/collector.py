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
4. one grouped count of the new rows only, up to that newest key (the first count: the
   whole table, per series); counting-since for (org, direction) pairs new in it.

Where the database reads each statement's newest data (SQLite), a row committed after
the summary is past its newest key and waits for the next collection; one committed
into a settling range changes its checksum, so it is recounted. The counts stay exact.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Sequence
from typing import Any

from sqlalchemy import Connection

from ..db import Database, fetch_tuples, read_only, stream
from ..dialects import NO_FENCE, Fence
from ..mapping import MessagesSpec, Shard
from ..snapshot import MetricData
from .counter import MessageCounter, Shape, Summary
from .sql import CEILING, FLOOR, KeyRange

log = logging.getLogger("convrs_exporter.messages")

BY_LABELS_MAX_ROWS = 1_000_000
"""New rows one steady count reads as arrays of orgs at most (a million org ids is a few
MB), estimated from the new keys and the last count's rows per key; more (a catch-up) are
counted one row per series."""


class MessagesCollector:
    key = "messages"

    def __init__(
        self,
        db: Database,
        spec: MessagesSpec,
        shard: Shard,
        counter: MessageCounter,
        clock: Callable[[], float],
    ) -> None:
        self.db = db
        self.spec = spec
        self.shard = shard
        self.counter = counter
        self.clock = clock
        """Wall clock: the counting-since of a pair whose first rows are gone."""
        self.by_labels = spec.sql.by_labels is not None
        """Whether steady counts read ``by_labels`` rows (until they come back unreadable)."""
        self.rows_per_key = 1.0
        """Of the latest steady count: how densely keys are used (1 for a plain sequence,
        far less for keys with gaps, such as time-based ids)."""

    def _rows(self, conn: Connection, sql: str, keys: KeyRange) -> Iterable[Sequence[Any]]:
        return self.shard.mine(stream(self.db, conn, self.key, sql, keys.params()))

    def collect(self, conn: Connection, now: float) -> MetricData:
        c, sql, dialect = self.counter, self.spec.sql, self.db.dialect
        probe = None
        if c.may_settle(now):  # else no batch can settle by time: no need to ask
            with read_only(self.db, conn):
                probe = dialect.probe(conn)
        point = c.settle_point(now, probe)
        with read_only(self.db, conn, snapshot=True):
            fence: Fence = NO_FENCE
            summary = None
            head = dialect.fenced(sql.summary)
            if head is not None:
                # the settling part is the batches that settle now; none: an empty range
                (row,) = fetch_tuples(
                    self.db, conn, self.key, head, KeyRange(c.watermark, point).params()
                )
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

    def _count_new(
        self, conn: Connection, summary: Summary | None, now: float, fence: Fence
    ) -> None:
        """The new rows, up to the summary's newest key: the whole table, per series, the
        first time; then grouped (``_steady_rows``)."""
        c = self.counter
        before = c.counted_to
        upper = None if summary is None else summary.newest_key
        keys = KeyRange(before, CEILING if upper is None else upper)
        rows: Iterable[Sequence[Any]] = []
        shape: Shape = "full"
        if summary is not None and (upper is None or keys.empty):
            shape = "per_series"  # nothing above the highest key in the summary's view
        elif summary is None or not c.ready:  # streamed: the whole table's series
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
            rows = fetch_tuples(self.db, conn, self.key, sql.by_labels, keys.params())
            if self.counter.by_labels_whole(rows):
                return rows, "by_labels"
            log.warning(
                "org ids of this type come back from arrays as text; "
                "counting new messages one row per series from now on"
            )
            self.by_labels = False
        rows = fetch_tuples(self.db, conn, self.key, sql.per_series, keys.params())
        return list(self.shard.mine(rows)), "per_series"

    def steady_shape(self, keys: KeyRange) -> Shape:
        """``by_labels`` where the database has org arrays, unless the new rows are likely
        too many for one array of orgs (a catch-up after an outage, a bulk load)."""
        if not self.by_labels or keys.upto == CEILING:
            return "per_series"
        if (keys.upto - keys.after) * self.rows_per_key > BY_LABELS_MAX_ROWS:
            return "per_series"
        return "by_labels"

    def reconcile(self, conn: Connection) -> dict[tuple[str, ...], int]:
        """The safety net: a full count of the messages at or below the watermark. Returns
        the uncounted messages it found (and added), per series."""
        keys = self.counter.reconcile_range()
        if keys is None:
            return {}
        with read_only(self.db, conn):
            return self.counter.reconcile(self._rows(conn, self.spec.sql.full, keys))
