"""Database access: engine factory, read-only transactions with a statement timeout, reads.

The exporter never writes to the platform's database: every transaction is
read-only (PostgreSQL ``SET TRANSACTION READ ONLY``, SQLite ``PRAGMA query_only``)
and every statement is bounded by the statement timeout.
"""

from __future__ import annotations

import datetime as dt
import re
import sqlite3
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from psycopg.abc import Buffer
from psycopg.adapt import Loader
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
        url = make_url(raw.strip())  # a non-numeric port raises ValueError
    except (ArgumentError, ValueError):
        # never echo it: a URL that does not parse cannot be redacted reliably
        raise ConfigError(
            "cannot parse database URL (expected dialect://user:password@host:port/database)",
            key="database.url",
        ) from None
    if "@" in (url.host or "") or "@" in (url.database or ""):
        # an unencoded "@" in the password: the part after it would be taken for the host
        # and could be echoed in errors, so refuse it without saying what it is
        raise ConfigError(
            "the URL has more than one '@': percent-encode '@' in the password as %40",
            key="database.url",
        )
    if url.drivername in ("postgres", "postgresql"):
        url = url.set(drivername="postgresql+psycopg")
    return url


@dataclass(frozen=True)
class Database:
    engine: Engine
    statement_timeout: float
    secret: str | None = field(repr=False)
    """The password, kept only to scrub it from any message that might echo it."""

    @property
    def dialect(self) -> str:
        return self.engine.dialect.name

    def describe(self) -> str:
        return self.engine.url.render_as_string(hide_password=True)

    def close(self) -> None:
        self.engine.dispose()


