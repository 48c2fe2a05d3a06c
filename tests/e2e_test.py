"""The exporter as a process over HTTP, checked by promtool and scraped by a real Prometheus."""

from __future__ import annotations

import gzip
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import Engine, text

from exporter import demo
from tests.conftest import SMALL_ORGS
from tests.support import pg
from tests.support.expo import assert_counts, parse, sample
from tests.support.procs import Exporter, Prometheus, http_get, wait_until

OM = "application/openmetrics-text; version=1.0.0"


@pytest.fixture(scope="module")
def db() -> Iterator[Engine]:
    with pg.throwaway_database() as url:
        eng = pg.engine(url)
        demo.seed(eng, orgs=SMALL_ORGS, seed=3)
        yield eng
        eng.dispose()


@pytest.fixture(scope="module")
def exporter(db: Engine, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Exporter]:
    url = db.url.render_as_string(hide_password=False)
    config = {
        "collection": {"interval": "1s", "settle_after": "1s"},
        "database": {"statement_timeout": "800ms"},
    }
    exp = Exporter(
        tmp_path_factory.mktemp("e2e"), config, env={"CONVRS_EXPORTER_DATABASE_URL": url}
    )
    exp.start()
    yield exp
    assert exp.stop() == 0, exp.log()


def test_metrics_equal_sql_in_both_formats(exporter: Exporter, db: Engine) -> None:
    want = pg.reference_counts(db)
    assert_counts(parse(exporter.metrics()), want)
    assert_counts(parse(exporter.metrics(OM), openmetrics=True), want)


def test_promtool_and_parsers_accept_both_formats(exporter: Exporter, tmp: Path) -> None:
    body = exporter.metrics()
    check = subprocess.run(
        ["promtool", "check", "metrics"], input=body.encode(), capture_output=True
    )
    assert check.returncode == 0, check.stdout.decode() + check.stderr.decode()
    assert check.stdout == b"" and check.stderr == b""
    # promtool 2.42 reads only the text format; OpenMetrics is checked by the strict
    # OpenMetrics parser here and by Prometheus itself (it negotiates OpenMetrics).
    om = exporter.metrics(OM)
    assert om.endswith("# EOF\n") and om.count("# EOF") == 1
    assert parse(om, openmetrics=True)["convrs_flows"]


def test_content_negotiation_gzip_and_head(exporter: Exporter) -> None:
    status, headers, body = http_get(exporter.url + "/metrics", {"Accept-Encoding": "gzip"})
    assert status == 200 and headers["Content-Encoding"] == "gzip"
    assert headers["Content-Type"].startswith("text/plain; version=0.0.4")
    plain = gzip.decompress(body).decode()
    assert "convrs_up 1.0" in plain and "convrs_flows{" in plain
    status, headers, body = http_get(
        exporter.url + "/metrics", {"Accept": OM + ",text/plain;q=0.5", "Accept-Encoding": "gzip"}
    )
    assert headers["Content-Type"].startswith("application/openmetrics-text; version=1.0.0")
    assert gzip.decompress(body).decode().endswith("# EOF\n")
    import urllib.request

    req = urllib.request.Request(exporter.url + "/metrics", method="HEAD")
    with urllib.request.urlopen(req) as resp:
        assert resp.status == 200 and resp.read() == b""
        assert int(resp.headers["Content-Length"]) > 1000


def test_health_ready_landing_and_not_found(exporter: Exporter) -> None:
    assert http_get(exporter.url + "/healthz")[:1] == (200,)
    assert http_get(exporter.url + "/readyz")[:1] == (200,)
    status, headers, body = http_get(exporter.url + "/")
    assert status == 200 and headers["Content-Type"].startswith("text/html")
    for link in (b'href="/metrics"', b'href="/healthz"', b'href="/readyz"'):
        assert link in body
    assert http_get(exporter.url + "/nope")[0] == 404


def test_health_metrics(exporter: Exporter) -> None:
    body = exporter.metrics()
    assert sample(body, "convrs_up") == 1
    assert sample(body, "convrs_exporter_collections_total", result="success")
    assert sample(body, "convrs_exporter_collections_total", result="error") == 0
    assert sample(body, "convrs_exporter_query_errors_total", query="messages") == 0
    assert sample(body, "convrs_exporter_collection_duration_seconds_count")
    assert sample(body, "convrs_exporter_last_success_timestamp_seconds")
    assert sample(body, "convrs_exporter_build_info", version="0.2.0") == 1
    assert sample(body, "process_resident_memory_bytes")


def test_new_rows_appear_within_an_interval(exporter: Exporter, db: Engine) -> None:
    key = ("2", "inbound", "telegram", "user")
    before = parse(exporter.metrics())["convrs_messages_total"].get(key, 0)
    with db.begin() as conn:
        conn.execute(
            text(
                "INSERT INTO messages (org_id, direction, sender_type, channel) "
                "SELECT 2, 'inbound', 'user', 'telegram' FROM generate_series(1, 5)"
            )
        )
        conn.execute(text("INSERT INTO flows (org_id, name) VALUES (4, 'first flow')"))
    wait_until(
        lambda: parse(exporter.metrics())["convrs_messages_total"].get(key) == before + 5,
        timeout=3,
        what="5 new messages on /metrics",
    )
    assert (
        parse(exporter.metrics())["convrs_flows"][("4",)]
        == pg.reference_counts(db)["convrs_flows"][("4",)]
    )


def test_prometheus_scrapes_the_same_numbers(exporter: Exporter, db: Engine, tmp: Path) -> None:
    prom = Prometheus(tmp, [f"127.0.0.1:{exporter.port}"]).start()
    try:
        wait_until(lambda: prom.values("up", "job") == {("convrs",): 1.0}, what="a scrape")
        want = pg.reference_counts(db)
        wait_until(
            lambda: (
                prom.values("convrs_messages_total", "org", "direction", "channel", "sender")
                == want["convrs_messages_total"]
            ),
            what="Prometheus to have the SQL message counts",
        )
        assert prom.values("convrs_bots", "org", "channel") == want["convrs_bots"]
        assert prom.values("convrs_agents", "org", "status") == want["convrs_agents"]
        assert prom.values("convrs_flows", "org") == want["convrs_flows"]
        assert prom.values("convrs_users", "org") == want["convrs_users"]
        assert prom.values("convrs_org_info", "org", "name") == want["convrs_org_info"]
        since = prom.values("convrs_messages_counting_since_timestamp_seconds", "org", "direction")
        assert since == pytest.approx(want["convrs_messages_counting_since_timestamp_seconds"])
        # the six cards of one organization, as the dashboard will ask for them
        inbound = prom.values('sum by (org) (convrs_messages_total{direction="inbound"})', "org")
        with db.connect() as conn:
            rows = conn.execute(
                text(
                    "SELECT org_id::text, count(*) FROM messages "
                    "WHERE direction = 'inbound' GROUP BY 1"
                )
            )
            assert inbound == {(o,): float(n) for o, n in rows}
        # the scrape itself used OpenMetrics and Prometheus found nothing wrong
        assert prom.values("scrape_samples_scraped", "job")[("convrs",)] > 50
    finally:
        prom.stop()


def test_refused_encodings_are_not_sent(exporter: Exporter) -> None:
    status, headers, body = http_get(
        exporter.url + "/metrics",
        {"Accept-Encoding": "gzip;q=0, identity", "Accept": "application/openmetrics-text;q=0"},
    )
    assert status == 200 and "Content-Encoding" not in headers
    assert headers["Content-Type"].startswith("text/plain") and b"convrs_flows{" in body
