"""One factory for the running parts of a configuration: the runtime, the tests and the
benchmark all wire config -> database -> specs -> collection -> job through it."""

from __future__ import annotations

import threading
from dataclasses import dataclass

from .collection import Collection
from .config import Config
from .db import Database, connect
from .exposition import Exposition
from .health import Health
from .mapping import Specs, build_specs
from .memory import MemoryPolicy
from .messages.counter import MessageCounter
from .messages.state import StateFile, fingerprint
from .scheduler import Job
from .snapshot import Store


def open_database(url: str, config: Config) -> Database:
    """An engine with the configured limits (the dialect chosen from the URL)."""
    return connect(
        url,
        statement_timeout=config.database.statement_timeout,
        connect_timeout=config.database.connect_timeout,
        pool_size=config.database.pool_size,
        prepared_statements=config.database.prepared_statements,
        timezone=config.database.timezone,
    )


@dataclass
class Running:
    """What collects and serves one configuration."""

    config: Config
    db: Database
    specs: Specs
    collection: Collection
    exposition: Exposition
    health: Health
    job: Job


def assemble(
    config: Config,
    db: Database,
    specs: Specs | None = None,
    *,
    health: Health | None = None,
    exposition: Exposition | None = None,
    counter: MessageCounter | None = None,
    memory: MemoryPolicy | None = None,
) -> Running:
    """The parts, not started. ``health`` and ``exposition`` are kept across reloads (the
    served snapshot and readiness go on); ``counter`` carries message totals over."""
    specs = specs or build_specs(config, db.dialect)
    health = health or Health([s.key for s in specs.all()])
    if exposition is None:
        exposition = Exposition(specs, threading.Event())
    else:
        exposition.specs = specs
    state = None
    if config.collection.state_file is not None:
        state = StateFile(
            config.collection.state_file,
            fingerprint(db, specs.messages, specs.shard),
            db,
            config.collection.state_every,
        )
    if counter is not None and not counter.ready:
        counter = None  # a first count under way goes with its collector: begun anew
    if counter is not None:
        counter.settle_after = config.collection.settle_after
        counter.timezone = db.timezone
    elif state is not None:
        counter = MessageCounter(
            specs.messages.labels,
            config.collection.settle_after,
            owns=specs.shard.owns,
            timezone=db.timezone,
        )
        if not state.load(counter):
            counter = None  # a new one: the whole table is counted
    collection = Collection(db, specs, config.collection, Store(), health, counter)
    job = Job(collection, exposition, health, memory, state)
    return Running(config, db, specs, collection, exposition, health, job)