def connect(
    raw_url: str,
    *,
    statement_timeout: float,
    connect_timeout: float,
    pool_size: int,
    prepared_statements: bool = True,
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
        if not prepared_statements:
            connect_args["prepare_threshold"] = None
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
    if backend == "postgresql":
        # first_connect runs SQLAlchemy's own set-up queries (server version) through it too
        event.listen(engine, "first_connect", _lenient_text, insert=True)
        event.listen(engine, "connect", _lenient_text, insert=True)
    return Database(engine, statement_timeout, url.password)


class _LenientText(Loader):
    """Text from a SQL_ASCII database is whatever bytes were stored: decode them as UTF-8,
    replacing what is not, so that a bad name is a label with U+FFFD, not a failed query."""

    def load(self, data: Buffer) -> str:
        return bytes(data).decode("utf-8", errors="replace")


def _lenient_text(dbapi_conn: Any, _record: object) -> None:
    if dbapi_conn.info.parameter_status("server_encoding") != "SQL_ASCII":
        return  # the server guarantees valid text in its encoding; keep psycopg's fast loader
    for name in ("text", "varchar", "bpchar", "name"):
        dbapi_conn.adapters.register_loader(name, _LenientText)


def _sqlite_read_only(dbapi_conn: sqlite3.Connection, _record: object) -> None:
    dbapi_conn.execute("PRAGMA query_only = ON")


@contextmanager
def read_only(db: Database, conn: Connection, repeatable: bool = False) -> Iterator[Connection]:
    """One read-only transaction bounded by the statement timeout. ``repeatable``: on
    PostgreSQL every statement reads one snapshot (REPEATABLE READ; it is MySQL's default
    too; pysqlite starts no transaction for reads, so there each statement reads the
    newest data).

    It ends with COMMIT, or ROLLBACK on an error: the database refuses writes in it, so
    the two end it alike, but psycopg forgets its prepared statements at every rollback.
    Kept, the statements each collection repeats are parsed once per connection (the
    probe's view of pg_stat_activity took 1.3 ms to parse and plan, 0.1 ms to run); on
    PostgreSQL each is still planned for its own bounds (``force_custom_plan``), so that
    a full count never runs on a plan made for a few thousand rows."""
    with conn.begin():  # commits on leaving, rolls back on an exception
        if db.dialect == "postgresql":
            level = "ISOLATION LEVEL REPEATABLE READ, " if repeatable else ""
            conn.exec_driver_sql(
                f"SET TRANSACTION {level}READ ONLY; "
                f"SET LOCAL statement_timeout = {max(1, int(db.statement_timeout * 1000))}; "
                "SET LOCAL plan_cache_mode = force_custom_plan"
            )
        elif db.dialect in ("mysql", "mariadb"):
            conn.exec_driver_sql("SET TRANSACTION READ ONLY")
        yield conn


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


def _errors(db: Database) -> tuple[type[BaseException], ...]:
    """What reading rows straight from the driver's cursor can raise: SQLAlchemy's errors
    and the driver's own (SQLite's "interrupted" at the deadline, for one)."""
    driver = getattr(db.engine.dialect, "loaded_dbapi", None)
    return (SQLAlchemyError, driver.Error) if driver is not None else (SQLAlchemyError,)


@contextmanager
def _cursor(
    db: Database, conn: Connection, query: str, sql: str, params: Mapping[str, Any] | None
) -> Iterator[Any]:
    """Run one statement; the driver's cursor to read its rows from (as the driver's own
    tuples, without SQLAlchemy's row objects), or QueryError naming ``query``."""
    try:
        with _sqlite_deadline(conn, db.statement_timeout):
            result = conn.execute(text(sql), dict(params or {}))
            try:
                yield result.cursor
            finally:
                result.close()
    except _errors(db) as exc:
        raise classify(db, query, exc) from None


def stream(
    db: Database,
    conn: Connection,
    query: str,
    sql: str,
    params: Mapping[str, Any] | None = None,
    size: int = 5000,
) -> Iterator[Sequence[Any]]:
    """One statement's rows, read a few thousand at a time; to be read whole inside the
    transaction. A first count of 200,000 series held as one list of rows left the
    allocator with about 80 MB it never gave back; a few thousand at a time it is a few MB."""
    with _cursor(db, conn, query, sql, params) as cursor:
        while chunk := cursor.fetchmany(size):
            yield from chunk


def fetch_tuples(
    db: Database, conn: Connection, query: str, sql: str, params: Mapping[str, Any] | None = None
) -> list[Sequence[Any]]:
    """One statement's rows, all at once (a steady count's few thousand rows, which the
    counter folds column by column)."""
    with _cursor(db, conn, query, sql, params) as cursor:
        return list(cursor.fetchall())


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


@dataclass(frozen=True)
class Fence:
    """Taken on PostgreSQL after the snapshot a count reads: an xid above every xid assigned
    so far, and the database's clock. Every transaction that could still hold an
    uncommitted key at or below the count's highest key started before ``at``, and has an
    xid below ``xid`` if it has one yet."""

    xid: int
    at: dt.datetime


@dataclass(frozen=True)
class Probe:
    """Taken on PostgreSQL before a count: which earlier fences all transactions have passed."""

    xmin: int
    """The oldest transaction id still running (pg_current_snapshot's xmin)."""
    oldest_start: dt.datetime | None
    """Start of the oldest open transaction of any client session but ours."""
    sees_all: bool
    """False when pg_stat_activity hides other roles' sessions (no pg_read_all_stats)."""

    def passed(self, fence: Fence) -> bool:
        if self.xmin <= fence.xid:
            return False
        return not self.sees_all or self.oldest_start is None or self.oldest_start > fence.at


PROBE_SQL = (
    "SELECT pg_snapshot_xmin(pg_current_snapshot())::text::bigint, "
    "(SELECT min(xact_start) FROM pg_stat_activity WHERE pid <> pg_backend_pid() "
    " AND backend_type = 'client backend'), "
    "NOT EXISTS (SELECT 1 FROM pg_stat_activity WHERE query = '<insufficient privilege>')"
)
FENCE_COLUMNS = "pg_current_xact_id()::text::bigint AS fence_xid, clock_timestamp() AS fence_at"
"""A Fence, as two columns. pg_current_xact_id() gives this read-only transaction an xid
(nothing is written): every xid assigned before it is lower."""


def fence_of(row: Sequence[Any]) -> Fence:
    return Fence(xid=int(row[0]), at=row[1])


def pg_probe(conn: Connection) -> Probe:
    """Which transactions are still open, for settling the message watermark. Taken before
    (in a statement of its own) the snapshot that checks what settles."""
    row = conn.execute(text(PROBE_SQL)).one()
    return Probe(xmin=int(row[0]), oldest_start=row[1], sees_all=bool(row[2]))


def pg_fenced(sql: str) -> str:
    """``sql`` (one row) with a Fence in front: 2 columns, then its own. Within one
    REPEATABLE READ transaction the fence is taken after the snapshot that every statement
    of it reads, which is all a fence needs (see ``Fence``)."""
    return f"SELECT {FENCE_COLUMNS}, inner_row.* FROM ({sql}) inner_row"
