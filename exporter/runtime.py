"""The running exporter: one configuration wired into parts, swapped whole on reload.

A reload (SIGHUP, or POST /-/reload with --web.enable-lifecycle) re-reads the
configuration and the web configuration file and checks the mapping against the
database before touching anything; a bad one is logged and refused, and the old
parts keep running. The message counter's state is carried over when the messages
query, the database and the shard are unchanged, so a reload does not reset
convrs_messages_total. The listen address needs a restart.
"""

from __future__ import annotations

import contextlib
import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Engine
from sqlalchemy.exc import SQLAlchemyError

from . import logsetup
from .assembly import Running, assemble
from .assembly import open_database as _open_database
from .config import Config
from .db import Database, Reader, classify, connection, refused
from .demo import Trickle
from .errors import ConfigError, QueryError
from .exposition import Exposition
from .health import Health, ThresholdCollector
from .http import App, Server
from .mapping import Specs, build_specs
from .memory import MemoryPolicy
from .messages.sql import KeyRange
from .scheduler import Schedule
from .webconfig import WebSettings, load_web_config

log = logging.getLogger("convrs_exporter")


class Checking:
    """The start-up check's connection, so that a stop can cancel its statement."""

    def __init__(self) -> None:
        self.db: Database | None = None
        self.active: Any = None

    def watch(self, driver_conn: Any) -> None:
        self.active = driver_conn

    def cancel(self) -> None:
        db, active = self.db, self.active
        if db is not None and active is not None:
            with contextlib.suppress(Exception):  # best effort: the timeout ends it anyway
                db.dialect.cancel(active)

    def abort(self) -> None:
        db, active = self.db, self.active
        if db is not None and active is not None:
            with contextlib.suppress(Exception):
                db.dialect.abort(active)


CHECKING = Checking()


def check_mapping(db: Database, specs: Specs) -> str:
    """Run every query on no rows. If the database answers and a query fails for a reason
    that does not pass by itself (a missing table or column), the mapping is wrong: a
    configuration error; so is a connection the database refuses (a wrong password, a
    missing role or database). A database that does not answer, or a query held up by a
    lock or cut by the timeout, is not: the first collections will tell. Returns what was
    checked, for ``--config.check``."""
    statements = sum(len(spec.statements()) for spec in specs.all())
    watchdog = threading.Timer(
        db.statement_timeout * (statements + 1) + 10.0, CHECKING.abort
    )  # a stalled network would hold a read for the OS's TCP timeouts
    watchdog.daemon = True
    try:
        CHECKING.db = db
        watchdog.start()
        with connection(db, CHECKING.watch) as conn:
            for spec in specs.all():
                reader = Reader(db, spec.key, spec.timeout)
                for statement in spec.statements():
                    sql = f"SELECT * FROM ({statement}) probe WHERE 1 = 0"
                    with reader.read_only(conn):
                        reader.fetch(conn, sql, KeyRange(0, 0).params())
    except QueryError as exc:
        if not exc.transient:
            raise ConfigError(exc.message, key=f"mapping.{exc.query}") from None
        log.warning(
            "the mapping could not be checked now; the collections will retry",
            extra={"query": exc.query, "err": exc.message},
        )
        return f"mapping not checked: {exc.query}: {exc.message}"
    except SQLAlchemyError as exc:
        why = refused(db, exc)
        if why is not None:
            message = f"the database refused the connection: {why}"
            raise ConfigError(message, key="database.url") from None
        message = classify(db, "database", exc).message
        log.warning(
            "database not reachable; the mapping will be checked by the first collection",
            extra={"err": message},
        )
        return "database not reachable: the mapping was not checked"
    finally:
        watchdog.cancel()
        CHECKING.active = None
    return CHECKED


CHECKED = "mapping checked against the database"
"""What ``check_mapping`` returns when the database answered every statement."""


def open_database(url: str, config: Config) -> Database:
    """An engine with the configured limits; its password joins the scrubbed secrets."""
    db = _open_database(url, config)
    for secret in db.secrets:
        logsetup.add_secret(secret)
    return db


@dataclass
class Parts:
    config: Config
    db: Database
    specs: Specs
    web: WebSettings | None
    checked: str = ""
    """What the start-up check found (``check_mapping``)."""


def prepare(config: Config, demo_url: str | None, reuse: Parts | None = None) -> Parts:
    """Everything a configuration needs that can fail, checked; nothing started yet.

    Raises ConfigError. Reuses the running database engine when its settings are the same.
    """
    web = None
    if config.web.config_file:
        web = load_web_config(config.web.config_file, config.web.telemetry_path)
    url = config.database.url.get_secret_value() if config.database.url else demo_url
    if url is None:
        raise ConfigError("no database URL", key="database.url")
    reused = reuse is not None and reuse.config.database == config.database
    db = reuse.db if reuse is not None and reused else open_database(url, config)
    specs = build_specs(config, db.dialect)
    # a reload checks on a connection of its own: the running engine's pool may be busy
    # for a while (a first count reads two ranges at once on both its connections), and a
    # check that could not get one would let an unchecked mapping through
    check_db = open_database(url, config) if reused else db
    try:
        checked = check_mapping(check_db, specs)
    except ConfigError:
        if not reused:
            db.close()
        raise
    finally:
        if check_db is not db:
            check_db.close()
    return Parts(config, db, specs, web, checked)


