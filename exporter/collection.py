"""Collection: runs the query specs, folds rows into metric data, publishes a snapshot.

One connection per run, one read-only transaction per metric, so that one failing
query neither aborts the others nor hides their values (node_exporter's per-collector
success). A metric that fails keeps its last good values for ``stale_after``; then
they are withheld so that Prometheus marks them stale.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from functools import partial
from types import MappingProxyType
from typing import Any

from sqlalchemy import Connection
from sqlalchemy.exc import SQLAlchemyError

from .config import CollectionConfig
from .counting import (
    CEILING,
    LabelValues,
    MessageCounter,
    Shape,
    Summary,
    label_value,
    labels_of,
    to_unix,
)
from .db import (
    Database,
    classify,
    fence_of,
    fetch_tuples,
    pg_fenced,
    pg_probe,
    read_only,
    stream,
)
from .errors import QueryError
from .exposition import Health, Renderer
from .mapping import GaugeSpec, MessagesSpec, OrgSpec, Spec, Specs
from .memory import FULL_COLLECTION_EVERY, freeze_heap, full_collection, gc_paused, trim_heap
from .snapshot import MetricData, Series, Snapshot, Store

log = logging.getLogger("convrs_exporter.collection")

AGENT_STATUSES = ("active", "disabled")
BY_LABELS_MAX_ROWS = 1_000_000
"""New rows one steady count reads as arrays of orgs at most (a million org ids is a few
MB), estimated from the new keys and the last count's rows per key; more (a catch-up) are
counted one row per series."""


class Collection:
    def __init__(
        self,
        db: Database,
        specs: Specs,
        settings: CollectionConfig,
        store: Store,
        health: Health,
        clock: Callable[[], float] = time.time,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self.db = db
        self.specs = specs
        self.settings = settings
        self.store = store
        self.health = health
        self.clock = clock
        """Wall clock, for timestamps that are exported."""
        self.monotonic = monotonic
        """For ages (staleness, settling), immune to clock steps."""
        self.counter = MessageCounter(specs.messages, settings.settle_after, owns=specs.shard.owns)
        self._by_labels = specs.messages.by_labels_sql is not None
        """Whether steady counts read ``by_labels`` rows (until they come back unreadable)."""
        self.renderer = Renderer()
        self._stopping = False
        self._active: Any = None
        """The driver connection of the running collection, for cancel()."""
        self._last: dict[str, MetricData] = {}
        self._ok: dict[str, bool] = {}
        self._failing: dict[str, str] = {}
        self._lock = threading.Lock()
        self._labels: dict[tuple[str, int], LabelValues] = {}
        """Label values by metric and column, kept from one collection to the next."""
        self._full_gc_at: float | None = None
        """When the long-lived state was frozen out of the cyclic collector's reach, or last
        fully collected since (monotonic); None before the first count."""

    # --- running -----------------------------------------------------------

    def run(self, keys: Iterable[str] | None = None) -> bool:
        """Collect the given metrics (all by default); publish; True if every query succeeded."""
        wanted = set(keys) if keys is not None else None
        specs = [s for s in self.specs.all() if wanted is None or s.key in wanted]
        with self._lock:  # the scheduler never overlaps runs; this guards direct callers
            with gc_paused():
                started = time.perf_counter()
                errors = self._run_specs(specs)
                elapsed = time.perf_counter() - started
                self._report(specs, errors, elapsed)
                self.store.publish(self.snapshot())
            self._tend_heap()
            return not errors

    def _tend_heap(self) -> None:
        """After a collection: freeze the heap once the first count built the state that
        lives from now on; from then on, a full cyclic collection every hour (memory.py)."""
        now = self.monotonic()
        if self._full_gc_at is None:
            if self.counter.ready:
                freeze_heap()
                self._full_gc_at = now
        elif now - self._full_gc_at >= FULL_COLLECTION_EVERY:
            full_collection()
            self._full_gc_at = now

    def run_and_render(self, keys: Iterable[str] | None = None) -> bool:
        """A collection, then the render step that serves its snapshot (the scheduler's job:
        one worker, so renders never overlap collections)."""
        ok = self.run(keys)
        self._render()
        trim_heap()  # what the collection and the render freed, back to the system
        return ok

    def _render(self) -> None:
        started = time.perf_counter()
        self.store.render()
        self.health.render_duration.set(time.perf_counter() - started)

    def _run_specs(self, specs: Sequence[Spec]) -> dict[str, QueryError]:
        errors: dict[str, QueryError] = {}
        done: set[str] = set()
        try:
            with self.db.engine.connect() as conn:
                self._active = conn.connection.driver_connection
                for spec in specs:
                    if self._stopping:
                        errors[spec.key] = QueryError(spec.key, "cancelled: stopping")
                        done.add(spec.key)
                        continue
                    began = time.perf_counter()
                    try:
                        self._last[spec.key] = self._collect(conn, spec)
                    except QueryError as exc:
                        errors[spec.key] = exc
                    except SQLAlchemyError as exc:
                        errors[spec.key] = classify(self.db, spec.key, exc)
                    done.add(spec.key)
                    self.health.query_duration.labels(spec.key).set(time.perf_counter() - began)
        except SQLAlchemyError as exc:  # could not connect: every query not yet run failed
            failure = classify(self.db, "database", exc)
            for spec in specs:
                if spec.key not in done:
                    errors[spec.key] = QueryError(spec.key, failure.message)
        finally:
            self._active = None
        return errors

    def cancel(self) -> None:
        """On shutdown: skip the queries not yet run and cancel the one running (psycopg
        sends PostgreSQL a cancel request; SQLite is interrupted). Safe from any thread."""
        self._stopping = True
        active = self._active
        if active is None:
            return
        try:
            if hasattr(active, "cancel"):
                active.cancel()
            elif hasattr(active, "interrupt"):
                active.interrupt()
        except Exception as exc:  # best effort: the statement timeout ends it anyway
            log.debug("could not cancel the running query", extra={"err": str(exc)})

    def idle(self, timeout: float) -> bool:
        """Wait until no collection runs (True), or give up after ``timeout`` seconds."""
        if self._lock.acquire(timeout=timeout):
            self._lock.release()
            return True
        return False

    def _collect(self, conn: Connection, spec: Spec) -> MetricData:
        now = self.monotonic()
        if isinstance(spec, MessagesSpec):
            return self._collect_messages(conn, spec, now)
        with read_only(self.db, conn):
            rows = self._mine(stream(self.db, conn, spec.key, spec.sql))
            if isinstance(spec, OrgSpec):
                columns = self._columns(spec.key, 2)
                series = tuple(Series(labels_of(columns, r), 1.0, to_unix(r[2])) for r in rows)
                return MetricData(spec.key, series, now)
            columns = self._columns(spec.key, 1 + len(spec.labels))
            return MetricData(spec.key, _sum_series(rows, columns), now)

    def _columns(self, key: str, width: int) -> tuple[Callable[[Any], str], ...]:
        """Per column of a metric's rows: its values as label values (LabelValues; one per
        column, not shared: another table's org ids may be of another type)."""
        cache = self._labels
        return tuple(cache.setdefault((key, i), LabelValues()).__getitem__ for i in range(width))

    def _collect_messages(self, conn: Connection, spec: MessagesSpec, now: float) -> MetricData:
        """The probe of which batches settle (PostgreSQL, when one may), then one snapshot
        (REPEATABLE READ on PostgreSQL): the summary with the fence for the new batch, a
        recount of the settling batches if they changed, the grouped count of the new
        rows (see counting.py)."""
        pg = self.db.dialect == "postgresql"
        c = self.counter

        def rows(sql: str, params: dict[str, int]) -> Iterable[Sequence[Any]]:
            return self._mine(stream(self.db, conn, spec.key, sql, params))

        probe = None
        if pg and c.due(now):  # else no batch can settle by time: no need to ask
            # before the snapshot the batches are checked in: a transaction that has ended by
            # now is in that snapshot (within one statement, pg_stat_activity would be read
            # after the snapshot, and a commit in between would be in neither)
            with read_only(self.db, conn):
                probe = pg_probe(conn)
        settle = c.settle_to(now, probe)
        with read_only(self.db, conn, repeatable=True):
            fence = summary = None
            head = spec.summary_sql
            if pg:
                head = pg_fenced(head or "SELECT 1 AS one")
            if head is not None:
                # the tail's part is the batches that settle now; none: an empty range
                params = {"after": c.watermark, "seen": settle}
                (row,) = fetch_tuples(self.db, conn, spec.key, head, params)
                if pg:
                    fence, row = fence_of(row), row[2:]
                if spec.summary_sql is not None:
                    summary = Summary.of(row)
            before = c.highest
            if settle > c.watermark:
                if summary is None or not c.tail_matches(summary, settle):
                    bounds = {"after": c.watermark, "upto": settle}
                    late = c.recount_tail(settle, rows(spec.sql, bounds))
                    if late:
                        log.debug("late commits counted", extra={"messages": late})
                c.settle(settle)
            upper = None if summary is None else summary.highest
            full = summary is None or not c.ready  # the first count reads the full shape
            bounds = {"after": before, "upto": CEILING if upper is None else upper}
            fresh: Iterable[Sequence[Any]] = []
            shape: Shape = "full" if full else "counts"
            if summary is not None and (upper is None or upper <= before):
                pass  # nothing above the highest key in the summary's view
            elif full:  # streamed: the whole table's series
                fresh = rows(spec.sql, bounds)
            else:
                fresh, shape = self._steady_rows(conn, spec, bounds)
            pairs = c.add_fresh(fresh, upper, now, fence, shape)
            if pairs:  # new (org, direction) pairs: when their first message was sent
                since = rows(spec.since_sql, {"after": before, "upto": c.highest})
                c.add_since(since, pairs, self.clock())
        self.health.recounted.set(c.recounted)
        return MetricData(spec.key, (), now)  # the totals are read from the counter

    def _steady_rows(
        self, conn: Connection, spec: MessagesSpec, bounds: dict[str, int]
    ) -> tuple[list[Sequence[Any]], Shape]:
        """The new rows of a steady count, and their shape: grouped by label values (a few
        dozen rows; the SQL filtered the shard) where ``_steady_shape`` says so and they
        come back readable, else one row per series."""
        if self._steady_shape(bounds["after"], bounds["upto"]) == "by_labels":
            assert spec.by_labels_sql is not None
            fresh = fetch_tuples(self.db, conn, spec.key, spec.by_labels_sql, bounds)
            if self.counter.fits_by_labels(fresh):
                return fresh, "by_labels"
            log.warning(
                "org ids of this type come back from arrays as text; "
                "counting new messages one row per series from now on"
            )
            self._by_labels = False
        counts = fetch_tuples(self.db, conn, spec.key, spec.counts_sql, bounds)
        return list(self._mine(counts)), "counts"

    def _steady_shape(self, before: int, upper: int | None) -> Shape:
        """``by_labels`` (PostgreSQL) unless the new rows are likely too many for one array
        of orgs (a catch-up after an outage, a bulk load): then one row per series."""
        if not self._by_labels or upper is None:
            return "counts"
        if (upper - before) * self.counter.rows_per_key > BY_LABELS_MAX_ROWS:
            return "counts"
        return "by_labels"

    def reconcile(self) -> int:
        """The safety net: a full count of the messages at or below the watermark, run at
        ``reconcile_interval``. Returns how many uncounted messages it found and added."""
        with self._lock:
            params = self.counter.reconcile_params()
            if params is None:
                return 0
            spec = self.specs.messages
            try:
                with gc_paused(), self.db.engine.connect() as conn, read_only(self.db, conn):
                    rows = stream(self.db, conn, spec.key, spec.sql, params)
                    added = self.counter.reconcile(self._mine(rows))
            except (QueryError, SQLAlchemyError) as exc:
                err = exc if isinstance(exc, QueryError) else classify(self.db, spec.key, exc)
                log.warning("reconciliation failed; will try again", extra={"err": err.message})
                return 0
            found = sum(added.values())
            if found:
                log.warning(
                    "reconciliation found messages the incremental count missed; added them",
                    extra={"messages": found, "series": len(added)},
                )
                self.health.reconciled.inc(found)
                self.store.publish(self.snapshot())
            return found

    def reconcile_and_render(self) -> int:
        found = self.reconcile()
        if found:
            self._render()
        trim_heap()
        return found

    def _mine(self, rows: Iterable[Sequence[Any]]) -> Iterable[Sequence[Any]]:
        """This shard's rows (the SQL may have filtered already; this is exact everywhere)."""
        shard = self.specs.shard
        if shard.total == 1:
            return rows
        return (r for r in rows if shard.owns(label_value(r[0])))

    def _report(self, specs: Sequence[Spec], errors: dict[str, QueryError], elapsed: float) -> None:
        h = self.health
        for spec in specs:
            ok = spec.key not in errors
            self._ok[spec.key] = ok
            h.query_success.labels(spec.key).set(1 if ok else 0)
            if not ok:
                h.query_errors.labels(spec.key).inc()
        self._log_transitions(specs, errors)
        h.duration.observe(elapsed)
        h.collections.labels("error" if errors else "success").inc()
        all_ok = self._all_ok()
        h.up.set(1 if all_ok else 0)
        if not errors:
            h.last_success.set(self.clock())

    def _all_ok(self) -> bool:
        return all(self._ok.get(s.key, False) for s in self.specs.all())

    def _log_transitions(self, specs: Sequence[Spec], errors: dict[str, QueryError]) -> None:
        """Log a failure once when it starts (or its message changes), and the recovery."""
        changed: dict[str, list[str]] = {}
        recovered: list[str] = []
        for spec in specs:
            err = errors.get(spec.key)
            before = self._failing.get(spec.key)
            if err is not None and err.message != before:
                changed.setdefault(err.message, []).append(spec.key)
                self._failing[spec.key] = err.message
            elif err is None and before is not None:
                del self._failing[spec.key]
                recovered.append(spec.key)
        for message, keys in changed.items():
            log.error("query failed", extra={"query": ",".join(keys), "err": message})
        if recovered:
            log.info("query recovered", extra={"query": ",".join(recovered)})

    # --- the snapshot ------------------------------------------------------

    def snapshot(self) -> Snapshot:
        """Fresh metric data (stale values withheld), zero-filled; rendered when asked."""
        now = self.monotonic()
        fresh: dict[str, MetricData] = {}
        for spec in self.specs.all():
            data = self._last.get(spec.key)
            limit = self.settings.stale_after_seconds(spec.interval)
            if data is not None and now - data.collected_at <= limit:
                fresh[spec.key] = data
        orgs = fresh.get("organizations")
        org_ids = [s.labels[0] for s in orgs.series] if orgs else []
        for spec in self.specs.gauges:
            if spec.key in fresh:
                fresh[spec.key] = _zero_fill(fresh[spec.key], spec, org_ids)
        messages = None
        if "messages" in fresh and self.counter.ready:
            messages = self.counter.snapshot()
        return Snapshot(
            metrics=MappingProxyType(fresh),
            taken_at=self.clock(),
            messages=messages,
            complete=self._all_ok() and self.counter.ready,
            render=partial(self.renderer.render, self.specs),
        )


