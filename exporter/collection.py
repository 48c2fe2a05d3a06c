"""Collection: runs the collectors (organizations, resource counts, messages), reports each
one's success, publishes a snapshot.

One connection per run, one read-only transaction per metric, so that one failing
query neither aborts the others nor hides their values (node_exporter's per-collector
success). A metric that fails keeps its last good values for ``stale_after``; then
they are withheld so that Prometheus marks them stale.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from types import MappingProxyType
from typing import Any, Protocol

from sqlalchemy import Connection
from sqlalchemy.exc import SQLAlchemyError

from . import contract
from .config import CollectionConfig
from .db import Database, classify, connection, read_only
from .errors import QueryError
from .health import Health
from .mapping import Specs
from .messages.collector import MessagesCollector
from .messages.counter import MessageCounter
from .resources import GaugeCollector, OrganizationsCollector
from .snapshot import MetricData, Snapshot, Store

log = logging.getLogger("convrs_exporter.collection")


class Collector(Protocol):
    key: str
    null_orgs: list[int]
    """Rows skipped for a NULL org since the collection last asked."""

    def collect(self, conn: Connection, now: float) -> MetricData: ...


FAILURES = (QueryError, SQLAlchemyError, ValueError, TypeError)
"""What a query may raise and still only fail itself (``Collection._failure``)."""


def unreadable(key: str, exc: ValueError | TypeError) -> QueryError:
    """A value a query returned that is not what its column must hold (a number, a
    timestamp): that query fails, the others go on."""
    detail = str(exc).splitlines()[0][:100] if str(exc) else type(exc).__name__
    return QueryError(key, f"unreadable value: {detail}")


class Collection:
    def __init__(
        self,
        db: Database,
        specs: Specs,
        settings: CollectionConfig,
        store: Store,
        health: Health,
        counter: MessageCounter | None = None,
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
        shard = specs.shard
        self.counter = counter or MessageCounter(
            specs.messages.labels, settings.settle_after, owns=shard.owns, timezone=db.timezone
        )
        self.organizations = OrganizationsCollector(db, specs.organizations, shard)
        self.gauges = tuple(GaugeCollector(db, spec, shard) for spec in specs.gauges)
        self.messages = MessagesCollector(
            db,
            specs.messages,
            shard,
            self.counter,
            lambda: self.clock(),
            lambda: self.monotonic(),
        )
        self.messages.watch, self.messages.unwatch = self._watch, self._unwatch
        every: tuple[Collector, ...] = (self.organizations, *self.gauges, self.messages)
        self.collectors = {c.key: c for c in every}
        self._stopping = False
        self._active: list[Any] = []
        """The driver connections of the running collection, for cancel()."""
        self._last: dict[str, MetricData] = {}
        self._ok: dict[str, bool] = {}
        self._failing: dict[str, str] = {}
        self._null_orgs_logged: set[str] = set()
        self._labels_judged: dict[str, set[tuple[str, ...]]] = {}
        """Per query, the sets of label values already held against the contract."""
        self._keys_checked = 0
        """Message series (the counter's keys) whose label values have been judged."""
        self._abandoned = False
        self._lock = threading.Lock()

    # --- running -----------------------------------------------------------

    def run(self, keys: Iterable[str] | None = None) -> bool:
        """Collect the given metrics (all by default); publish; True if every query succeeded."""
        wanted = list(self.collectors) if keys is None else [k for k in keys]
        with self._lock:  # the scheduler never overlaps runs; this guards direct callers
            started = time.perf_counter()
            errors = self._run(wanted)
            self._report(wanted, errors, time.perf_counter() - started)
            self.store.publish(self.snapshot())
            return not errors

    def _run(self, keys: Sequence[str]) -> dict[str, QueryError]:
        errors: dict[str, QueryError] = {}
        done: set[str] = set()
        watchdog = threading.Timer(self._deadline(keys), self._abandon)
        watchdog.daemon = True
        watchdog.start()
        try:
            with connection(self.db, self._watch) as conn:
                self._replication(conn)
                for key in keys:
                    done.add(key)
                    if self._stopping:
                        errors[key] = QueryError(key, "cancelled: stopping")
                        continue
                    began = time.perf_counter()
                    try:
                        self._last[key] = self.collectors[key].collect(conn, self.monotonic())
                        self._check_labels(key)
                    except FAILURES as exc:
                        errors[key] = self._failure(key, exc)
                    if self._stopping and key in errors:
                        errors[key] = QueryError(key, "cancelled: the exporter is stopping")
                    self.health.query_duration.labels(key).set(time.perf_counter() - began)
                    self._skipped(key)
        except SQLAlchemyError as exc:  # could not connect: every query not yet run failed
            failure = classify(self.db, "database", exc)
            for key in keys:
                if key not in done:
                    errors[key] = QueryError(key, failure.message)
        finally:
            watchdog.cancel()
            self._active = []
        if self._abandoned:
            self._abandoned = False
            for key in keys:
                if key in errors:
                    errors[key] = QueryError(key, "abandoned: the database stopped answering")
        return errors

    def _deadline(self, keys: Sequence[str]) -> float:
        """How long a run may take before it is abandoned: every statement is bounded on
        the server, but a stalled network holds a read for the OS's TCP timeouts."""
        specs = [s for s in self.specs.all() if s.key in keys]
        longest = max(s.timeout for s in specs) if specs else self.db.statement_timeout
        budget = self.messages.budget if self.messages.key in keys else 0.0
        return budget + 2 * longest * max(1, len(specs)) + 10.0

    def _watch(self, driver_conn: Any) -> None:
        self._active = [*self._active, driver_conn]  # a new list: other threads read it

    def _unwatch(self, driver_conn: Any) -> None:
        self._active = [c for c in self._active if c is not driver_conn]

    def _abandon(self) -> None:
        active = self._active
        if not active:
            return
        self._abandoned = True
        log.warning("a collection is taking too long; abandoning its connections")
        for driver_conn in active:
            with contextlib.suppress(Exception):
                self.db.dialect.abort(driver_conn)

    def _failure(self, key: str, exc: BaseException) -> QueryError:
        """What a query's failure says: its own error, the driver's classified, or a value
        it could not read."""
        if isinstance(exc, QueryError):
            return exc
        if isinstance(exc, SQLAlchemyError):
            return classify(self.db, key, exc)
        assert isinstance(exc, ValueError | TypeError)
        return unreadable(key, exc)

    def _check_labels(self, key: str) -> None:
        """Label values outside the contract's closed sets (``direction="in"``, a status of
        ``enabled``): counted and logged once each. The cards and alerts would read 0 for
        them; ``--config.check`` refuses a mapping that yields them."""
        if key == self.messages.key:
            keys = self.counter.keys
            fresh, self._keys_checked = keys[self._keys_checked :], len(keys)
            self._judge(key, contract.MESSAGES, self.specs.messages.labels, (k[1:] for k in fresh))
            return
        for gauge in self.gauges:
            if gauge.key == key and gauge.spec.metric.allowed:
                values = (s.labels[1:] for s in self._last[key].series)
                self._judge(key, gauge.spec.metric, gauge.spec.labels, values)

    def _judge(
        self,
        key: str,
        metric: contract.Metric,
        labels: tuple[str, ...],
        rows: Iterable[tuple[str, ...]],
    ) -> None:
        judged = self._labels_judged.setdefault(key, set())
        for values in rows:
            if values in judged:
                continue
            judged.add(values)
            wrong = contract.unexpected(metric, dict(zip(labels, values, strict=True)))
            seen = self.health.unexpected_seen  # kept across reloads, as the counter is
            if wrong is None or (key, *wrong[:2]) in seen:
                continue
            label, value, allowed = wrong
            seen.add((key, label, value))
            self.health.unexpected_labels.labels(key, label).inc()
            log.warning(
                "a label value outside the contract: cards and alerts will not count it",
                extra={"query": key, "label": label, "value": value, "allowed": allowed},
            )

    def _skipped(self, key: str) -> None:
        """Rows of no organization (a NULL org), counted; logged the first time."""
        counted = self.collectors[key].null_orgs
        n, counted[0] = counted[0], 0
        if not n:
            return
        self.health.rows_skipped.labels(key, "null_org").inc(n)
        if key not in self._null_orgs_logged:
            self._null_orgs_logged.add(key)
            log.warning(
                "rows with a NULL org skipped (they belong to no organization)",
                extra={"query": key, "rows": n},
            )

    def _replication(self, conn: Connection) -> None:
        """Whether the database is a read replica, and how far behind: reported, never a
        reason for a collection to fail (its queries say so if the database is gone)."""
        if not self.db.dialect.replicas:
            return
        try:
            with read_only(self.db, conn):
                lag = self.db.dialect.replication_lag(conn)
        except (QueryError, SQLAlchemyError) as exc:
            log.debug("could not read the replication lag", extra={"err": str(exc)})
            return
        self.health.standby.set(0 if lag is None else 1)
        self.health.replication_lag.set(lag or 0.0)

    def cancel(self) -> None:
        """On shutdown: skip the queries not yet run and cancel the one running. Safe from
        any thread."""
        self._stopping = True
        self.messages.stopping = True
        for driver_conn in self._active:
            try:
                self.db.dialect.cancel(driver_conn)
            except Exception as exc:  # best effort: the statement timeout ends it anyway
                log.debug("could not cancel the running query", extra={"err": repr(exc)})

    def idle(self, timeout: float) -> bool:
        """Wait until no collection runs (True), or give up after ``timeout`` seconds."""
        if self._lock.acquire(timeout=timeout):
            self._lock.release()
            return True
        return False

    def reconcile(self, to_the_end: bool = True) -> int | None:
        """The safety net: a full count of the messages at or below the watermark, run at
        ``reconcile_interval``, in ranges. Returns how many uncounted messages it found and
        added; None while it goes on (``to_the_end`` False: one turn of reading, for the
        scheduler to interleave with collections)."""
        with self._lock:
            key = self.messages.key
            try:
                with connection(self.db, self._watch) as conn:
                    added = self.messages.reconcile(conn, budget=not to_the_end)
            except FAILURES as exc:
                if self._stopping:  # its statement was cancelled (PostgreSQL: as a timeout)
                    log.info("reconciliation cancelled: the exporter is stopping")
                    return 0
                err = self._failure(key, exc)
                log.warning("reconciliation failed; will try again", extra={"err": err.message})
                return 0
            finally:
                self._active = []
                self._progress()
            if added is None:
                return None
            found = sum(added.values())
            if found:
                log.warning(
                    "reconciliation found messages the incremental count missed; added them",
                    extra={"messages": found, "series": len(added)},
                )
                self.health.reconciled.inc(found)
                self.store.publish(self.snapshot())
            return found

    def _progress(self) -> None:
        """The count in ranges under way (or the latest), as metrics."""
        scan = self.messages.last_scan
        if scan is None:
            return
        eta = scan.eta()
        self.health.scan_rows.labels(scan.phase).set(scan.rows)
        self.health.scan_estimated_rows.labels(scan.phase).set(scan.estimated_rows)
        self.health.scan_eta.labels(scan.phase).set(eta if eta is not None else -1)

    def progress(self) -> str | None:
        """What /readyz says while the first count goes on."""
        scan = self.messages.first_count
        return scan.describe() if scan is not None else None

    def _report(self, keys: Sequence[str], errors: dict[str, QueryError], elapsed: float) -> None:
        h = self.health
        for key in keys:
            ok = key not in errors
            self._ok[key] = ok
            h.query_success.labels(key).set(1 if ok else 0)
            if not ok:
                h.query_errors.labels(key).inc()
        self._log_transitions(keys, errors)
        self._progress()
        h.recounted.set(self.counter.unsettled_rows)
        h.duration.observe(elapsed)
        h.collections.labels("error" if errors else "success").inc()
        h.up.set(1 if self._all_ok() else 0)
        if not errors:
            h.last_success.set(self.clock())

    def _all_ok(self) -> bool:
        return all(self._ok.get(key, False) for key in self.collectors)

    def _log_transitions(self, keys: Sequence[str], errors: dict[str, QueryError]) -> None:
        """Log a failure once when it starts (or its message changes), and the recovery."""
        changed: dict[str, list[str]] = {}
        recovered: list[str] = []
        for key in keys:
            err = errors.get(key)
            before = self._failing.get(key)
            if err is not None and err.message != before:
                changed.setdefault(err.message, []).append(key)
                self._failing[key] = err.message
            elif err is None and before is not None:
                del self._failing[key]
                recovered.append(key)
        for message, failed in changed.items():
            log.error("query failed", extra={"query": ",".join(failed), "err": message})
        if recovered:
            log.info("query recovered", extra={"query": ",".join(recovered)})

    # --- the snapshot ------------------------------------------------------

    def snapshot(self) -> Snapshot:
        """Fresh metric data (stale values withheld), zero-filled."""
        now = self.monotonic()
        fresh: dict[str, MetricData] = {}
        for spec in self.specs.all():
            data = self._last.get(spec.key)
            limit = self.settings.stale_after_seconds(spec.interval)
            if data is not None and now - data.collected_at <= limit:
                fresh[spec.key] = data
        orgs = fresh.get(self.organizations.key)
        org_ids = [s.labels[0] for s in orgs.series] if orgs else []
        for gauge in self.gauges:
            if gauge.key in fresh:
                fresh[gauge.key] = gauge.zero_filled(fresh[gauge.key], org_ids)
        messages = None
        if self.messages.key in fresh and self.counter.ready:
            messages = self.counter.snapshot()
        return Snapshot(
            metrics=MappingProxyType(fresh),
            taken_at=self.clock(),
            messages=messages,
            org_since=MappingProxyType(self.organizations.counting_since),
            complete=self._all_ok() and self.counter.ready,
        )
