"""MariaDB beside PostgreSQL (issue #18): the same message table (1,000 orgs, 28 series
each) at 1M and 10M messages in both, counted by the exporter in process as the CLI
wires it. Prints, per size and server: the first count, the steady collection (median of
five, each after 10,000 new messages, once only that batch is unsettled), their ratio,
and whether the totals equal SQL's. Asserts nothing.

    .venv/bin/python bench/mariadb.py                  # 1M and 10M (about 10 minutes)
    .venv/bin/python bench/mariadb.py --sizes 1M       # a quicker look

Both servers are used as they run on this machine (MariaDB's buffer pool is its 128 MB
default; nothing is tuned for the benchmark).
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable
from pathlib import Path

import bench_data as data
import pymysql
from bench_procs import log
from run import (
    COUNT_CHANNELS,
    COUNT_ORGS,
    NEW_MESSAGES,
    Counting,
    Timing,
    describe_timing,
    median_timing,
    parse_size,
    size_label,
)

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from sqlalchemy import create_engine  # noqa: E402

from exporter.schema import CHANNELS, metadata  # noqa: E402

DB = "convrs_bench_mariadb"
ADMIN = {"host": "127.0.0.1", "port": 3306, "user": "root", "password": ""}
STEADY_RUNS = 5
MAX_WARMUP = 13

_COMBO = (
    "CASE WHEN c < {nch} THEN 'inbound' ELSE 'outbound' END, "
    "CASE WHEN c < {nch} THEN 'user' ELSE ELT((c - {nch}) DIV {nch} + 1, 'agent', 'bot', "
    "'system') END, ELT(c MOD {nch} + 1, {channels})"
)


def _combo() -> str:
    channels = ", ".join(f"'{c}'" for c in CHANNELS[:COUNT_CHANNELS])
    return _COMBO.format(nch=COUNT_CHANNELS, channels=channels)


def maria(database: str | None = None) -> pymysql.Connection:
    return pymysql.connect(**ADMIN, database=database, autocommit=True)


def build_mariadb(size: int) -> None:
    """The reference schema (as SQLAlchemy creates it there) filled like bench_data fills
    PostgreSQL: ids 1..size spread evenly over every series (the secondary index stays:
    the foreign key on org_id needs it)."""
    with maria() as conn, conn.cursor() as cur:
        cur.execute(f"DROP DATABASE IF EXISTS {DB}")
        cur.execute(f"CREATE DATABASE {DB}")
    engine = create_engine(f"mysql+pymysql://root@127.0.0.1:3306/{DB}")
    metadata.create_all(engine)
    engine.dispose()
    combos = 4 * COUNT_CHANNELS
    with maria(DB) as conn, conn.cursor() as cur:
        cur.execute(
            "INSERT INTO organizations (id, name) SELECT seq, CONCAT('Org ', seq) "
            f"FROM seq_1_to_{COUNT_ORGS}"
        )
        start = 1
        while start <= size:
            end = min(size, start + 999_999)
            t = time.monotonic()
            cur.execute(
                "INSERT INTO messages (id, org_id, direction, sender_type, channel, created_at) "
                f"SELECT g, 1 + g MOD {COUNT_ORGS}, {_combo()}, "
                "NOW() - INTERVAL 60 DAY + INTERVAL g * 250000 MICROSECOND "
                f"FROM (SELECT seq AS g, (seq DIV {COUNT_ORGS}) MOD {combos} AS c "
                f"FROM seq_{start}_to_{end}) s"
            )
            log(f"  messages {start:,}..{end:,} inserted in {time.monotonic() - t:.1f}s")
            start = end + 1
        t = time.monotonic()
        cur.execute("ANALYZE TABLE messages")
        log(f"  ANALYZE in {time.monotonic() - t:.1f}s")


def add_mariadb(n: int) -> None:
    combos = 4 * COUNT_CHANNELS
    with maria(DB) as conn, conn.cursor() as cur:
        cur.execute(
            "INSERT INTO messages (org_id, direction, sender_type, channel, created_at) "
            f"SELECT org, {_combo()}, NOW() FROM (SELECT 1 + FLOOR(RAND() * {COUNT_ORGS}) AS org,"
            f" FLOOR(RAND() * {combos}) AS c FROM seq_1_to_{n}) s"
        )


def count_mariadb() -> int:
    with maria(DB) as conn, conn.cursor() as cur:
        cur.execute("SELECT count(*) FROM messages")
        (n,) = cur.fetchone()
    return int(n)


def measure(
    url: str, add: Callable[[int], None], count: Callable[[], int]
) -> tuple[Timing, Timing, bool]:
    """The faster first count of two fresh exporters, then the steady median."""
    fulls = []
    counting = None
    for _ in range(2):
        if counting is not None:
            counting.close()
        counting = Counting(url)
        fulls.append(counting.run())
        log(f"  first count: {describe_timing(fulls[-1])}")
    assert counting is not None
    steady: list[Timing] = []
    i = warmed = 0
    while len(steady) < STEADY_RUNS:
        i += 1
        add(NEW_MESSAGES)
        time.sleep(0.2)  # past settle_after (1 ms) and InnoDB's list of open transactions
        t = counting.run()
        if warmed < 1 or (t.recounted > NEW_MESSAGES and warmed < MAX_WARMUP):
            warmed += 1
        else:
            steady.append(t)
        log(f"  +{NEW_MESSAGES:,} messages, collection {i}: {describe_timing(t)}")
    exact = sum(counting.collection.counter.totals_by_key().values()) == count()
    counting.close()
    return min(fulls, key=lambda t: t.wall), median_timing(steady), exact


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--sizes", default="1M,10M")
    args = p.parse_args()
    began = time.monotonic()
    rows = []
    with maria() as conn, conn.cursor() as cur:
        cur.execute("SELECT VERSION()")
        (maria_version,) = cur.fetchone()
    for size in (parse_size(s) for s in args.sizes.split(",")):
        label = size_label(size)
        log(f"PostgreSQL, {label} messages")
        data.create_database(DB)
        with data.connect(DB) as conn:
            data.fill_organizations(conn, COUNT_ORGS, COUNT_CHANNELS, resources=False)
            data.fill_messages(conn, 1, size, COUNT_ORGS, COUNT_CHANNELS)
            data.finish_load(conn)

        def add_pg(n: int) -> None:
            with data.connect(DB) as conn:
                data.add_messages(conn, n, COUNT_ORGS, COUNT_CHANNELS)

        def count_pg() -> int:
            with data.connect(DB) as conn:
                return data.count_messages(conn)

        pg = measure(data.url(DB), add_pg, count_pg)
        data.drop_database(DB)
        log(f"MariaDB, {label} messages")
        build_mariadb(size)
        md = measure(f"mysql://root@127.0.0.1:3306/{DB}", add_mariadb, count_mariadb)
        with maria() as conn, conn.cursor() as cur:
            cur.execute(f"DROP DATABASE {DB}")
        rows.append((label, "PostgreSQL " + data.server_version(), pg))
        rows.append((label, "MariaDB " + str(maria_version).split("-")[0], md))
    minutes = (time.monotonic() - began) / 60
    print(f"\nMariaDB beside PostgreSQL, in one run; {minutes:.1f} min")
    head = f"{'messages':<9}| {'server':<18}| {'first count':<12}| {'steady (+10k)':<14}|"
    print(head + " steady / first | exact")
    for label, server, (full, steady, exact) in rows:
        ratio = f"1/{full.wall / steady.wall:.0f}" if steady.wall else "-"
        print(
            f"{label:<9}| {server:<18}| {full.wall * 1000:>8.0f} ms | "
            f"{steady.wall * 1000:>9.1f} ms  | {ratio:<15}| {exact}"
        )
    print(
        "\nsteady: median of "
        f"{STEADY_RUNS} collections, each after {NEW_MESSAGES:,} new messages"
        f" (SQL alone: {', '.join(f'{s} {t[1].sql * 1000:.1f} ms' for _, s, t in rows)})"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
