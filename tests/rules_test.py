"""The Prometheus rules: promtool's checks and unit tests, and a real Prometheus that loads the
example configuration, scrapes the exporter and records the values SQL implies."""

from __future__ import annotations

import math
import subprocess
import time
from pathlib import Path

import pytest
import yaml
from sqlalchemy import Engine, text

from tests.support.procs import Exporter, Prometheus, wait_until

PROM_DIR = Path(__file__).parent.parent / "config" / "prometheus"
USERS_PER_ACTIVE_AGENT = """
SELECT o.id::text,
       (SELECT count(*) FROM users u WHERE u.org_id = o.id)::float
       / nullif((SELECT count(*) FROM agents a WHERE a.org_id = o.id AND NOT a.disabled), 0)
FROM organizations o
"""
INSERT_LIKE = """
INSERT INTO messages (org_id, direction, sender_type, channel)
SELECT 1, CAST(:d AS text), CAST(:s AS text),
       (SELECT channel FROM messages
        WHERE org_id = 1 AND direction = CAST(:d AS text) AND sender_type = CAST(:s AS text)
        LIMIT 1)
FROM generate_series(1, :n)
"""


def promtool(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["promtool", *args], capture_output=True, text=True, timeout=120)


def test_promtool_check_rules() -> None:
    result = promtool("check", "rules", str(PROM_DIR / "rules.yml"))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS: 22 rules found" in result.stdout


def test_promtool_unit_tests() -> None:
    result = promtool("test", "rules", str(PROM_DIR / "tests" / "rules.test.yml"))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


def test_promtool_check_example_config() -> None:
    result = promtool("check", "config", str(PROM_DIR / "prometheus.yml"))
    assert result.returncode == 0, result.stdout + result.stderr


def test_every_alert_has_severity_summary_description_and_runbook() -> None:
    groups = yaml.safe_load((PROM_DIR / "rules.yml").read_text())["groups"]
    alerts = [r for g in groups for r in g["rules"] if "alert" in r]
    assert len(alerts) == 9
    readme = (PROM_DIR.parent.parent / "README.md").read_text().lower()
    for alert in alerts:
        assert alert["labels"]["severity"] in ("warning", "critical")
        assert {"summary", "description", "runbook_url"} <= set(alert["annotations"])
        anchor = alert["annotations"]["runbook_url"].split("#")[1]
        assert f"### {alert['alert'].lower()}" in readme, f"README lacks a runbook for {anchor}"
    records = [r["record"] for g in groups for r in g["rules"] if "record" in r]
    for name in records:
        assert name.count(":") == 2, f"{name} is not level:metric:operations"


def test_real_prometheus_loads_the_example_and_records_what_sql_implies(
    seeded: Engine, tmp: Path
) -> None:
    url = seeded.url.render_as_string(hide_password=False)
    config = {
        "collection": {"interval": "1s", "settle_after": "1s"},
        "database": {"statement_timeout": "800ms"},
        "thresholds": {
            "defaults": {"inbound_spike_per_minute": 700},
            "organizations": {"1": {"inbound_spike_per_minute": 5000}},
        },
    }
    exp = Exporter(tmp, config, env={"CONVRS_EXPORTER_DATABASE_URL": url}).start()
    # the example configuration, pointed at this exporter, evaluated every second
    example = yaml.safe_load((PROM_DIR / "prometheus.yml").read_text())
    example["global"].update(scrape_interval="1s", evaluation_interval="1s", scrape_timeout="1s")
    example["rule_files"] = [str(PROM_DIR / f) for f in example["rule_files"]]
    example["scrape_configs"][0]["static_configs"] = [{"targets": [f"127.0.0.1:{exp.port}"]}]
    prom = Prometheus(tmp, [])
    (prom.dir / "prometheus.yml").write_text(yaml.safe_dump(example))
    prom.start()
    try:
        with seeded.connect() as conn:
            orgs = [str(o) for (o,) in conn.execute(text("SELECT id FROM organizations"))]
            users = dict(conn.execute(text(USERS_PER_ACTIVE_AGENT)).all())
        spike = (
            'org_threshold:convrs_alert_threshold:effective{threshold="inbound_spike_per_minute"}'
        )
        want = {(o,): 5000.0 if o == "1" else 700.0 for o in orgs}
        wait_until(lambda: prom.values(spike, "org") == want, what="effective thresholds")
        per_agent = "org:convrs_users_per_active_agent:ratio"
        wait_until(lambda: len(prom.values(per_agent, "org")) == len(orgs), what="ratio rule")
        ratio = prom.values(per_agent, "org")
        for (org,), value in ratio.items():
            expected = users[org]
            if expected is None:  # no active agent: +Inf (or NaN with no users either)
                assert math.isinf(value) or math.isnan(value)
            else:
                assert value == pytest.approx(expected)

        time.sleep(3)  # a few scrapes of the starting totals
        with seeded.begin() as conn:  # 3 outbound per inbound for org 1, nothing for others
            for direction, sender, n in (("outbound", "agent", 45), ("inbound", "user", 15)):
                conn.execute(text(INSERT_LIKE), {"d": direction, "s": sender, "n": n})
        out_in = "org:convrs_messages_outbound_per_inbound:ratio_rate1h"
        wait_until(lambda: prom.values(out_in, "org").get(("1",)), what="the ratio rule")
        time.sleep(2)
        assert prom.values(out_in, "org")[("1",)] == pytest.approx(3.0, rel=1e-6)
        rates = prom.values("org_direction:convrs_messages:rate5m", "org", "direction")
        assert rates[("1", "inbound")] > 0 and rates[("1", "outbound")] > 0
        assert rates[("2", "inbound")] == 0 and rates[("2", "outbound")] == 0
        status = prom.query('ALERTS{alertname=~"Convrs.*"}')
        assert all(a["metric"]["alertname"] != "ConvrsExporterDown" for a in status)
    finally:
        prom.stop()
        assert exp.stop() == 0, exp.log()
