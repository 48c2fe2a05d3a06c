"""The scheduler owns time: every metric runs once at start, then every its interval.

One worker thread for collections, so runs never overlap; a run that comes due
while another is still going waits, and several missed runs are coalesced into one.
Metrics with the same interval share a job, so they are read in one connection.
"""

from __future__ import annotations

import datetime as dt
import logging
from collections import defaultdict
from collections.abc import Callable

from apscheduler.executors.pool import ThreadPoolExecutor
from apscheduler.schedulers.background import BackgroundScheduler
from apscheduler.triggers.interval import IntervalTrigger

from .collection import Collection

log = logging.getLogger("convrs_exporter.scheduler")


class Schedule:
    def __init__(self, collection: Collection) -> None:
        self.collection = collection
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
                self.collection.run_and_render,
                IntervalTrigger(seconds=interval),
                args=[keys],
                id="collect:" + ",".join(keys),
                next_run_time=now,
            )
        reconcile = self.collection.settings.reconcile_interval
        if reconcile is not None:
            self.scheduler.add_job(
                self.collection.reconcile_and_render,
                IntervalTrigger(seconds=reconcile),
                id="reconcile",
            )
        self.scheduler.start()

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
