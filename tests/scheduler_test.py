"""The scheduler owns time: per-metric intervals, a run at start, never two runs at once."""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Iterable

from sqlalchemy import Engine

from exporter.scheduler import Schedule
from tests.support.expo import assembled


def test_per_metric_intervals_run_once_at_start_and_never_overlap(seeded: Engine) -> None:
    url = seeded.url.render_as_string(hide_password=False)
    raw = {
        "collection": {"interval": "2s"},
        "database": {"statement_timeout": "400ms"},
        "mapping": {
            "users": {"table": "users", "org": "users.org_id", "interval": "500ms"},
        },
    }
    running = assembled(url, raw)
    collection = running.collection
    runs: Counter[str] = Counter()
    active, overlaps = [0], [0]
    lock = threading.Lock()
    original = collection.run

    def run(keys: Iterable[str] | None = None) -> bool:
        with lock:
            active[0] += 1
            overlaps[0] += active[0] > 1
        try:
            keys = list(keys or [])
            runs.update(keys)
            time.sleep(0.05)  # long enough that overlapping runs would be seen
            return original(keys)
        finally:
            with lock:
                active[0] -= 1

    collection.run = run  # type: ignore[method-assign]
    schedule = Schedule(running.job)
    assert schedule.jobs() == {
        0.5: ["users"],
        2.0: ["organizations", "bots", "agents", "flows", "messages"],
    }
    schedule.start()
    time.sleep(3.2)
    schedule.stop()
    assert overlaps[0] == 0
    assert runs["messages"] == 2  # at start and at 2s
    assert 6 <= runs["users"] <= 8  # at start and every 0.5s
    assert running.exposition.ready.is_set()  # the job renders and serves each collection
    collection.db.close()


def test_reconciliation_is_scheduled_on_the_same_worker(seeded: Engine) -> None:
    url = seeded.url.render_as_string(hide_password=False)
    running = assembled(url, {"collection": {"reconcile_interval": "1h"}})
    collection = running.collection
    schedule = Schedule(running.job)
    schedule.start()
    try:
        jobs = {job.id: job for job in schedule.scheduler.get_jobs()}
        assert jobs["reconcile"].executor == "default"
        assert jobs["reconcile"].trigger.interval.total_seconds() == 3600
    finally:
        schedule.stop(wait=True)  # a collection under way ends before its database closes
        collection.db.close()
