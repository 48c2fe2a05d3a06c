"""Reload (SIGHUP and POST /-/reload) and graceful stop, on the real process."""

from __future__ import annotations

import signal
import time
import urllib.request
from pathlib import Path
from typing import Any

import pytest
import yaml
from sqlalchemy import Engine, text

from tests.support import pg
from tests.support.expo import parse, sample
from tests.support.procs import Exporter, wait_until

BASE: dict[str, Any] = {
    "collection": {"interval": "1s", "settle_after": "1s"},
    "database": {"statement_timeout": "800ms"},
    "thresholds": {"defaults": {"inbound_spike_per_minute": 700}},
}


def _start(seeded: Engine, tmp: Path, config: dict[str, Any], *args: str) -> Exporter:
    url = seeded.url.render_as_string(hide_password=False)
    return Exporter(tmp, config, env={"CONVRS_EXPORTER_DATABASE_URL": url}, args=list(args)).start()


def _rewrite(exp: Exporter, config: dict[str, Any] | str) -> None:
    exp.config_path.write_text(config if isinstance(config, str) else yaml.safe_dump(config))


def _threshold(exp: Exporter) -> float | None:
    return sample(
        exp.metrics(), "convrs_alert_threshold_default", threshold="inbound_spike_per_minute"
    )


def test_sighup_applies_a_good_change_without_resetting_counters(seeded: Engine, tmp: Path) -> None:
    exp = _start(seeded, tmp, BASE)
    try:
        totals = parse(exp.metrics())["convrs_messages_total"]
        assert totals == pg.reference_counts(seeded)["convrs_messages_total"]
        with seeded.begin() as conn:  # would lower the totals if they were recounted
            conn.execute(
                text("DELETE FROM messages WHERE id <= (SELECT max(id) / 2 FROM messages)")
            )
        changed = {
            **BASE,
            "thresholds": {"defaults": {"inbound_spike_per_minute": 900}},
            "mapping": {
                "flows": {"table": "flows", "org": "flows.org_id", "filter": "flows.id % 2 = 0"}
            },
        }
        _rewrite(exp, changed)
        assert exp.proc is not None
        exp.proc.send_signal(signal.SIGHUP)
        wait_until(lambda: _threshold(exp) == 900, what="the new threshold")
        with seeded.connect() as conn:
            even = {
                (str(o),): float(n)
                for o, n in conn.execute(
                    text(
                        "SELECT o.id, count(f.id) FROM organizations o LEFT JOIN flows f "
                        "ON f.org_id = o.id AND f.id % 2 = 0 GROUP BY o.id"
                    )
                )
            }
        wait_until(lambda: parse(exp.metrics())["convrs_flows"] == even, what="the new mapping")
        assert parse(exp.metrics())["convrs_messages_total"] == totals  # not reset
        assert sample(exp.metrics(), "convrs_up") == 1
    finally:
        assert exp.stop() == 0, exp.log()
    assert 'msg="configuration reloaded" message_counts=kept' in exp.log()


def test_a_bad_change_is_refused_and_the_old_one_keeps_serving(seeded: Engine, tmp: Path) -> None:
    exp = _start(seeded, tmp, BASE, "--web.enable-lifecycle")
    try:
        flows = parse(exp.metrics())["convrs_flows"]
        for bad, words in (
            ("collection:\n  interval: [\n", "line"),
            ("collection:\n  intervall: 1s\n", "collection.intervall: unknown setting"),
            (
                yaml.safe_dump({**BASE, "mapping": {"flows": {"table": "nope", "org": "x"}}}),
                'relation "nope" does not exist',
            ),
        ):
            _rewrite(exp, bad)
            status, _, body = _post(exp, "/-/reload")
            assert status == 500 and words in body.decode(), body
            assert _threshold(exp) == 700 and sample(exp.metrics(), "convrs_up") == 1
            assert parse(exp.metrics())["convrs_flows"] == flows
        assert exp.proc is not None
        exp.proc.send_signal(signal.SIGHUP)  # the file is still bad: refused the same way
        time.sleep(1.5)
        assert _threshold(exp) == 700
        _rewrite(exp, {**BASE, "thresholds": {"defaults": {"inbound_spike_per_minute": 1}}})
        assert _post(exp, "/-/reload")[0] == 200
        assert _threshold(exp) == 1
    finally:
        assert exp.stop() == 0, exp.log()
    refusals = [ln for ln in exp.log().splitlines() if "reload refused" in ln]
    assert len(refusals) == 4, exp.log()


