"""query-exporter (PyPI) in its own virtualenv, configured with the queries equivalent to
convrs-exporter's reference mapping, each with an interval: its scheduler runs them and
/metrics serves the cached values (its "interval" mode, not run-on-scrape)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import yaml
from bench_procs import Proc, environ_with, free_port, http_get, log, sample_sum, wait_until

VERSION = "5.0.2"
BENCH = Path(__file__).resolve().parent
VENV = BENCH / ".venv-qe"
EXE = VENV / "bin" / "query-exporter"
PACKAGES = [f"query-exporter=={VERSION}", "psycopg2-binary"]

# One query per metric, the same GROUP BY as convrs-exporter's reference mapping, and the
# same zero-filling (agents by status, flows, users). Every query runs over the whole table.
QUERIES: dict[str, tuple[str, str, list[str], str]] = {
    # name: (metric type, help, labels, SQL)
    "convrs_org_info": (
        "gauge",
        "Organization display names, always 1.",
        ["org", "name"],
        "SELECT id::text AS org, name, 1 AS convrs_org_info FROM organizations",
    ),
    "convrs_bots": (
        "gauge",
        "Chatbots configured, by channel.",
        ["org", "channel"],
        "SELECT org_id::text AS org, channel, count(*) AS convrs_bots FROM bots GROUP BY 1, 2",
    ),
    "convrs_agents": (
        "gauge",
        "Agent accounts, by status.",
        ["org", "status"],
        "SELECT o.id::text AS org, s.status, count(a.id) AS convrs_agents "
        "FROM organizations o CROSS JOIN (VALUES ('active'), ('disabled')) s(status) "
        "LEFT JOIN agents a ON a.org_id = o.id "
        "AND (CASE WHEN a.disabled THEN 'disabled' ELSE 'active' END) = s.status "
        "GROUP BY 1, 2",
    ),
    "convrs_flows": (
        "gauge",
        "Chatbot flows.",
        ["org"],
        "SELECT o.id::text AS org, count(f.id) AS convrs_flows "
        "FROM organizations o LEFT JOIN flows f ON f.org_id = o.id GROUP BY 1",
    ),
    "convrs_users": (
        "gauge",
        "Users.",
        ["org"],
        "SELECT o.id::text AS org, count(u.id) AS convrs_users "
        "FROM organizations o LEFT JOIN users u ON u.org_id = o.id GROUP BY 1",
    ),
    "convrs_messages": (
        "counter",
        "Messages.",
        ["org", "direction", "channel", "sender"],
        "SELECT org_id::text AS org, direction, channel, sender_type AS sender, "
        "count(*) AS convrs_messages FROM messages GROUP BY 1, 2, 3, 4",
    ),
    "convrs_messages_counting_since_timestamp_seconds": (
        "gauge",
        "When message counting began.",
        ["org", "direction"],
        "SELECT org_id::text AS org, direction, "
        "extract(epoch FROM min(created_at))::float8 "
        "AS convrs_messages_counting_since_timestamp_seconds "
        "FROM messages GROUP BY 1, 2",
    ),
}
MESSAGES_QUERY = "convrs_messages"


def installed_version() -> str | None:
    if not EXE.exists():
        return None
    out = subprocess.run(
        [
            str(VENV / "bin" / "python"),
            "-c",
            "import importlib.metadata as m; print(m.version('query-exporter'))",
        ],
        capture_output=True,
        text=True,
    )
    return out.stdout.strip() or None


def ensure_venv() -> str:
    """bench/.venv-qe with query-exporter and the psycopg2 driver; its version."""
    if installed_version() != VERSION:
        log(f"installing query-exporter {VERSION} into {VENV}")
        if not (VENV / "bin" / "python").exists():
            subprocess.run([sys.executable, "-m", "venv", str(VENV)], check=True)
        subprocess.run(
            [str(VENV / "bin" / "python"), "-m", "pip", "install", "-q", *PACKAGES], check=True
        )
    version = installed_version()
    if version is None:
        raise RuntimeError(f"query-exporter did not install into {VENV}")
    return version


def config(db: str, interval: int, names: list[str]) -> dict[str, Any]:
    return {
        "databases": {"db": {"dsn": f"postgresql+psycopg2://postgres@127.0.0.1:5432/{db}"}},
        "metrics": {
            name: {
                "type": QUERIES[name][0],
                "description": QUERIES[name][1],
                "labels": QUERIES[name][2],
            }
            for name in names
        },
        "queries": {
            name: {
                "interval": interval,
                "databases": ["db"],
                "metrics": [name],
                "sql": QUERIES[name][3],
            }
            for name in names
        },
    }


class QueryExporter:
    def __init__(self, tmp: Path, db: str, interval: int, names: list[str]) -> None:
        self.port = free_port()
        self.names = names
        self.interval = interval
        path = tmp / f"query-exporter-{self.port}.yaml"
        path.write_text(yaml.safe_dump(config(db, interval, names), sort_keys=False))
        self.proc = Proc(
            "query-exporter",
            [
                str(EXE),
                "--config",
                str(path),
                "-H",
                "127.0.0.1",
                "-p",
                str(self.port),
                "-L",
                "warning",
            ],
            environ_with(),
            tmp / f"query-exporter-{self.port}.log",
        )

    def metrics(self) -> bytes:
        status, _, body = http_get(self.port, "/metrics")
        if status != 200:
            raise OSError(f"query-exporter /metrics answered {status}")
        return body

    def successes(self, body: bytes, name: str) -> int:
        return int(sample_sum(body, "queries_total", query=name, status="success") or 0)

    def failures(self, body: bytes, name: str) -> int:
        total = sample_sum(body, "queries_total", query=name) or 0
        return int(total) - self.successes(body, name)

    def wait_ready(self, timeout: float = 300, runs: int = 1) -> bytes:
        """Until every query has succeeded ``runs`` times; the last /metrics body."""

        def ready() -> bytes | None:
            self.proc.check_alive()
            body = self.metrics()
            for name in self.names:
                if self.failures(body, name):
                    raise RuntimeError(f"query-exporter query {name} failed: {self.proc.tail()}")
            return body if all(self.successes(body, n) >= runs for n in self.names) else None

        result: bytes = wait_until(ready, timeout, "query-exporter's queries", every=1.0)
        return result

    def stop(self) -> None:
        self.proc.stop()
