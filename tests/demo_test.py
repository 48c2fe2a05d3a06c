"""With no database configured, the exporter serves its own seeded SQLite demo, and it moves."""

from __future__ import annotations

import os
import sqlite3
from pathlib import Path

from tests.support.expo import parse
from tests.support.procs import Exporter, wait_until


def test_demo_database_serves_real_moving_numbers(tmp: Path) -> None:
    db_path = tmp / "demo.sqlite"
    env = {k: v for k, v in os.environ.items() if not k.startswith("CONVRS_EXPORTER_")}
    exp = Exporter(
        tmp,
        {"collection": {"interval": "1s"}, "database": {"statement_timeout": "500ms"}},
        args=["--demo.path", str(db_path)],
    )
    exp.env = env
    exp.start()
    try:
        first = parse(exp.metrics())
        with sqlite3.connect(db_path) as conn:
            flows = dict(
                conn.execute(
                    "SELECT o.id, count(f.id) FROM organizations o "
                    "LEFT JOIN flows f ON f.org_id = o.id GROUP BY o.id"
                )
            )
            names = dict(conn.execute("SELECT id, name FROM organizations"))
        assert len(names) == 6
        assert first["convrs_org_info"] == {(str(i), n): 1.0 for i, n in names.items()}
        assert first["convrs_flows"] == {(str(i),): float(n) for i, n in flows.items()}
        total = sum(first["convrs_messages_total"].values())
        assert total >= 19_000
        wait_until(
            lambda: sum(parse(exp.metrics())["convrs_messages_total"].values()) > total,
            timeout=10,
            what="the demo's trickle to move the counters",
        )
        with sqlite3.connect(db_path) as conn:
            (rows,) = conn.execute("SELECT count(*) FROM messages").fetchone()
        assert sum(parse(exp.metrics())["convrs_messages_total"].values()) <= rows
    finally:
        assert exp.stop() == 0, exp.log()


def test_demo_seed_command_is_idempotent(pg_url: str) -> None:
    import subprocess
    import sys

    from tests.support import pg

    env = {"PATH": "/usr/bin:/bin", "CONVRS_EXPORTER_DATABASE_URL": pg_url}

    def seed() -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "exporter.cli", "--demo.seed"],
            capture_output=True,
            text=True,
            env=env,
            timeout=120,
        )

    first = seed()
    assert first.returncode == 0 and "seeded 6 organizations, 19130 messages" in first.stdout
    engine = pg.engine(pg_url)
    counts = pg.reference_counts(engine)
    second = seed()
    assert second.returncode == 0 and "not seeding" in second.stdout
    assert pg.reference_counts(engine) == counts
    engine.dispose()
