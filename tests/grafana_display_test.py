"""What a person sees on the cards, rendered by Grafana's own formatter (@grafana/data from
npm, installed by `make test`, run with node) from the dashboard JSON's own settings."""

from __future__ import annotations

import datetime as dt
import json
import os
import subprocess
from pathlib import Path
from typing import Any

ROOT = Path(__file__).parent.parent
DASHBOARD = json.loads((ROOT / "grafana/dashboards/convrs-organization-metrics.json").read_text())
MODULES = ROOT / ".cache" / "grafana-data" / "node_modules"
CARDS = ["Bots", "Agents", "Flows", "Users", "Inbound Messages", "Outbound Messages"]


def grafana_format(items: list[dict[str, Any]]) -> list[str]:
    result = subprocess.run(
        ["node", str(ROOT / "tests/support/grafana_format.cjs")],
        input=json.dumps(items),
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "NODE_PATH": str(MODULES), "TZ": "UTC"},
        check=True,
    )
    texts: list[str] = json.loads(result.stdout)
    return texts


def panel(title: str) -> dict[str, Any]:
    (found,) = [p for p in DASHBOARD["panels"] if p.get("title") == title]
    return found


def test_cards_show_exact_counts_with_thousands_separators() -> None:
    samples = [2390, 1500, 9178, 10176, 1234567, 7, 0]
    for title in CARDS:
        defaults = panel(title)["fieldConfig"]["defaults"]
        items = [
            {"unit": defaults["unit"], "decimals": defaults.get("decimals"), "value": v}
            for v in samples
        ]
        assert grafana_format(items) == [
            "2,390",
            "1,500",
            "9,178",
            "10,176",
            "1,234,567",
            "7",
            "0",
        ], title


def test_counting_since_shows_the_date_also_on_the_day_counting_began() -> None:
    now = dt.datetime.now(dt.UTC).replace(microsecond=0)
    for title in ("Inbound Messages", "Outbound Messages"):
        (override,) = panel(title)["fieldConfig"]["overrides"]
        unit = next(p["value"] for p in override["properties"] if p["id"] == "unit")
        (text,) = grafana_format([{"unit": unit, "value": now.timestamp() * 1000}])
        assert text == now.strftime("%Y-%m-%d %H:%M:%S"), (title, text)