def _sum_series(
    rows: Iterable[Sequence[Any]], columns: tuple[Callable[[Any], str], ...]
) -> tuple[Series, ...]:
    """Rows (org, labels..., value) as series, in the order the database returned them
    (sorting 60,000 keys took 100 ms of GIL per collection; the formats ask for no
    order); equal label sets (after conversion to text) are summed."""
    sums: dict[tuple[str, ...], float] = {}
    get = sums.get
    width = len(columns)
    for row in rows:
        key = labels_of(columns, row)
        sums[key] = get(key, 0.0) + float(row[width] or 0)
    return tuple(map(Series, sums.keys(), sums.values()))


def _zero_fill(data: MetricData, spec: GaugeSpec, org_ids: list[str]) -> MetricData:
    """Every known org gets its series even when it has no rows (0, not "no data")."""
    wanted: list[tuple[str, ...]]
    if spec.labels == ():
        wanted = [(org,) for org in org_ids]
    elif spec.labels == ("status",):
        wanted = [(org, status) for org in org_ids for status in AGENT_STATUSES]
    else:
        return data  # open-ended labels (channel) cannot be zero-filled
    have = {s.labels for s in data.series}
    extra = tuple(Series(k, 0.0) for k in wanted if k not in have)
    if not extra:
        return data
    return MetricData(data.key, data.series + extra, data.collected_at)
