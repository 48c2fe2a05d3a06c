"""The scheduler owns time: every metric runs once at start, then every its interval.

One worker thread for collections, so runs never overlap: a run of a job that comes
due while that job still runs is skipped, with APScheduler's warning ("maximum number
of running instances reached"), not queued; a job of another interval waits for the
worker.
Metrics with the same interval share a job, so they are read in one connection.
Each job collects, renders what scrapes will be served, and applies the memory policy:
the side effects of a collection are here, at the edge, not in the code it runs.
"""

from __future__ import annotations

import datetime as dt
import logging
import time
from collections import defaultdict
from collections.abc import Callable, Iterable

from apscheduler.executors.pool import ThreadPoolExecutor
from apscheduler.schedulers.background import BackgroundScheduler
from apscheduler.triggers.interval import IntervalTrigger

from .collection import Collection
from .exposition import Exposition
from .health import Health
from .memory import MemoryPolicy
from .messages.state import StateFile

log = logging.getLogger("convrs_exporter.scheduler")


class Job:
    """What the scheduler runs: a collection (or a reconciliation), then the render step
    that serves its snapshot, with the memory policy around both."""

    def __init__(
        self,
        collection: Collection,
        exposition: Exposition,
        health: Health,
        memory: MemoryPolicy | None = None,
        state: StateFile | None = None,
    ) -> None:
        self.collection = collection
        self.exposition = exposition
        self.health = health
        self.memory = memory or MemoryPolicy()
        self.state = state

    def collect(self, keys: Iterable[str] | None = None) -> bool:
        """A collection and the render that serves it: the scheduler's job; then the state
        file, when it is due."""
        ok = self.run(keys)
        self.render()
        if self.state is not None and self.state.due():
            self.save_state()
        return ok

    def save_state(self) -> None:
        if self.state is not None:
            with self.memory.working():
                self.state.save(self.collection.counter)

    def run(self, keys: Iterable[str] | None = None) -> bool:
        """The collection step alone, with the memory policy around it."""
        with self.memory.working():
            ok = self.collection.run(keys)
        self.memory.after_collection(built=self.collection.counter.ready)
        return ok

    def reconcile(self, to_the_end: bool = True) -> int | None:
        """A reconciliation (or, not ``to_the_end``, one turn of it: None while it goes
        on), and a render if it found anything."""
        with self.memory.working():
            found = self.collection.reconcile(to_the_end)
        if found:
            self.render()
        else:
            self.memory.after_render()
        return found

    def render(self) -> None:
        started = time.perf_counter()
        with self.memory.working():
            self.exposition.serve(self.collection.store.current)
        self.health.render_duration.set(time.perf_counter() - started)
        self.memory.after_render()


class Schedule:
    def __init__(self, job: Job) -> None:
        self.job = job
        self.collection = job.collection
        self.scheduler = BackgroundScheduler(
            executors={"default": ThreadPoolExecutor(1), "side": ThreadPoolExecutor(1)},
            job_defaults={"coalesce": True, "max_instances": 1, "misfire_grace_time": None},
            timezone=dt.UTC,
        )
        logging.getLogger("apscheduler").setLevel(logging.WARNING)

    def jobs(self) -> dict[float, list[str]]:
        """Metric keys grouped by their interval."""
        groups: dict[float, list[str]] = defaultdict(list)
        for spec in self.collection.specs.all():
            groups[spec.interval].append(spec.key)
        return dict(sorted(groups.items()))

    def start(self) -> None:
        now = dt.datetime.now(dt.UTC)
        for interval, keys in self.jobs().items():
            self.scheduler.add_job(
                self.job.collect,
                IntervalTrigger(seconds=interval),
                args=[keys],
                id="collect:" + ",".join(keys),
                next_run_time=now,
            )
        reconcile = self.collection.settings.reconcile_interval
        if reconcile is not None:
            self.scheduler.add_job(
                self._reconcile, IntervalTrigger(seconds=reconcile), id="reconcile"
            )
        self.scheduler.start()

    def _reconcile(self) -> None:
        """One turn of the reconciliation; while it goes on, the next turn is queued behind
        the collections that came due meanwhile (one worker: they interleave)."""
        if self.job.reconcile(to_the_end=False) is None and self.scheduler.running:
            self.scheduler.add_job(self._reconcile, id="reconcile-more", replace_existing=True)

    def every(self, seconds: float, func: Callable[[], object], name: str) -> None:
        """A side job (the demo's trickle of messages) on its own worker thread."""
        self.scheduler.add_job(
            func,
            IntervalTrigger(seconds=seconds),
            id=name,
            executor="side",
            next_run_time=dt.datetime.now(dt.UTC),
        )

    def stop(self, wait: bool = False) -> None:
        """Stop scheduling; with ``wait``, also wait for a running collection to end."""
        if self.scheduler.running:
            self.scheduler.shutdown(wait=wait)
