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


def zero_if_collected(query: str) -> str:
    """0 where the exporter collected ``query`` and found nothing for the selection; no
    value at all when the exporter is down or the query fails (never a 0 for an outage)."""
    return f'(0 * (max(convrs_exporter_query_success{{job=~"$job", query="{query}"}}) == 1))'


def count_of(selection: str, query: str) -> str:
    return f"sum({selection}) or {zero_if_collected(query)}"


# card -> its number in PromQL (the tests compare each with SQL)
CARDS: dict[str, str] = {
    "bots": count_of(f"{BOTS}{{{SEL}}}", "bots"),
    "agents": count_of(f"{AGENTS}{{{SEL}}}", "agents"),
    "flows": count_of(f"{FLOWS}{{{SEL}}}", "flows"),
    "users": count_of(f"{USERS}{{{SEL}}}", "users"),
    "inbound": count_of(f'{MESSAGES}{{direction="inbound", {SEL}}}', "messages"),
    "outbound": count_of(f'{MESSAGES}{{direction="outbound", {SEL}}}', "messages"),
}
ORG_NAMES = f'max by (org, name) ({ORG_INFO}{{job=~"$job"}})'
"""The org ids and their names, whatever other labels the scrape adds (the Operator's)."""


def target(
    expr: str, legend: str = "", ref: str = "A", instant: bool = False, **extra: Any
) -> dict[str, Any]:
    return {
        "datasource": DS,
        "expr": expr,
        "legendFormat": legend,
        "refId": ref,
        "range": not instant,
        "instant": instant,
        **extra,
    }


def now(expr: str, legend: str = "", ref: str = "A") -> dict[str, Any]:
    """A card's number: an instant query, the value now (a range query's last point lags)."""
    return target(expr, legend, ref, instant=True)


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
    unit: str = "locale",
    orientation: str = "auto",
) -> dict[str, Any]:
    """Counts as exact integers with thousands separators (``locale``: 2390 reads "2,390";
    ``short`` rounded it to "2 K")."""
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
            {"id": "unit", "value": "dateTimeAsIso"},  # the date, also on its first day
            {"id": "displayName", "value": "counting since"},
        ],
    }


def message_card(direction: str) -> dict[str, Any]:
    since = f'min({SINCE}{{direction="{direction}", {SEL}}}) * 1000'
    who = "received from users" if direction == "inbound" else "sent to users"
    return stat(
        f"{direction.capitalize()} Messages",
        f"Messages {who} since counting began (the date below the number).",
        [now(CARDS[direction], "messages", "A"), now(since, "counting since", "B")],
        overrides=[since_override("B")],
        orientation="vertical",
    )


def added(direction: str) -> str:
    """Messages added over the range: the total now less the total a range ago, so that a
    series first seen within the range counts whole (``increase()`` drops its first
    sample; a new organization read NaN). A counter reset within the range (a restart
    without a state file) makes it too low, as ``increase()`` would not."""
    now_total = f'sum({MESSAGES}{{direction="{direction}", {SEL}}})'
    before = f'sum({MESSAGES}{{direction="{direction}", {SEL}}} offset $__range)'
    return f"({now_total} - ({before} or vector(0)))"


def ratio_panel() -> dict[str, Any]:
    out_in_range = f"{added('outbound')} / {added('inbound')}"
    out_in_total = (
        f'sum({MESSAGES}{{direction="outbound", {SEL}}})'
        f' / sum({MESSAGES}{{direction="inbound", {SEL}}})'
    )
    users_per_agent = f'sum({USERS}{{{SEL}}}) / (sum({AGENTS}{{status="active", {SEL}}}) > 0)'
    panel = stat(
        "Ratios",
        "Outbound per inbound message over the selected range and since counting began; "
        "users per active agent (capacity planning; no value with no active agent).",
        [
            now(out_in_range, "outbound per inbound (range)", "A"),
            now(out_in_total, "outbound per inbound (all time)", "B"),
            now(users_per_agent, "users per active agent", "C"),
        ],
        unit="none",
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
                now(count_of(f'{AGENTS}{{status="active", {SEL}}}', "agents"), "active", "B"),
                now(count_of(f'{AGENTS}{{status="disabled", {SEL}}}', "agents"), "disabled", "C"),
            ],
        ),
        ("Flows", "flows", "Chatbot flows.", []),
        ("Users", "users", "Customers and contacts who interacted with the chatbots.", []),
    ]
    for i, (title, key, description, extra) in enumerate(cards):
        lay.add(
            stat(title, description, [now(CARDS[key], "total" if extra else title), *extra]),
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
    # inbound messages all come from users: by channel only
    trends = [("inbound", "channel"), ("outbound", "channel"), ("outbound", "sender")]
    for i, (direction, by) in enumerate(trends):
        expr = (
            f'sum by ({by}) (rate({MESSAGES}{{direction="{direction}", '
            f"{SEL}}}[$__rate_interval])) * 60"
        )
        lay.add(
            timeseries(
                f"{direction.capitalize()} messages per minute by {by}",
                f"{direction.capitalize()} messages per minute, split by {by}.",
                [target(expr, f"{{{{{by}}}}}")],
            ),
            8 * i,
            8,
            8,
        )
    lay.next_row(8)
    lay.add(
        timeseries(
            "Resources over time",
            "Bots, agents, flows and users.",
            [
                target(CARDS[k].split(" or ")[0], k.capitalize(), ref)
                for k, ref in (("bots", "A"), ("agents", "B"), ("flows", "C"), ("users", "D"))
            ],
        ),
        0,
        24,
        8,
    )
    lay.next_row(8)

    planning(lay)

    lay.row("Exporter health")
    health = [
        (
            "Scraped",
            "Prometheus's own `up`: 1 when it could scrape the exporter (No data: the target "
            "is gone; ConvrsExporterAbsent fires).",
            'min(up{job=~"$job"})',
            "none",
        ),
        (
            "Collected",
            "convrs_up: 1 when the exporter's latest collection succeeded.",
            'min(convrs_up{job=~"$job"})',
            "none",
        ),
        (
            "Queries failing",
            "Per query: 1 while its latest run failed (the exporter's log says why).",
            'max by (query) (1 - convrs_exporter_query_success{job=~"$job"})',
            "none",
        ),
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
        legend = "{{query}}" if "by (query)" in expr else title
        panel = timeseries(title, description, [target(expr, legend)], unit=unit)
        lay.add(panel, 4 * i, 4, 6)
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
                    f"query_result({ORG_NAMES})",
                    # text = the name, value = the org id. Grafana's query_result prints
                    # label values raw (quotes, newlines) and sorted; only name and org are
                    # left (max by), whatever labels the scrape adds: match greedily
                    regex=r'/name="(?<text>.*)",org="(?<value>[^"]*)"\}/s',
                ),
            ]
        },
        "panels": lay.panels,
    }


