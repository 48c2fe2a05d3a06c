"""The Grafana dashboard: valid, in step with its generator, and every query answered by a
real Prometheus scraping the exporter, with the cards equal to SQL."""

from __future__ import annotations

import importlib.util
import json
import re
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Engine, text

from exporter import demo
from tests.conftest import SMALL_ORGS
from tests.support import pg
from tests.support.procs import Exporter, Prometheus, wait_until

ROOT = Path(__file__).parent.parent
spec = importlib.util.spec_from_file_location(
    "build_dashboard", ROOT / "grafana/build_dashboard.py"
)
assert spec is not None and spec.loader is not None
builder = importlib.util.module_from_spec(spec)
spec.loader.exec_module(builder)
DASHBOARD: dict[str, Any] = json.loads(builder.OUT.read_text())
CARD_TITLES = ["Bots", "Agents", "Flows", "Users", "Inbound Messages", "Outbound Messages"]


def panels() -> list[dict[str, Any]]:
    return [p for p in DASHBOARD["panels"] if p["type"] != "row"]


def by_title(title: str) -> dict[str, Any]:
    (panel,) = [p for p in panels() if p["title"] == title]
    return panel


def test_committed_json_is_what_the_generator_makes() -> None:
    assert builder.main(["--check"]) == 0


def test_dashboard_is_valid() -> None:
    assert DASHBOARD["uid"] == "convrs-org-metrics"
    ids = [p["id"] for p in DASHBOARD["panels"]]
    assert len(ids) == len(set(ids))
    cells: set[tuple[int, int]] = set()
    for p in DASHBOARD["panels"]:
        g = p["gridPos"]
        assert g["x"] >= 0 and g["w"] > 0 and g["x"] + g["w"] <= 24, p["title"]
        mine = {
            (x, y) for x in range(g["x"], g["x"] + g["w"]) for y in range(g["y"], g["y"] + g["h"])
        }
        assert not mine & cells, f"{p['title']} overlaps another panel"
        cells |= mine
    for p in panels():
        for t in p["targets"]:
            assert t["datasource"] == {"type": "prometheus", "uid": "${datasource}"}
    variables = {v["name"]: v for v in DASHBOARD["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["org"]["multi"] and variables["org"]["includeAll"]
    assert "uid" not in json.dumps(DASHBOARD["templating"]).replace('"uid": "${datasource}"', "")


def test_six_cards_in_the_platform_layout() -> None:
    top = [by_title(t)["gridPos"] for t in CARD_TITLES[:4]]
    bottom = [by_title(t)["gridPos"] for t in CARD_TITLES[4:]]
    assert len({g["y"] for g in top}) == 1 and len({g["y"] for g in bottom}) == 1
    assert bottom[0]["y"] > top[0]["y"]
    assert [g["x"] for g in top] == sorted(g["x"] for g in top)  # Bots, Agents, Flows, Users
    assert bottom[0]["x"] < bottom[1]["x"]  # Inbound, then Outbound
    for title in CARD_TITLES[4:]:
        exprs = [t["expr"] for t in by_title(title)["targets"]]
        assert any("convrs_messages_counting_since_timestamp_seconds" in e for e in exprs)
    agents = [t["legendFormat"] for t in by_title("Agents")["targets"]]
    assert agents == ["total", "active", "disabled"]


# --- against a real Prometheus ------------------------------------------------


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Engine, Prometheus]]:
    with pg.throwaway_database() as url:
        eng = pg.engine(url)
        demo.seed(eng, orgs=SMALL_ORGS, seed=11)
        tmp = tmp_path_factory.mktemp("dash")
        config = {
            "collection": {"interval": "1s", "settle_after": "1s"},
            "database": {"statement_timeout": "800ms"},
        }
        exp = Exporter(tmp, config, env={"CONVRS_EXPORTER_DATABASE_URL": url}).start()
        prom = Prometheus(tmp, [f"127.0.0.1:{exp.port}"], extra_scrape=OPERATOR).start()
        try:
            wait_until(lambda: prom.query("convrs_flows"), what="a first scrape")
            yield eng, prom
        finally:
            prom.stop()
            exp.stop()
            eng.dispose()


OPERATOR = {
    "relabel_configs": [
        {"target_label": label, "replacement": value}
        for label, value in (
            ("namespace", "monitoring"),
            ("pod", "convrs-exporter-7d9f5c6b8-x2k4q"),
            ("service", "convrs-exporter"),
            ("container", "convrs-exporter"),
        )
    ]
}
"""The labels the Prometheus Operator's ServiceMonitor puts on every series."""


def substitute(expr: str, org: str, rng: str) -> str:
    """The variables as Grafana replaces them: All is the allValue, one org its id."""
    for name, value in (
        ("$__rate_interval", "5s"),
        ("$__range", rng),
        ("$job", ".*"),
        ("$org", org),
    ):
        expr = expr.replace(name, value)
    assert "$" not in expr, expr
    return expr


def sql_cards(eng: Engine, org: str | None) -> dict[str, float]:
    where = "" if org is None else f"WHERE org_id = {int(org)}"
    with eng.connect() as conn:

        def one(sql: str) -> float:
            return float(conn.execute(text(sql)).scalar_one())

        return {
            "Bots": one(f"SELECT count(*) FROM bots {where}"),
            "Agents": one(f"SELECT count(*) FROM agents {where}"),
            "Flows": one(f"SELECT count(*) FROM flows {where}"),
            "Users": one(f"SELECT count(*) FROM users {where}"),
            "Inbound Messages": one(
                f"SELECT count(*) FROM messages {where or 'WHERE true'} AND direction = 'inbound'"
            ),
            "Outbound Messages": one(
                f"SELECT count(*) FROM messages {where or 'WHERE true'} AND direction = 'outbound'"
            ),
            "active": one(f"SELECT count(*) FROM agents {where or 'WHERE true'} AND NOT disabled"),
        }


