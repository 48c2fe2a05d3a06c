"""Demo data on the reference schema: seeding, and a trickle of new messages.

Used for the embedded SQLite demo (no database configured), by ``--demo.seed``
for a demo PostgreSQL, and by the tests. Data is deterministic for a given seed.
"""

from __future__ import annotations

import datetime as dt
import random
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy import Engine, create_engine, event, insert, inspect, select

from . import schema

DEMO_ORGS: tuple[tuple[str, int], ...] = (
    # (name, messages): very different sizes, names that need care in a label value
    ("Acme Retail", 12_000),
    ("Bäckerei Müller GmbH", 3_500),
    ('Le "Petit" Café', 1_200),
    ("Back\\slash Labs", 400),
    ("東京ホテル", 2_000),
    ("Tiny Startup", 30),
)


@dataclass(frozen=True)
class SeedSummary:
    organizations: int
    messages: int


def already_seeded(engine: Engine) -> bool:
    if not inspect(engine).has_table("organizations"):
        return False
    with engine.connect() as conn:
        return conn.execute(select(schema.organizations.c.id).limit(1)).first() is not None


def create_schema(engine: Engine) -> None:
    schema.metadata.create_all(engine)


def seed(
    engine: Engine,
    *,
    orgs: tuple[tuple[str, int], ...] = DEMO_ORGS,
    seed: int = 42,
    weeks: int = 6,
    now: dt.datetime | None = None,
) -> SeedSummary:
    """Create the reference tables (if missing) and fill them with plausible data."""
    rng = random.Random(seed)
    now = now or dt.datetime.now(dt.UTC)
    create_schema(engine)
    total = 0
    with engine.begin() as conn:
        for name, size in orgs:
            org_id = conn.execute(
                insert(schema.organizations)
                .values(name=name, created_at=now - dt.timedelta(weeks=weeks + 2))
                .returning(schema.organizations.c.id)
            ).scalar_one()
            channels = rng.sample(
                schema.CHANNELS, k=max(1, min(len(schema.CHANNELS), 1 + size // 2000))
            )
            conn.execute(
                insert(schema.bots),
                [
                    {"org_id": org_id, "name": f"bot {i}", "channel": rng.choice(channels)}
                    for i in range(max(1, size // 1500))
                ],
            )
            conn.execute(
                insert(schema.agents),
                [
                    {
                        "org_id": org_id,
                        "email": f"agent{i}@org{org_id}.example",
                        "disabled": rng.random() < 0.2,
                    }
                    for i in range(max(1, size // 400))
                ],
            )
            flows = [{"org_id": org_id, "name": f"flow {i}"} for i in range(size // 300)]
            if flows:  # the smallest orgs have no flows yet: their card reads 0
                conn.execute(insert(schema.flows), flows)
            conn.execute(
                insert(schema.users),
                [
                    {"org_id": org_id, "external_id": f"u{i}", "channel": rng.choice(channels)}
                    for i in range(max(1, size // 8))
                ],
            )
            rows = [
                _message(
                    rng,
                    org_id,
                    channels,
                    now - dt.timedelta(seconds=rng.uniform(0, weeks * 7 * 86400)),
                )
                for _ in range(size)
            ]
            rows.sort(key=lambda r: r["created_at"])  # type: ignore[arg-type,return-value]  # ids grow with time, as in production
            conn.execute(insert(schema.messages), rows)
            total += size
    return SeedSummary(len(orgs), total)


def _message(
    rng: random.Random, org_id: int, channels: list[str] | tuple[str, ...], at: dt.datetime
) -> dict[str, object]:
    inbound = rng.random() < 0.48
    return {
        "org_id": org_id,
        "direction": "inbound" if inbound else "outbound",
        "sender_type": "user"
        if inbound
        else rng.choices(schema.SENDERS_OUTBOUND, weights=(3, 6, 1))[0],
        "channel": rng.choice(channels),
        "body": "hello",
        "created_at": at,
    }


class Trickle:
    """Adds a few messages to random organizations on each tick, so counters move."""

    def __init__(self, engine: Engine, seed: int = 7, per_tick: int = 5) -> None:
        self.engine = engine
        self.rng = random.Random(seed)
        self.per_tick = per_tick

    def tick(self) -> int:
        with self.engine.begin() as conn:
            orgs = [r[0] for r in conn.execute(select(schema.organizations.c.id))]
            channels = list(schema.CHANNELS[:3])
            now = dt.datetime.now(dt.UTC)
            rows = [
                _message(self.rng, self.rng.choice(orgs), channels, now)
                for _ in range(self.rng.randint(1, self.per_tick))
            ]
            conn.execute(insert(schema.messages), rows)
        return len(rows)


def sqlite_demo(path: Path) -> tuple[str, Engine]:
    """Create and seed a demo SQLite file (WAL, so reads never wait on the trickle).

    Returns the URL the exporter reads it through and the engine that writes to it.
    """
    fresh = not path.exists()
    url = f"sqlite:///{path}"
    writer = create_engine(url, connect_args={"check_same_thread": False})
    event.listen(writer, "connect", lambda c, _r: c.execute("PRAGMA journal_mode=WAL"))
    if fresh:
        seed(writer)
    return url, writer
