"""Production PostgreSQL, measured (issue #15): a first count in key ranges under a short
statement timeout, a restart from the state file, and steady counting through a hot
standby. Prints its figures; asserts nothing.

    .venv/bin/python bench/production.py                # 30M messages, 1 s timeout
    .venv/bin/python bench/production.py --size 3M      # a quicker look
    .venv/bin/python bench/production.py --keep         # keep the 30M database for reruns

1. One unbounded full count (the statement the first count used to be, no timeout), then
   the exporter's first count with ``statement_timeout: 1s``: ranges until ready, with the
   progress lines it logs; exact against SQL; total time against the unbounded count.
2. The state file written by that exporter, 10,000 messages added, a new exporter from the
   file: time from start until ready (its first collection served), totals against SQL.
3. A throwaway primary and streaming standby (initdb, pg_basebackup -R) with the standby
   size of messages: the median of steady collections (+10,000 messages each) against the
   primary, then against the standby.
"""

from __future__ import annotations

import argparse
import logging
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import bench_data as data
import psycopg
from bench_procs import log
from run import COUNT_CHANNELS, COUNT_ORGS, NEW_MESSAGES, parse_size, size_label

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from sqlalchemy import text  # noqa: E402

from exporter.assembly import Running, assemble, open_database  # noqa: E402
from exporter.config import Config, reference_mapping  # noqa: E402
from tests.support.standby import primary_and_standby  # noqa: E402

DB = "convrs_bench_production"


def running(url: str, state: Path | None = None, timeout: str = "1s") -> Running:
    config = Config.model_validate(
        {
            "database": {"url": url, "statement_timeout": timeout},
            "collection": {
                "interval": 60,
                "settle_after": "1ms",
                **({"state_file": str(state)} if state else {}),
            },
            "mapping": reference_mapping(),
        }
    )
    return assemble(config, open_database(url, config))


def sql_totals(dsn: str) -> dict[tuple[str, ...], int]:
    with psycopg.connect(dsn) as conn:
        rows = conn.execute(
            "SELECT org_id::text, direction, channel, sender_type, count(*) FROM messages "
            "GROUP BY 1, 2, 3, 4"
        ).fetchall()
    return {tuple(r[:4]): int(r[4]) for r in rows}


def served_totals(r: Running) -> dict[tuple[str, ...], int]:
    return r.collection.counter.totals_by_key()


class Progress(logging.Handler):
    """The exporter's progress lines, as they are logged."""

    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.lines: list[tuple[float, dict[str, Any]]] = []

    def emit(self, record: logging.LogRecord) -> None:
        if record.getMessage().startswith("counting messages"):
            fields = {k: getattr(record, k) for k in ("rows", "estimated_rows", "eta_seconds")}
            self.lines.append((time.monotonic(), fields))


def build(size: int, keep: bool) -> None:
    with data.connect("postgres") as admin:
        exists = admin.execute("SELECT 1 FROM pg_database WHERE datname = %s", (DB,)).fetchone()
    if exists and keep:
        with data.connect(DB) as conn:
            if data.count_messages(conn) == size:
                log(f"reusing {DB} ({size_label(size)} messages)")
                return
    log(f"building {DB}: {size_label(size)} messages")
    data.create_database(DB)
    with data.connect(DB) as conn:
        data.fill_organizations(conn, COUNT_ORGS, COUNT_CHANNELS, resources=True)
        data.fill_messages(conn, 1, size, COUNT_ORGS, COUNT_CHANNELS)
        data.finish_load(conn)


def first_count(size: int, state: Path) -> dict[str, Any]:
    url, dsn = data.url(DB), data.dsn(DB)
    r = running(url, state)
    full_sql = r.specs.messages.sql.full
    with r.db.engine.connect() as conn, conn.begin():
        conn.execute(text("SET LOCAL statement_timeout = 0"))
        t = time.monotonic()
        n = sum(1 for _ in conn.execute(text(full_sql), {"after": -1, "upto": 2**62}))
        unbounded = time.monotonic() - t
    log(f"  one unbounded full count: {unbounded:.2f} s ({n:,} series)")
    progress = Progress()
    logging.getLogger("convrs_exporter").addHandler(progress)
    logging.getLogger("convrs_exporter").setLevel(logging.INFO)
    t = time.monotonic()
    runs = 0
    while not r.collection.counter.ready:
        ok = r.job.collect()
        runs += 1
        scan = r.collection.messages.last_scan
        log(f"  collection {runs}: ok={ok}, {scan.describe() if scan else ''}")
    chunked = time.monotonic() - t
    logging.getLogger("convrs_exporter").removeHandler(progress)
    scan = r.collection.messages.last_scan
    exact = served_totals(r) == sql_totals(dsn)
    log(f"  first count in ranges (timeout 1 s): {chunked:.2f} s, exact: {exact}")
    for at, fields in progress.lines:
        log(f"    progress at {at - t:5.1f} s: {fields}")
    r.job.save_state()
    r.db.close()
    return {
        "unbounded": unbounded,
        "chunked": chunked,
        "collections": runs,
        "ranges_work": scan.work if scan else 0.0,
        "rows": scan.rows if scan else 0,
        "exact": exact,
        "progress_lines": len(progress.lines),
        "state_bytes": state.stat().st_size,
    }


