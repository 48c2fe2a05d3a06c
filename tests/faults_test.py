"""The database goes away and comes back: /metrics keeps answering; recovery needs no restart."""

from __future__ import annotations

from pathlib import Path

from sqlalchemy import Engine

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
