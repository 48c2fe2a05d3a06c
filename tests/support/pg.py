"""Throwaway PostgreSQL databases, and the counts straight from SQL to compare with."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from contextlib import contextmanager

import psycopg
from sqlalchemy import Engine, create_engine, text

ADMIN_DSN = "host=127.0.0.1 port=5432 user=postgres dbname=postgres"


@contextmanager
def throwaway_database() -> Iterator[str]:
    """Create a fresh database; yield its SQLAlchemy URL; drop it."""
    name = f"convrs_test_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(ADMIN_DSN, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    try:
        yield f"postgresql+psycopg://postgres@127.0.0.1:5432/{name}"
    finally:
        with psycopg.connect(ADMIN_DSN, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def engine(url: str) -> Engine:
    return create_engine(url, pool_size=2)


Counts = dict[str, dict[tuple[str, ...], float]]


def reference_counts(eng: Engine) -> Counts:
    """Every exported series of the reference schema, counted directly."""
    queries = {
        "convrs_bots": "SELECT org_id::text, channel, count(*) FROM bots GROUP BY 1, 2",
        "convrs_agents": "SELECT o.id::text, s.status, count(a.id) FROM organizations o "
        "CROSS JOIN (VALUES ('active'), ('disabled')) s(status) "
        "LEFT JOIN agents a ON a.org_id = o.id AND "
        "(CASE WHEN a.disabled THEN 'disabled' ELSE 'active' END) = s.status "
        "GROUP BY 1, 2",
        "convrs_flows": "SELECT o.id::text, count(f.id) FROM organizations o "
        "LEFT JOIN flows f ON f.org_id = o.id GROUP BY 1",
        "convrs_users": "SELECT o.id::text, count(u.id) FROM organizations o "
        "LEFT JOIN users u ON u.org_id = o.id GROUP BY 1",
        "convrs_messages_total": "SELECT org_id::text, direction, channel, sender_type, count(*) "
        "FROM messages GROUP BY 1, 2, 3, 4",
        "convrs_messages_counting_since_timestamp_seconds": (
            "SELECT org_id::text, direction, extract(epoch FROM min(created_at)) "
            "FROM messages GROUP BY 1, 2"
        ),
        "convrs_org_info": "SELECT id::text, name, 1 FROM organizations",
    }
    out: Counts = {}
    with eng.connect() as conn:
        for metric, sql in queries.items():
            out[metric] = {tuple(r[:-1]): float(r[-1]) for r in conn.execute(text(sql))}
    return out
