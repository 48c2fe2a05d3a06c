"""The benchmark's data: the exporter's reference schema in PostgreSQL, filled with
generate_series (bulk loads run without the secondary index, which is built after)."""

from __future__ import annotations

import time

import psycopg
from bench_procs import log
from sqlalchemy import create_engine

from exporter.schema import CHANNELS, metadata

HOST = "127.0.0.1"
PORT = 5432
ADMIN_DSN = f"host={HOST} port={PORT} user=postgres dbname=postgres"
SECONDARY_INDEX = "messages_org_created_idx"
COMBOS_PER_CHANNEL = 4
"""Per channel: inbound from a user, outbound from an agent, a bot or the system."""


def url(name: str) -> str:
    """The database URL as the exporter takes it (``postgresql://`` means psycopg 3)."""
    return f"postgresql://postgres@{HOST}:{PORT}/{name}"


def dsn(name: str) -> str:
    return f"host={HOST} port={PORT} user=postgres dbname={name}"


def create_database(name: str) -> None:
    with psycopg.connect(ADMIN_DSN, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        conn.execute(f'CREATE DATABASE "{name}"')
    engine = create_engine(f"postgresql+psycopg://postgres@{HOST}:{PORT}/{name}")
    try:
        metadata.create_all(engine)
    finally:
        engine.dispose()


def drop_database(name: str) -> None:
    with psycopg.connect(ADMIN_DSN, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def connect(name: str) -> psycopg.Connection:
    return psycopg.connect(dsn(name), autocommit=True)


def server_version() -> str:
    with psycopg.connect(ADMIN_DSN) as conn:
        row = conn.execute("SHOW server_version").fetchone()
    return str(row[0]).split()[0] if row else "?"


def fill_organizations(conn: psycopg.Connection, orgs: int, channels: int, resources: bool) -> None:
    """Organizations; with ``resources`` also 2 bots (2 channels), 3 agents (one disabled),
    2 flows and 5 users per organization."""
    conn.execute(
        "INSERT INTO organizations (id, name) SELECT o, 'Org ' || o FROM generate_series(1, %s) o",
        (orgs,),
    )
    if not resources:
        return
    chans = list(CHANNELS[:channels])
    conn.execute(
        "INSERT INTO bots (org_id, name, channel) SELECT o, 'bot ' || k, "
        "(%s::text[])[1 + (o + k) %% %s] "
        "FROM generate_series(1, %s) o, generate_series(0, 1) k",
        (chans, channels, orgs),
    )
    conn.execute(
        "INSERT INTO agents (org_id, email, disabled) SELECT o, 'a' || k || '@org' || o, k = 2 "
        "FROM generate_series(1, %s) o, generate_series(0, 2) k",
        (orgs,),
    )
    conn.execute(
        "INSERT INTO flows (org_id, name) SELECT o, 'flow ' || k "
        "FROM generate_series(1, %s) o, generate_series(0, 1) k",
        (orgs,),
    )
    conn.execute(
        "INSERT INTO users (org_id, external_id, channel) SELECT o, 'u' || o || '-' || k, "
        "(%s::text[])[1 + k %% %s] FROM generate_series(1, %s) o, generate_series(0, 4) k",
        (chans, channels, orgs),
    )


_FILL = """
INSERT INTO messages (id, org_id, direction, sender_type, channel, created_at)
SELECT g,
       1 + g %% %(orgs)s,
       CASE WHEN c < %(nch)s THEN 'inbound' ELSE 'outbound' END,
       CASE WHEN c < %(nch)s THEN 'user'
            ELSE (ARRAY['agent', 'bot', 'system'])[(c - %(nch)s) / %(nch)s + 1] END,
       (%(channels)s::text[])[c %% %(nch)s + 1],
       now() - interval '60 days' + g * interval '250 milliseconds'
FROM (SELECT g, ((g / %(orgs)s) %% (%(combos)s))::int AS c
      FROM generate_series(%(first)s::bigint, %(last)s::bigint) g) s
"""


def fill_messages(
    conn: psycopg.Connection,
    first: int,
    last: int,
    orgs: int,
    channels: int,
    chunk: int = 1_000_000,
) -> None:
    """Messages with ids first..last, spread evenly over every (org, direction, channel,
    sender) combination; then the id sequence is moved past them."""
    conn.execute(f"DROP INDEX IF EXISTS {SECONDARY_INDEX}")
    chans = list(CHANNELS[:channels])
    start = first
    while start <= last:
        end = min(last, start + chunk - 1)
        t = time.monotonic()
        conn.execute(
            _FILL,
            {
                "orgs": orgs,
                "nch": channels,
                "combos": COMBOS_PER_CHANNEL * channels,
                "channels": chans,
                "first": start,
                "last": end,
            },
        )
        log(f"  messages {start:,}..{end:,} inserted in {time.monotonic() - t:.1f}s")
        start = end + 1
    conn.execute("SELECT setval('messages_id_seq', %s)", (last,))


def finish_load(conn: psycopg.Connection) -> None:
    """The secondary index back, hint bits set and statistics gathered, as on a live table."""
    t = time.monotonic()
    conn.execute(f"CREATE INDEX IF NOT EXISTS {SECONDARY_INDEX} ON messages (org_id, created_at)")
    conn.execute("VACUUM (ANALYZE)")
    log(f"  index and VACUUM ANALYZE in {time.monotonic() - t:.1f}s")


_NEW = """
INSERT INTO messages (org_id, direction, sender_type, channel, created_at)
SELECT org,
       CASE WHEN c < %(nch)s THEN 'inbound' ELSE 'outbound' END,
       CASE WHEN c < %(nch)s THEN 'user'
            ELSE (ARRAY['agent', 'bot', 'system'])[(c - %(nch)s) / %(nch)s + 1] END,
       (%(channels)s::text[])[c %% %(nch)s + 1],
       now()
FROM (SELECT 1 + floor(random() * %(orgs)s)::int AS org,
             floor(random() * %(combos)s)::int AS c
      FROM generate_series(1, %(n)s)) s
"""


def add_messages(conn: psycopg.Connection, n: int, orgs: int, channels: int) -> None:
    """n new messages (ids from the sequence), random orgs and combinations, one commit."""
    conn.execute(
        _NEW,
        {
            "orgs": orgs,
            "nch": channels,
            "combos": COMBOS_PER_CHANNEL * channels,
            "channels": list(CHANNELS[:channels]),
            "n": n,
        },
    )


def max_id(conn: psycopg.Connection) -> int:
    """The highest message id (0 for an empty table)."""
    row = conn.execute("SELECT coalesce(max(id), 0) FROM messages").fetchone()
    return int(row[0]) if row else 0


def count_messages(conn: psycopg.Connection) -> int:
    row = conn.execute("SELECT count(*) FROM messages").fetchone()
    return int(row[0]) if row else 0
