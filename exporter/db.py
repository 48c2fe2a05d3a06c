"""Database access: engine factory, read-only transactions with a statement timeout, fetch.

The exporter never writes to the platform's database: every transaction is
read-only (PostgreSQL ``SET TRANSACTION READ ONLY``, SQLite ``PRAGMA query_only``)
and every statement is bounded by the statement timeout.
"""

from __future__ import annotations

import re
import sqlite3
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Connection, Engine, create_engine, event, text
from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import ArgumentError, DBAPIError, NoSuchModuleError, SQLAlchemyError

from .errors import ConfigError, QueryError, QueryTimeout

_USERINFO = re.compile(r"(://[^:/@\s]*:)([^@\s]*)(@)")


def redact_url_text(url: str) -> str:
    """Hide the password of a URL given as text, even one that does not parse."""
    return _USERINFO.sub(r"\1***\3", url)


def parse_url(raw: str) -> URL:
    """Parse and normalise a database URL; ``postgresql://`` means psycopg 3."""
    try:
        url = make_url(raw.strip())
    except ArgumentError:
        # never echo it: a URL that does not parse cannot be redacted reliably
        raise ConfigError(
            "cannot parse database URL (expected dialect://user:password@host:port/database)",
            key="database.url",
        ) from None
    if url.drivername in ("postgres", "postgresql"):
        url = url.set(drivername="postgresql+psycopg")
    return url


@dataclass(frozen=True)
class Database:
    engine: Engine
    statement_timeout: float
    secret: str | None
    """The password, kept only to scrub it from any message that might echo it."""

    @property
    def dialect(self) -> str:
        return self.engine.dialect.name

    def describe(self) -> str:
        return self.engine.url.render_as_string(hide_password=True)

    def close(self) -> None:
        self.engine.dispose()


def connect(
    raw_url: str, *, statement_timeout: float, connect_timeout: float, pool_size: int
) -> Database:
    """An engine with a small bounded pool; connections are opened lazily."""
    url = parse_url(raw_url)
    kwargs: dict[str, Any] = {"pool_pre_ping": True}
    connect_args: dict[str, Any] = {}
    backend = url.get_backend_name()
    if backend == "postgresql":
        connect_args = {
            "connect_timeout": max(1, round(connect_timeout)),
            "application_name": "convrs-exporter",
        }
    elif backend in ("mysql", "mariadb"):
        connect_args = {"connect_timeout": max(1, round(connect_timeout))}
    elif backend == "sqlite":
        connect_args = {"check_same_thread": False, "timeout": connect_timeout}
    if backend != "sqlite":
        kwargs.update(pool_size=pool_size, max_overflow=0, pool_timeout=connect_timeout)
    try:
        engine = create_engine(url, connect_args=connect_args, **kwargs)
    except (NoSuchModuleError, ArgumentError) as exc:
        raise ConfigError(
            f"unsupported database URL {url.render_as_string()!r}: {type(exc).__name__}",
            key="database.url",
        ) from None
    if backend == "sqlite":
        event.listen(engine, "connect", _sqlite_read_only)
    return Database(engine, statement_timeout, url.password)


def _sqlite_read_only(dbapi_conn: sqlite3.Connection, _record: object) -> None:
    dbapi_conn.execute("PRAGMA query_only = ON")


@contextmanager
def read_only(db: Database, conn: Connection) -> Iterator[Connection]:
    """One read-only transaction bounded by the statement timeout; always rolled back."""
    with conn.begin() as tx:
        if db.dialect == "postgresql":
            conn.exec_driver_sql("SET TRANSACTION READ ONLY")
            conn.exec_driver_sql(
                f"SET LOCAL statement_timeout = {max(1, int(db.statement_timeout * 1000))}"
            )
        elif db.dialect in ("mysql", "mariadb"):
            conn.exec_driver_sql("SET TRANSACTION READ ONLY")
        try:
            yield conn
        finally:
            tx.rollback()


@contextmanager
def _sqlite_deadline(conn: Connection, seconds: float) -> Iterator[None]:
    """SQLite has no server-side timeout: interrupt the statement from a progress handler."""
    raw = conn.connection.driver_connection
    if not isinstance(raw, sqlite3.Connection):
        yield
        return
    deadline = time.monotonic() + seconds
    raw.set_progress_handler(lambda: int(time.monotonic() > deadline), 10_000)
    try:
        yield
    finally:
        raw.set_progress_handler(None, 0)


def fetch(
    db: Database, conn: Connection, query: str, sql: str, params: Mapping[str, Any] | None = None
) -> tuple[list[str], list[Sequence[Any]]]:
    """Run one statement; return column names and rows, or raise QueryError naming `query`."""
    try:
        with _sqlite_deadline(conn, db.statement_timeout):
            result = conn.execute(text(sql), dict(params or {}))
            return list(result.keys()), [tuple(r) for r in result.fetchall()]
    except SQLAlchemyError as exc:
        raise classify(db, query, exc) from None


def classify(db: Database, query: str, exc: BaseException) -> QueryError:
    """A short, secret-free error for a failed statement."""
    orig = exc.orig if isinstance(exc, DBAPIError) else exc
    message = (str(orig).strip().splitlines() or [type(orig).__name__])[0]
    if db.secret:
        message = message.replace(db.secret, "***")
    sqlstate = getattr(orig, "sqlstate", None)
    if sqlstate == "57014" or message == "interrupted" or "max_statement_time" in message:
        return QueryTimeout(query, f"statement timeout ({db.statement_timeout:g}s) exceeded")
    return QueryError(query, message)


def pg_snapshot_bounds(conn: Connection) -> tuple[int, int]:
    """(xmin, xmax) of a fresh PostgreSQL snapshot: every transaction below xmin has ended."""
    row = conn.execute(
        text(
            "SELECT pg_snapshot_xmin(s)::text::bigint, pg_snapshot_xmax(s)::text::bigint "
            "FROM (SELECT pg_current_snapshot() AS s) q"
        )
    ).one()
    return int(row[0]), int(row[1])