def restart(state: Path) -> dict[str, Any]:
    url, dsn = data.url(DB), data.dsn(DB)
    with data.connect(DB) as conn:
        data.add_messages(conn, NEW_MESSAGES, COUNT_ORGS, COUNT_CHANNELS)
    t = time.monotonic()
    r = running(url, state)
    resumed = r.collection.counter.ready
    ok = r.job.collect()
    ready = r.exposition.ready.is_set()
    took = time.monotonic() - t
    exact = served_totals(r) == sql_totals(dsn)
    log(f"  restart from the state file: ready={ready} in {took:.2f} s, resumed={resumed}, ok={ok}")
    log(f"  totals equal SQL: {exact}")
    r.db.close()
    return {"restart": took, "ready": ready, "resumed": resumed, "exact": exact}


def steady_median(url: str, dsn_primary: str, caught_up: Any) -> float:
    r = running(url, timeout="10s")
    for _ in range(3):
        caught_up()
        r.job.run(["messages"])
    times = []
    with psycopg.connect(dsn_primary, autocommit=True) as conn:
        for _ in range(7):
            data.add_messages(conn, NEW_MESSAGES, COUNT_ORGS, COUNT_CHANNELS)
            caught_up()
            time.sleep(0.05)
            t = time.perf_counter()
            assert r.job.run(["messages"])
            times.append(time.perf_counter() - t)
    r.db.close()
    return statistics.median(times[2:])


def standby(size: int) -> dict[str, float]:
    with primary_and_standby() as pair:
        with psycopg.connect(pair.dsn(pair.primary_port), autocommit=True) as conn:
            conn.execute("CREATE DATABASE convrs")
        from sqlalchemy import create_engine

        from exporter.schema import metadata

        engine = create_engine(pair.url(pair.primary_port, "convrs"))
        metadata.create_all(engine)
        engine.dispose()
        dsn = pair.dsn(pair.primary_port, "convrs")
        with psycopg.connect(dsn, autocommit=True) as conn:
            data.fill_organizations(conn, COUNT_ORGS, COUNT_CHANNELS, resources=True)
            data.fill_messages(conn, 1, size, COUNT_ORGS, COUNT_CHANNELS)
            data.finish_load(conn)
        pair.caught_up(timeout=600)
        log("  replica built and caught up")
        primary = steady_median(pair.url(pair.primary_port, "convrs"), dsn, pair.caught_up)
        replica = steady_median(pair.url(pair.standby_port, "convrs"), dsn, pair.caught_up)
    log(
        f"  steady collection, +10,000 messages: primary {primary * 1e3:.1f} ms, "
        f"standby {replica * 1e3:.1f} ms ({replica / primary:.2f}x)"
    )
    return {"primary": primary, "standby": replica}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--size", default="30M")
    p.add_argument("--standby-size", default="1M")
    p.add_argument("--keep", action="store_true")
    p.add_argument("--skip-standby", action="store_true")
    args = p.parse_args()
    size, standby_size = parse_size(args.size), parse_size(args.standby_size)
    started = time.monotonic()
    build(size, args.keep)
    with tempfile.TemporaryDirectory() as tmp:
        state = Path(tmp) / "state.json"
        first = first_count(size, state)
        again = restart(state)
    replica = None if args.skip_standby else standby(standby_size)
    if not args.keep:
        data.drop_database(DB)
    print(
        f"\nproduction PostgreSQL, {size_label(size)} messages; PostgreSQL "
        f"{data.server_version()}; {(time.monotonic() - started) / 60:.1f} min"
    )
    rows = [
        ("one unbounded full count (no timeout)", f"{first['unbounded']:.2f} s", ""),
        (
            "first count in ranges, timeout 1 s",
            f"{first['chunked']:.2f} s ({first['chunked'] / first['unbounded']:.2f}x), "
            f"{first['collections']} collection(s), exact: {first['exact']}",
            "<= 1.3x, exact",
        ),
        ("  progress lines logged", str(first["progress_lines"]), "seen"),
        ("state file size", f"{first['state_bytes'] / 1e6:.1f} MB", ""),
        (
            "restart from the state file (+10k messages)",
            f"ready in {again['restart']:.2f} s, totals exact: {again['exact']}",
            "< 3 s, equal",
        ),
    ]
    if replica:
        ratio = replica["standby"] / replica["primary"]
        rows.append(
            (
                f"steady collection, {size_label(standby_size)}: primary / standby",
                f"{replica['primary'] * 1e3:.1f} ms / {replica['standby'] * 1e3:.1f} ms "
                f"({ratio:.2f}x)",
                "<= 2x",
            )
        )
    width = max(len(r[0]) for r in rows)
    for name, value, target in rows:
        print(f"{name:<{width}} | {value:<60} | {target}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
