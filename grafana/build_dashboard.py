"""Builds grafana/dashboards/convrs-organization-metrics.json (plain Python, no SDK).

    python grafana/build_dashboard.py          # rewrite the JSON
    python grafana/build_dashboard.py --check  # exit 1 if the committed JSON is stale

The layout reproduces the platform's "Organization Metrics" page: Bots, Agents,
Flows, Users on the top row; Inbound and Outbound Messages below, each with the
date counting began; then the ratio panel, trends and the exporter's health.
Every query filters on the `job` and `org` variables.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

from exporter import contract

OUT = Path(__file__).parent / "dashboards" / "convrs-organization-metrics.json"
UID = "convrs-org-metrics"
DS = {"type": "prometheus", "uid": "${datasource}"}
SEL = 'job=~"$job", org=~"$org"'

# the metric names, from the contract (exporter/contract.py)
BOTS, AGENTS, FLOWS, USERS = (m.name for m in contract.GAUGES)
MESSAGES = contract.MESSAGES.name + "_total"
SINCE, ORG_INFO = contract.COUNTING_SINCE.name, contract.ORG_INFO.name

# card -> its number in PromQL (the tests compare each with SQL)
CARDS: dict[str, str] = {
    "bots": f"sum({BOTS}{{{SEL}}}) or vector(0)",
    "agents": f"sum({AGENTS}{{{SEL}}}) or vector(0)",
    "flows": f"sum({FLOWS}{{{SEL}}}) or vector(0)",
    "users": f"sum({USERS}{{{SEL}}}) or vector(0)",
    "inbound": f'sum({MESSAGES}{{direction="inbound", {SEL}}}) or vector(0)',
    "outbound": f'sum({MESSAGES}{{direction="outbound", {SEL}}}) or vector(0)',
}


def target(expr: str, legend: str = "", ref: str = "A", **extra: Any) -> dict[str, Any]:
    return {
        "datasource": DS,
        "expr": expr,
        "legendFormat": legend,
        "refId": ref,
        "range": True,
        "instant": False,
        **extra,
    }


class Layout:
    def __init__(self) -> None:
        self.panels: list[dict[str, Any]] = []
        self.y = 0

    def add(self, panel: dict[str, Any], x: int, w: int, h: int) -> None:
        panel["id"] = len(self.panels) + 1
        panel["gridPos"] = {"x": x, "y": self.y, "w": w, "h": h}
        self.panels.append(panel)

    def next_row(self, h: int) -> None:
        self.y += h

    def row(self, title: str) -> None:
        self.add({"type": "row", "title": title, "collapsed": False, "panels": []}, 0, 24, 1)
        self.next_row(1)


def stat(
    title: str,
    description: str,
    targets: list[dict[str, Any]],
    overrides: list[dict[str, Any]] | None = None,
    unit: str = "short",
    orientation: str = "auto",
) -> dict[str, Any]:
    return {
        "type": "stat",
        "title": title,
        "description": description,
        "datasource": DS,
        "targets": targets,
        "options": {
            "reduceOptions": {"calcs": ["lastNotNull"], "fields": "", "values": False},
            "colorMode": "none",
            "graphMode": "none",
            "justifyMode": "center",
            "textMode": "value_and_name" if len(targets) > 1 else "value",
            "orientation": orientation,
        },
        "fieldConfig": {
            "defaults": {
                "unit": unit,
                "decimals": 0,
                "color": {"mode": "fixed", "fixedColor": "text"},
            },
            "overrides": overrides or [],
        },
    }


def timeseries(
    title: str, description: str, targets: list[dict[str, Any]], unit: str = "short"
) -> dict[str, Any]:
    return {
        "type": "timeseries",
        "title": title,
        "description": description,
        "datasource": DS,
        "targets": targets,
        "options": {
            "legend": {
                "displayMode": "table",
                "placement": "right",
                "calcs": ["mean", "lastNotNull"],
            },
            "tooltip": {"mode": "multi", "sort": "desc"},
        },
        "fieldConfig": {"defaults": {"unit": unit, "custom": {"fillOpacity": 10}}, "overrides": []},
    }


def since_override(ref: str) -> dict[str, Any]:
    """Show the counting-since sample as a date, under the message count."""
    return {
        "matcher": {"id": "byFrameRefID", "options": ref},
        "properties": [
            {"id": "unit", "value": "dateTimeAsIsoNoDateIfToday"},
            {"id": "displayName", "value": "counting since"},
        ],
    }


def message_card(direction: str) -> dict[str, Any]:
    since = f'min({SINCE}{{direction="{direction}", {SEL}}}) * 1000'
    who = "received from users" if direction == "inbound" else "sent to users"
    return stat(
        f"{direction.capitalize()} Messages",
        f"Messages {who} since counting began (the date below the number).",
        [target(CARDS[direction], "messages", "A"), target(since, "counting since", "B")],
        overrides=[since_override("B")],
        orientation="vertical",
    )


def ratio_panel() -> dict[str, Any]:
    out_in_range = (
        f'sum(increase({MESSAGES}{{direction="outbound", {SEL}}}[$__range]))'
        f' / sum(increase({MESSAGES}{{direction="inbound", {SEL}}}[$__range]))'
    )
    out_in_total = (
        f'sum({MESSAGES}{{direction="outbound", {SEL}}})'
        f' / sum({MESSAGES}{{direction="inbound", {SEL}}})'
    )
    users_per_agent = f'sum({USERS}{{{SEL}}}) / sum({AGENTS}{{status="active", {SEL}}})'
    panel = stat(
        "Ratios",
        "Outbound per inbound message over the selected range and since counting began; "
        "users per active agent (capacity planning).",
        [
            target(out_in_range, "outbound per inbound (range)", "A"),
            target(out_in_total, "outbound per inbound (all time)", "B"),
            target(users_per_agent, "users per active agent", "C"),
        ],
    )
    panel["fieldConfig"]["defaults"]["decimals"] = 2
    return panel


def build() -> dict[str, Any]:
    lay = Layout()
    cards = [
        ("Bots", "bots", "Chatbots configured, over all channels.", []),
        (
            "Agents",
            "agents",
            "Agent accounts: the total, active and disabled.",
            [
                target(f'sum({AGENTS}{{status="active", {SEL}}}) or vector(0)', "active", "B"),
                target(f'sum({AGENTS}{{status="disabled", {SEL}}}) or vector(0)', "disabled", "C"),
            ],
        ),
        ("Flows", "flows", "Chatbot flows.", []),
        ("Users", "users", "Customers and contacts who interacted with the chatbots.", []),
    ]
    for i, (title, key, description, extra) in enumerate(cards):
        lay.add(
            stat(title, description, [target(CARDS[key], "total" if extra else title), *extra]),
            6 * i,
            6,
            5,
        )
    lay.next_row(5)
    lay.add(message_card("inbound"), 0, 12, 6)
    lay.add(message_card("outbound"), 12, 12, 6)
    lay.next_row(6)
    lay.add(ratio_panel(), 0, 24, 5)
    lay.next_row(5)

    lay.row("Trends")
    for direction in ("inbound", "outbound"):
        for by in ("channel", "sender"):
            expr = (
                f'sum by ({by}) (rate({MESSAGES}{{direction="{direction}", '
                f"{SEL}}}[$__rate_interval])) * 60"
            )
            x = 0 if by == "channel" else 12
            lay.add(
                timeseries(
                    f"{direction.capitalize()} messages per minute by {by}",
                    f"{direction.capitalize()} messages per minute, split by {by}.",
                    [target(expr, f"{{{{{by}}}}}")],
                ),
                x,
                12,
                8,
            )
        lay.next_row(8)
    lay.add(
        timeseries(
            "Resources over time",
            "Bots, agents, flows and users.",
            [
                target(CARDS[k].removesuffix(" or vector(0)"), k.capitalize(), ref)
                for k, ref in (("bots", "A"), ("agents", "B"), ("flows", "C"), ("users", "D"))
            ],
        ),
        0,
        24,
        8,
    )
    lay.next_row(8)

    lay.row("Exporter health")
    health = [
        ("Up", "1 if the latest collection succeeded.", 'min(convrs_up{job=~"$job"})', "none"),
        (
            "Last successful collection",
            "Age of the latest successful collection.",
            'max(time() - convrs_exporter_last_success_timestamp_seconds{job=~"$job"})',
            "s",
        ),
        (
            "Collection duration (p90)",
            "Wall time of collections, 90th percentile.",
            "histogram_quantile(0.9, sum by (le) (rate("
            'convrs_exporter_collection_duration_seconds_bucket{job=~"$job"}[$__rate_interval])))',
            "s",
        ),
        (
            "Replication lag",
            "How far the read replica the exporter reads is behind its primary (0 on a "
            "primary); ConvrsReplicaLagging fires past 5 minutes.",
            'max(convrs_exporter_replication_lag_seconds{job=~"$job"})',
            "s",
        ),
    ]
    for i, (title, description, expr, unit) in enumerate(health):
        panel = timeseries(title, description, [target(expr, title)], unit=unit)
        lay.add(panel, 6 * i, 6, 6)
    lay.next_row(6)

    return {
        "uid": UID,
        "title": "Convrs / Organization Metrics",
        "description": "The platform's Organization Metrics page, from convrs-exporter.",
        "tags": ["convrs", "convrs-exporter"],
        "editable": True,
        "schemaVersion": 39,
        "version": 1,
        "graphTooltip": 1,
        "time": {"from": "now-24h", "to": "now"},
        "refresh": "1m",
        "timezone": "",
        "annotations": {"list": []},
        "links": [],
        "templating": {
            "list": [
                {
                    "name": "datasource",
                    "label": "Data source",
                    "type": "datasource",
                    "query": "prometheus",
                    "current": {},
                    "hide": 0,
                    "refresh": 1,
                },
                _query_variable("job", "Job", "label_values(convrs_up, job)"),
                _query_variable(
                    "org",
                    "Organization",
                    f'query_result({ORG_INFO}{{job=~"$job"}})',
                    # text = the name, value = the org id. Grafana's query_result prints
                    # label values raw (quotes, newlines) and sorted, org last: match greedily
                    regex=r'/name="(?<text>.*)",org="(?<value>[^"]*)"\}/s',
                ),
            ]
        },
        "panels": lay.panels,
    }


def _query_variable(name: str, label: str, query: str, **extra: str) -> dict[str, Any]:
    """A multi-value template variable from a Prometheus query, with All matching any."""
    return {
        "name": name,
        "label": label,
        "type": "query",
        "datasource": DS,
        "query": {"query": query, "refId": name},
        "definition": query,
        **extra,
        "refresh": 2,
        "multi": True,
        "includeAll": True,
        "allValue": ".*",
        "current": {},
        "hide": 0,
        "sort": 1,
    }


def render() -> str:
    return json.dumps(build(), indent=2, ensure_ascii=False) + "\n"


def main(argv: list[str]) -> int:
    text = render()
    if "--check" in argv:
        if not OUT.exists() or OUT.read_text() != text:
            print(f"{OUT} is stale: run python grafana/build_dashboard.py", file=sys.stderr)
            return 1
        return 0
    OUT.write_text(text)
    print(f"wrote {OUT}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
