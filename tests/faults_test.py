"""The database goes away and comes back: /metrics keeps answering; recovery needs no restart."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import yaml
from sqlalchemy import Engine, text

from tests.support import pg
from tests.support.expo import parse, sample
from tests.support.procs import Exporter, http_get, wait_until
from tests.support.tcpproxy import TcpProxy


def test_database_unreachable_then_back(seeded: Engine, tmp: Path) -> None:
    proxy = TcpProxy(("127.0.0.1", 5432))
    name = seeded.url.database
    url = f"postgresql://postgres:s3cr3t-pw@127.0.0.1:{proxy.port}/{name}"
    config = {
        "collection": {"interval": "1s", "stale_after": "4s"},
        "database": {"statement_timeout": "800ms", "connect_timeout": "1s"},
    }
    exp = Exporter(tmp, config, env={"CONVRS_EXPORTER_DATABASE_URL": url}).start()
    try:
        flows = parse(exp.metrics())["convrs_flows"]
        assert flows and sample(exp.metrics(), "convrs_up") == 1

        proxy.cut()
        wait_until(lambda: sample(exp.metrics(), "convrs_up") == 0, what="convrs_up 0")
        body = exp.metrics()
        assert (sample(body, "convrs_exporter_query_errors_total", query="messages") or 0) >= 1
        assert (sample(body, "convrs_exporter_collections_total", result="error") or 0) >= 1
        # the last good values are still served until stale_after, then withheld
        assert parse(body)["convrs_flows"] == flows
        wait_until(
            lambda: not parse(exp.metrics())["convrs_flows"],
            timeout=10,
            what="stale values withheld",
        )
        assert http_get(exp.url + "/healthz")[0] == 200

        proxy.restore()
        wait_until(
            lambda: sample(exp.metrics(), "convrs_up") == 1, timeout=15, what="convrs_up back to 1"
        )
        assert parse(exp.metrics())["convrs_flows"] == flows
    finally:
        code = exp.stop()
        proxy.close()
    log = exp.log()
    assert code == 0, log
    assert "s3cr3t-pw" not in log
    # logged once when the failure starts and once per recovery, not on every collection
    failures = [line for line in log.splitlines() if 'msg="query failed"' in line]
    assert 1 <= len(failures) <= 3, log
    assert "query recovered" in log


CTL = "CREATE TABLE ctl (sleep_s float NOT NULL); INSERT INTO ctl VALUES (0)"


def _slow(table: str) -> dict[str, str]:
    """A mapping that sleeps as long as the ctl table says, then counts as usual."""
    return {
        "query": f"SELECT {table}.org_id AS org, count(*) AS value FROM {table}, "
        "(SELECT pg_sleep(sleep_s) FROM ctl) s GROUP BY 1"
    }


def _set_sleep(engine: Engine, seconds: float) -> None:
    with engine.begin() as conn:
        conn.execute(text("UPDATE ctl SET sleep_s = :s"), {"s": seconds})


def _exporter_sessions(engine: Engine, busy: bool = False) -> int:
    """The exporter's connections to this database (``busy``: those in a transaction; a
    first count reads two ranges at once, a collection uses one)."""
    with engine.connect() as conn:
        return int(
            conn.execute(
                text(
                    "SELECT count(*) FROM pg_stat_activity "
                    "WHERE application_name = 'convrs-exporter' "
                    "AND datname = current_database()"  # other exporters may share the server
                    + (" AND state <> 'idle'" if busy else "")
                )
            ).scalar_one()
        )


def test_a_hanging_query_is_cut_by_the_statement_timeout(seeded: Engine, tmp: Path) -> None:
    with seeded.begin() as conn:
        for statement in CTL.split("; "):
            conn.execute(text(statement))
    url = seeded.url.render_as_string(hide_password=False)
    config = {
        "collection": {"interval": "1s"},
        "database": {"statement_timeout": "300ms"},
        "mapping": {"flows": _slow("flows")},
    }
    exp = Exporter(tmp, config, env={"CONVRS_EXPORTER_DATABASE_URL": url}).start()
    try:
        _set_sleep(seeded, 5)
        wait_until(
            lambda: sample(exp.metrics(), "convrs_exporter_query_success", query="flows") == 0,
            what="the timeout",
        )
        body = exp.metrics()
        errors = sample(body, "convrs_exporter_query_errors_total", query="flows") or 0
        assert errors >= 1 and sample(body, "convrs_up") == 0
        assert sample(body, "convrs_exporter_query_success", query="users") == 1
        _set_sleep(seeded, 0)
        wait_until(lambda: sample(exp.metrics(), "convrs_up") == 1, what="the next success")
        assert parse(exp.metrics())["convrs_flows"] == pg.reference_counts(seeded)["convrs_flows"]
    finally:
        assert exp.stop() == 0, exp.log()
    assert 'err="statement timeout (0.3s) exceeded"' in exp.log()


def test_dropped_mid_query_slow_to_accept_and_the_pool_limit(seeded: Engine, tmp: Path) -> None:
    with seeded.begin() as conn:
        for statement in CTL.split("; "):
            conn.execute(text(statement))
    proxy = TcpProxy(("127.0.0.1", 5432))
    url = f"postgresql://postgres@127.0.0.1:{proxy.port}/{seeded.url.database}"
    config = {
        "collection": {"interval": "1s"},
        "database": {"statement_timeout": "900ms", "connect_timeout": "1s", "pool_size": 2},
        "mapping": {"flows": _slow("flows"), "users": _slow("users")},
    }
    exp = Exporter(tmp, config, env={"CONVRS_EXPORTER_DATABASE_URL": url}).start()
    peak = [0]
    stop = threading.Event()

    def watch() -> None:  # the pool never holds more than pool_size connections
        while not stop.is_set():
            peak[0] = max(peak[0], _exporter_sessions(seeded))
            time.sleep(0.05)

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    survived = []
    try:
        want = pg.reference_counts(seeded)["convrs_flows"]
        # 1. the connection drops in the middle of a query
        _set_sleep(seeded, 0.6)
        wait_until(lambda: _exporter_sessions(seeded) >= 1, what="a query in flight")
        time.sleep(0.3)
        proxy.cut()
        wait_until(lambda: sample(exp.metrics(), "convrs_up") == 0, what="the drop noticed")
        proxy.restore()
        wait_until(
            lambda: sample(exp.metrics(), "convrs_up") == 1,
            timeout=15,
            what="recovery after the drop",
        )
        survived.append("dropped mid-query")
        # 2. the database is slow to accept: longer than connect_timeout, then fast again
        _set_sleep(seeded, 0)
        proxy.cut()
        proxy.delay = 3.0
        proxy.restore()
        wait_until(
            lambda: sample(exp.metrics(), "convrs_up") == 0, timeout=15, what="connect timeouts"
        )
        assert http_get(exp.url + "/healthz")[0] == 200
        proxy.delay = 0.0
        wait_until(
            lambda: sample(exp.metrics(), "convrs_up") == 1,
            timeout=20,
            what="recovery after slow accepts",
        )
        survived.append("slow to accept")
        assert parse(exp.metrics())["convrs_flows"] == want
    finally:
        stop.set()
        watcher.join()
        code = exp.stop()
        proxy.close()
    assert code == 0, exp.log()
    assert 1 <= peak[0] <= 2, f"{peak[0]} connections at the peak"
    print(f"\nfaults survived: {', '.join(survived)}; peak connections {peak[0]} (pool_size 2)")


def test_collections_longer_than_the_interval_do_not_pile_up(seeded: Engine, tmp: Path) -> None:
    with seeded.begin() as conn:
        for statement in CTL.split("; "):
            conn.execute(text(statement))
    _set_sleep(seeded, 0.5)  # three slow queries: a collection takes ~1.5 s, interval 1 s
    url = seeded.url.render_as_string(hide_password=False)
    config = {
        "collection": {"interval": "1s"},
        "database": {"statement_timeout": "900ms"},
        "mapping": {m: _slow(m) for m in ("flows", "users", "bots")},
    }
    exp = Exporter(tmp, config, env={"CONVRS_EXPORTER_DATABASE_URL": url})
    config["mapping"]["bots"] = {
        "query": config["mapping"]["bots"]["query"]
        .replace("count(*) AS value", "'sms' AS channel, count(*) AS value")
        .replace("GROUP BY 1", "GROUP BY 1, 2")
    }
    exp.config_path.write_text(yaml.safe_dump(config))
    exp.start()
    try:
        before = _collections(exp)
        concurrent = 0
        began = time.monotonic()
        while time.monotonic() - began < 6:
            concurrent = max(concurrent, _exporter_sessions(seeded, busy=True))
            time.sleep(0.05)
        runs = _collections(exp) - before
    finally:
        assert exp.stop() == 0, exp.log()
    assert concurrent <= 1, "two collections ran at once"
    assert 2 <= runs <= 5, f"{runs} collections in 6 s of ~1.5 s each"
    print(f"\n{runs} collections of ~1.5 s in 6 s at a 1 s interval; at most {concurrent} at once")


def _collections(exp: Exporter) -> float:
    body = exp.metrics()
    return sum(
        sample(body, "convrs_exporter_collections_total", result=r) or 0
        for r in ("success", "error")
    )