class Runtime:
    def __init__(
        self,
        load: Callable[[], Config],
        demo_url: str | None,
        demo_writer: Engine | None,
        enable_lifecycle: bool = False,
    ) -> None:
        self._load = load
        self._demo_url = demo_url
        self._demo_writer = demo_writer
        self._lifecycle = enable_lifecycle
        self._lock = threading.Lock()
        self.ready = threading.Event()
        """Set once a complete snapshot is served; shared across reloads."""
        self.memory = MemoryPolicy()
        self.health: Health | None = None
        self.exposition: Exposition | None = None
        self.parts: Parts | None = None
        self.running: Running | None = None
        self.schedule: Schedule | None = None
        self.server: Server | None = None

    def start(self, parts: Parts, listen: tuple[str, int]) -> None:
        """Serve and schedule; raises OSError if the address cannot be bound."""
        cfg = parts.config
        self.health = Health(
            [s.key for s in parts.specs.all()],
            ThresholdCollector({}, {}),
            interval=cfg.collection.interval,
        )
        self.exposition = Exposition(parts.specs, self.ready)
        self.server = Server(listen, self._app(parts))
        self._install(parts, counter_from=None)
        self.server.serve_in_thread()

    def _app(self, parts: Parts) -> App:
        assert self.health is not None and self.exposition is not None
        web = parts.web
        return App(
            self.exposition,
            self.health,
            self.ready,
            parts.config.web.telemetry_path,
            authorize=web.authorize if web else None,
            ssl_context=web.ssl_context if web else None,
            headers=web.headers if web else {},
            open_paths=web.open_paths if web else frozenset(),
            reload=self.reload if self._lifecycle else None,
            progress=self._progress,
        )

    def _progress(self) -> str | None:
        running = self.running
        return running.collection.progress() if running is not None else None

    def _install(self, parts: Parts, counter_from: Running | None) -> None:
        assert self.health is not None
        cfg, specs = parts.config, parts.specs
        self.health.thresholds.update(
            cfg.thresholds.effective_defaults(),
            {o: t for o, t in cfg.thresholds.per_org().items() if specs.shard.owns(o)},
        )
        self.health.interval.set(cfg.collection.interval)
        running = assemble(
            cfg,
            parts.db,
            specs,
            health=self.health,
            exposition=self.exposition,
            counter=counter_from.collection.counter if counter_from is not None else None,
            memory=self.memory,
        )
        schedule = Schedule(running.job)
        if self._demo_writer is not None:
            schedule.every(2.0, Trickle(self._demo_writer).tick, "demo-trickle")
        self.parts, self.running, self.schedule = parts, running, schedule
        schedule.start()

    def reload(self) -> tuple[bool, str]:
        """Re-read the configuration; swap it in if it is good. Safe from any thread."""
        with self._lock:
            old = self.parts
            assert old is not None and self.running is not None
            try:
                config = self._load()
                new = prepare(config, self._demo_url, reuse=old)
            except ConfigError as exc:
                line = logsetup.scrub(exc.line())
                log.error("reload refused; the running configuration stays", extra={"err": line})
                return False, f"reload refused: {line}"
            if config.web.listen_address != old.config.web.listen_address:
                log.warning("web.listen_address changes only with a restart")
            keep = (
                new.specs.messages.statements() == old.specs.messages.statements()
                and new.specs.messages.labels == old.specs.messages.labels
                and new.db is old.db
                and new.specs.shard == old.specs.shard
            )
            previous, schedule = self.running, self.schedule
            assert schedule is not None
            schedule.stop(wait=True)  # a running collection finishes first
            self.memory.release()  # the old state may go: let the collector reach its cycles
            logsetup.setup(config.log.level, config.log.format)
            self._install(new, counter_from=previous if keep else None)
            assert self.server is not None
            self.server.app = self._app(new)
            if new.db is not old.db:
                old.db.close()
            kept = self.running is not None and self.running.collection.counter is (
                previous.collection.counter
            )
            log.info(
                "configuration reloaded", extra={"message_counts": "kept" if kept else "recounted"}
            )
            return True, "reloaded"

    def stop(self, grace: float = 3.0) -> bool:
        """Cancel the running collection, stop scheduling and serving, close the database.
        Returns False if a collection was still running after ``grace`` seconds. It does
        not wait for a reload in progress longer than that either."""
        locked = self._lock.acquire(timeout=grace)
        try:
            collection = self.running.collection if self.running is not None else None
            if collection is not None:
                collection.cancel()
            if self.schedule is not None:
                self.schedule.stop(wait=False)
            idle = collection.idle(grace) if collection is not None else True
            if idle and self.running is not None:
                self.running.job.save_state()  # what the last collection counted
            if self.server is not None:
                self.server.shutdown()
                self.server.server_close()
            if self.parts is not None:
                self.parts.db.close()
            return idle and locked
        finally:
            if locked:
                self._lock.release()