def test_reload_endpoint_needs_the_lifecycle_flag(seeded: Engine, tmp: Path) -> None:
    exp = _start(seeded, tmp, BASE)
    try:
        assert _post(exp, "/-/reload")[0] == 405
        assert _post(exp, "/metrics")[0] == 404
    finally:
        exp.stop()


def _post(exp: Exporter, path: str) -> tuple[int, dict[str, str], bytes]:
    req = urllib.request.Request(exp.url + path, data=b"", method="POST")
    try:
        with urllib.request.urlopen(req, timeout=30) as resp:
            return resp.status, dict(resp.headers), resp.read()
    except urllib.error.HTTPError as exc:
        return exc.code, dict(exc.headers), exc.read()


SLOW = (  # a flows query that takes 20 seconds
    "SELECT org_id AS org, count(*) AS value FROM flows, (SELECT pg_sleep(20)) s GROUP BY org_id"
)


def test_sigterm_during_a_collection_exits_0_within_5_seconds(seeded: Engine, tmp: Path) -> None:
    config = {
        "collection": {"interval": "30s"},
        "database": {"statement_timeout": "25s"},
        "mapping": {"flows": {"query": SLOW}},
    }
    url = seeded.url.render_as_string(hide_password=False)
    exp = Exporter(tmp, config, env={"CONVRS_EXPORTER_DATABASE_URL": url}).start(wait_ready=False)
    assert exp.proc is not None
    # wait until the slow query runs in the database
    wait_until(lambda: _sleeping(seeded) == 1, what="the slow query to be running")
    started = time.monotonic()
    exp.proc.send_signal(signal.SIGTERM)
    code = exp.proc.wait(10)
    elapsed = time.monotonic() - started
    assert code == 0, exp.log()
    assert elapsed < 5, f"took {elapsed:.1f}s"
    wait_until(lambda: _sleeping(seeded) == 0, timeout=5, what="the query to be cancelled")
    print(f"\nSIGTERM during a 20 s query: exit 0 after {elapsed:.2f} s")


SLEEPING = """
SELECT count(*) FROM pg_stat_activity
WHERE application_name = 'convrs-exporter' AND query LIKE '%pg_sleep(20)%' AND state = 'active'
  AND datname = current_database()
"""


def _sleeping(engine: Engine) -> int:
    with engine.connect() as conn:
        return int(conn.execute(text(SLEEPING)).scalar_one())


def test_a_burst_of_signals_never_holds_up_the_stop(tmp: Path) -> None:
    """Signals arrive in bursts (a make or a shell passing SIGTERM on to the exporter it
    runs, as the exporter's own arrives): a handler that took a lock once waited for
    itself forever when a second signal came while it held it. Before the fix this
    deadlocked in CI. Hundreds of SIGHUPs, then hundreds of SIGTERMs: it exits 0."""
    exp = Exporter(tmp, {}).start()  # the demo database
    assert exp.proc is not None
    for _ in range(300):
        exp.proc.send_signal(signal.SIGHUP)
    for _ in range(300):
        exp.proc.send_signal(signal.SIGTERM)
    began = time.monotonic()
    assert exp.proc.wait(15) == 0, exp.log()
    assert time.monotonic() - began < 10


def test_a_reload_checks_its_mapping_while_the_pool_is_busy(seeded: Engine) -> None:
    """A first count reads two ranges at once, on both of the pool's connections, for up to
    half an interval: a reload's check meanwhile takes a connection of its own, so a bad
    mapping is still refused (it was let through as "database not reachable")."""
    from exporter.config import Config, reference_mapping
    from exporter.errors import ConfigError
    from exporter.runtime import CHECKED, prepare

    url = seeded.url.render_as_string(hide_password=False)

    def config(flows: dict[str, Any]) -> Config:
        return Config.model_validate(
            {
                "database": {"url": url, "connect_timeout": "1s"},
                "mapping": {**reference_mapping(), "flows": flows},
            }
        )

    good = config(reference_mapping()["flows"])
    running = prepare(good, None)
    held = [running.db.engine.connect() for _ in range(2)]  # the pool's two, busy
    try:
        again = prepare(good, None, reuse=running)
        assert again.db is running.db and again.checked == CHECKED
        bad = config({"table": "flows", "org": "flows.no_such_column"})
        with pytest.raises(ConfigError, match="no_such_column"):
            prepare(bad, None, reuse=running)
    finally:
        for conn in held:
            conn.close()
        running.db.close()