def with_names(expr: str) -> str:
    """Per org, with its name as a label (for a table)."""
    return f"{expr} * on (org) group_left (name) {ORG_NAMES}"


def table(title: str, description: str, targets: list[dict[str, Any]]) -> dict[str, Any]:
    """Instant queries per org, one column each, joined on the org."""
    return {
        "type": "table",
        "title": title,
        "description": description,
        "datasource": DS,
        "targets": [{**t, "format": "table"} for t in targets],
        "transformations": [
            {"id": "merge", "options": {}},
            {"id": "organize", "options": {"excludeByName": {"Time": True}}},
        ],
        "options": {
            "showHeader": True,
            "sortBy": [{"displayName": "inbound / hour", "desc": True}],
        },
        "fieldConfig": {"defaults": {"unit": "locale", "decimals": 1}, "overrides": []},
    }


def planning(lay: Layout) -> None:
    """What a capacity planner asks: which orgs drive load and lack coverage, how volume
    grows, how many messages an agent takes, who answers."""
    lay.row("Planning")
    inbound_rate = f'sum by (org) (rate({MESSAGES}{{direction="inbound", {SEL}}}[1h])) * 3600'
    per_agent = (
        f'sum by (org) ({USERS}{{{SEL}}}) / (sum by (org) ({AGENTS}{{status="active", {SEL}}}) > 0)'
    )
    uncovered = (
        f'count by (org) ((sum by (org, channel) (rate({MESSAGES}{{direction="inbound", {SEL}}}'
        f"[1h])) > 0) unless on (org, channel) (sum by (org, channel) ({BOTS}{{{SEL}}}) > 0))"
        f" or on (org) (0 * max by (org) ({ORG_INFO}{{{SEL}}}))"
    )
    lay.add(
        table(
            "Organizations: load and coverage",
            "Per organization: inbound messages per hour (last hour: who drives load), users "
            "per active agent (empty: no active agent), and channels with inbound traffic but "
            "no bot (who lacks coverage). Sort by any column.",
            [
                now(with_names(inbound_rate), "inbound / hour", "A"),
                now(with_names(per_agent), "users per active agent", "B"),
                now(with_names(uncovered), "channels without a bot", "C"),
            ],
        ),
        0,
        12,
        9,
    )
    lay.add(
        {
            "type": "alertlist",
            "title": "Alerts firing",
            "description": "Prometheus alerts firing or pending for the selected organizations; "
            "each alert's runbook is linked from its annotations (runbook_url).",
            "targets": [],
            "options": {
                "viewMode": "list",
                "groupMode": "default",
                "maxItems": 20,
                "sortOrder": 1,
                "alertInstanceLabelFilter": '{org=~"$org"}',
                "stateFilter": {"firing": True, "pending": True, "noData": False, "normal": False},
                "datasource": "${datasource}",
            },
        },
        12,
        12,
        9,
    )
    lay.next_row(9)
    daily = f"sum(rate({MESSAGES}{{{SEL}}}[1d])) * 86400"
    lay.add(
        timeseries(
            "Message volume per day, and a week ahead",
            "Messages per day (both directions, a 1-day average) and where the trend over the "
            "selected range puts it a week from each point (predict_linear). Look at weeks.",
            [
                target(daily, "messages / day"),
                target(
                    f"predict_linear(({daily})[$__range:], 7 * 86400)",
                    "forecast, a week ahead",
                    "B",
                ),
            ],
        ),
        0,
        8,
        8,
    )
    lay.add(
        timeseries(
            "Inbound messages per active agent per hour",
            "A staffing reading: last hour's inbound messages over active agents. Rising: "
            "agents take more each; compare with what one agent can answer.",
            [
                target(
                    f'sum(rate({MESSAGES}{{direction="inbound", {SEL}}}[1h])) * 3600 / '
                    f'(sum({AGENTS}{{status="active", {SEL}}}) > 0)',
                    "per active agent",
                )
            ],
        ),
        8,
        8,
        8,
    )
    outbound = f'rate({MESSAGES}{{direction="outbound", {SEL}}}[$__rate_interval])'
    share = timeseries(
        "Outbound messages by sender (share)",
        "Who answers users: the share of outbound messages sent by bots, agents and the "
        "system. Bots' share falling while agents' rises: coverage to add.",
        [
            target(
                f"sum by (sender) ({outbound}) / ignoring (sender) group_left sum({outbound})",
                "{{sender}}",
            )
        ],
        unit="percentunit",
    )
    lay.add(share, 16, 8, 8)
    lay.next_row(8)


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