def single(prom: Prometheus, expr: str) -> float:
    result = prom.query(expr)
    assert len(result) == 1, (expr, result)
    return float(result[0]["value"][1])


def test_org_variable_shows_names_for_ids(stack: tuple[Engine, Prometheus]) -> None:
    eng, prom = stack
    var = next(v for v in DASHBOARD["templating"]["list"] if v["name"] == "org")
    query = var["query"]["query"].removeprefix("query_result(").removesuffix(")")
    lines = []  # as Grafana's query_result prints each series: labels sorted, values raw
    for r in prom.query(substitute(query, ".*", "1m")):
        labels = {k: v for k, v in sorted(r["metric"].items()) if k != "__name__"}
        body = ",".join(f'{k}="{v}"' for k, v in labels.items())
        name = r["metric"].get("__name__", "")
        lines.append(f"{name}{{{body}}} {r['value'][1]} {int(r['value'][0] * 1000)}")
    pattern, flags = var["regex"][1:].rsplit("/", 1)
    regex = re.compile(pattern.replace("(?<", "(?P<"), re.S if "s" in flags else 0)
    options = {m["value"]: m["text"] for m in (regex.search(line) for line in lines) if m}
    with eng.connect() as conn:
        want = {str(i): n for i, n in conn.execute(text("SELECT id, name FROM organizations"))}
    # including 'Le "Petit" Café' and a name with a newline, with the Operator's labels on
    assert options == want


@pytest.mark.parametrize("org", [None, "1", "3"])
def test_cards_equal_sql(stack: tuple[Engine, Prometheus], org: str | None) -> None:
    eng, prom = stack
    want = sql_cards(eng, org)
    value = ".*" if org is None else org
    for title in CARD_TITLES:
        panel = by_title(title)
        assert single(prom, substitute(panel["targets"][0]["expr"], value, "1m")) == want[title]
    agents = by_title("Agents")["targets"]
    assert single(prom, substitute(agents[1]["expr"], value, "1m")) == want["active"]
    assert single(prom, substitute(agents[2]["expr"], value, "1m")) == (
        want["Agents"] - want["active"]
    )
    with eng.connect() as conn:
        for direction in ("inbound", "outbound"):
            title = f"{direction.capitalize()} Messages"
            since = single(prom, substitute(by_title(title)["targets"][1]["expr"], value, "1m"))
            oldest = conn.execute(
                text(
                    "SELECT extract(epoch FROM min(created_at)) * 1000 FROM messages "
                    f"WHERE direction = '{direction}'" + (f" AND org_id = {org}" if org else "")
                )
            ).scalar_one()
            assert since == pytest.approx(float(oldest), abs=1e-3)


def test_every_query_returns_data_and_the_ratios_equal_sql(
    stack: tuple[Engine, Prometheus],
) -> None:
    eng, prom = stack
    time.sleep(3)  # a few scrapes of the totals before the traffic, for the range to start at
    started = time.time()
    with eng.begin() as conn:  # traffic in a known ratio: 3 outbound per inbound, org 1
        for direction, sender, n in (("outbound", "bot", 30), ("inbound", "user", 10)):
            conn.execute(
                text(
                    "INSERT INTO messages (org_id, direction, sender_type, channel) "
                    "SELECT 1, :d, :s, (SELECT channel FROM messages WHERE org_id = 1 LIMIT 1) "
                    "FROM generate_series(1, :n)"
                ),
                {"d": direction, "s": sender, "n": n},
            )
    want = sql_cards(eng, "1")
    wait_until(
        lambda: (
            single(prom, substitute(by_title("Inbound Messages")["targets"][0]["expr"], "1", "1m"))
            == want["Inbound Messages"]
        ),
        what="Prometheus to see the new messages",
    )
    time.sleep(2)  # a few more scrapes with the new totals
    # the range starts a few scrapes before the traffic: the ratio over it is the traffic's
    rng = f"{int(time.time() - started) + 2}s"
    ratios = {t["legendFormat"]: t["expr"] for t in by_title("Ratios")["targets"]}
    assert single(prom, substitute(ratios["outbound per inbound (range)"], "1", rng)) == (
        pytest.approx(3.0, rel=1e-6)
    )
    assert single(prom, substitute(ratios["outbound per inbound (all time)"], "1", rng)) == (
        pytest.approx(want["Outbound Messages"] / want["Inbound Messages"])
    )
    assert single(prom, substitute(ratios["users per active agent"], "1", rng)) == (
        pytest.approx(want["Users"] / want["active"])
    )
    for org in (".*", "1", "(1|3)"):
        for panel in panels():
            for t in panel["targets"]:
                expr = substitute(t["expr"], org, rng)
                assert prom.query(expr), f"{panel['title']}: no data for {expr}"


def test_provisioning_points_at_the_dashboard() -> None:
    import yaml

    prov = ROOT / "grafana" / "provisioning"
    ds = yaml.safe_load((prov / "datasources" / "prometheus.yml").read_text())
    assert [d["type"] for d in ds["datasources"]] == ["prometheus"]
    dash = yaml.safe_load((prov / "dashboards" / "convrs.yml").read_text())
    (provider,) = dash["providers"]
    assert provider["type"] == "file" and provider["options"]["path"]
    assert builder.OUT.parent.name == "dashboards" and builder.OUT.exists()
