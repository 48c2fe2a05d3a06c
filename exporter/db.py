"""Database access: engine factory, read-only transactions with a statement timeout, reads.

The exporter never writes to the platform's database: every transaction is read-only
and every statement is bounded by the statement timeout; how, is the dialect's
(``dialects/``), chosen once from the URL.
"""

from __future__ import annotations

import datetime as dt
import re
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import Connection, Engine, create_engine, text
from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import ArgumentError, DBAPIError, NoSuchModuleError, SQLAlchemyError

from .dialects import Dialect, dialect_for
from .errors import ConfigError, QueryError, QueryTimeout
from .labels import zone

_USERINFO = re.compile(r"(://[^:/@\s]*:)([^@\s]*)(@)")


def redact_url_text(url: str) -> str:
    """Hide the password of a URL given as text, even one that does not parse."""
    return _USERINFO.sub(r"\1***\3", url)


def parse_url(raw: str) -> URL:
    """Parse and normalise a database URL: a plain one (``postgresql://``, ``mysql://``)
    names the dialect's tested driver. ConfigError for a database not supported."""
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
    parts = [url.username, url.password, url.host, url.database]
    parts += [v for vs in url.query.values() for v in ((vs,) if isinstance(vs, str) else vs)]
    if any("\x00" in p for p in parts if p):
        # libpq stops reading at a NUL: the rest (host, port, sslmode) would be dropped
        raise ConfigError("the URL holds a NUL character (%00)", key="database.url")
    if url.drivername == "postgres":
        url = url.set(drivername="postgresql")
    backend, _, driver = url.drivername.partition("+")
    dialect = dialect_for(url)  # refuses what is not supported, naming what is
    if not driver:  # postgresql:// means psycopg 3, mysql:// and mariadb:// PyMySQL
        url = url.set(drivername=f"{backend}+{dialect.drivers[0]}")
    return url


_SECRET_PARAM = re.compile(r"pass|secret|token|key", re.IGNORECASE)
"""Query parameters that may hold a secret (password, sslpassword, ...): never shown."""


def url_secrets(url: URL) -> list[str]:
    """Every part of a URL that is a secret: the password, wherever it is given."""
    found = [url.password] if url.password else []
    for name, values in url.query.items():
        if _SECRET_PARAM.search(name):
            found += [values] if isinstance(values, str) else list(values)
    return [s for s in found if s]


def redact(url: URL) -> str:
    """A URL to show: the password and secret query parameters as ***."""
    query = {
        name: ("***" if _SECRET_PARAM.search(name) else values)
        for name, values in url.query.items()
    }
    text = url.set(query=query).render_as_string(hide_password=True)
    return text.replace("%2A%2A%2A", "***")  # as the query renders it


@dataclass(frozen=True)
class Database:
    engine: Engine
    dialect: Dialect
    statement_timeout: float
    secrets: list[str] = field(repr=False)
    """The password (wherever the URL gives it), kept only to scrub it from any message that
    might echo it."""
    timezone: dt.tzinfo = dt.UTC
    """The zone of timestamps the database gives without one (``database.timezone``)."""

    def describe(self) -> str:
        return redact(self.engine.url)

    def close(self) -> None:
        self.engine.dispose()


def connect(
    raw_url: str,
    *,
    statement_timeout: float,
    connect_timeout: float,
    pool_size: int,
    prepared_statements: bool = True,
    timezone: str = "UTC",
) -> Database:
    """An engine with a small bounded pool; connections are opened lazily."""
    url = parse_url(raw_url)
    dialect = dialect_for(url)
    try:
        engine = create_engine(
            url, **dialect.engine_args(connect_timeout, pool_size, prepared_statements)
        )
    except (NoSuchModuleError, ArgumentError, ImportError) as exc:
        if isinstance(exc, ImportError) and dialect.install:
            raise ConfigError(
                f"the {url.get_backend_name()} driver is not installed: {dialect.install}",
                key="database.url",
            ) from None
        raise ConfigError(
            f"cannot load the {dialect.name} driver: {type(exc).__name__}", key="database.url"
        ) from None
    dialect.prepare_engine(engine, timezone)
    return Database(engine, dialect, statement_timeout, url_secrets(url), zone(timezone))


@contextmanager
def connection(
    db: Database, on_connect: Callable[[Any], None] = lambda _: None
) -> Iterator[Connection]:
    """A pooled connection, checked with a ``SELECT 1`` (after ``on_connect`` is told its
    driver connection, so that a watchdog can cut it off if even that hangs: SQLAlchemy's
    own pre-ping runs where no one can reach it). A connection the check finds dead is
    discarded and one new one tried."""
    for attempt in (1, 2):
        conn = db.engine.connect()
        try:
            on_connect(conn.connection.driver_connection)
            conn.exec_driver_sql("SELECT 1")
            conn.commit()  # not a rollback: psycopg would forget its prepared statements
        except SQLAlchemyError:
            conn.invalidate()
            conn.close()
            if attempt == 2:
                raise
            continue
        try:
            yield conn
        finally:
            conn.close()
        return


@contextmanager
def read_only(
    db: Database,
    conn: Connection,
    snapshot: bool = False,
    timeout: float | None = None,
    bulk: int = 0,
) -> Iterator[Connection]:
    """One read-only transaction bounded by the statement timeout (``timeout``, else the
    database's); with ``snapshot`` every statement reads one snapshot where the database
    can (``Dialect.begin``).

    It ends with COMMIT, or ROLLBACK on an error: the database refuses writes in it, so
    the two end it alike, but psycopg forgets its prepared statements at every rollback.
    Kept, the statements each collection repeats are parsed once per connection (the
    probe's view of pg_stat_activity took 1.3 ms to parse and plan, 0.1 ms to run)."""
    with conn.begin():  # commits on leaving, rolls back on an exception
        db.dialect.begin(conn, timeout or db.statement_timeout, snapshot, bulk)
        yield conn


def _errors(db: Database) -> tuple[type[BaseException], ...]:
    """What reading rows straight from the driver's cursor can raise: SQLAlchemy's errors
    and the driver's own (SQLite's "interrupted" at the deadline, for one)."""
    driver = getattr(db.engine.dialect, "loaded_dbapi", None)
    return (SQLAlchemyError, driver.Error) if driver is not None else (SQLAlchemyError,)


@dataclass(frozen=True)
class Reader:
    """Reads for one query (a metric): its name in errors, its statement timeout."""

    db: Database
    query: str
    timeout: float

    def read_only(
        self, conn: Connection, snapshot: bool = False, bulk: int = 0
    ) -> AbstractContextManager[Any]:
        return read_only(self.db, conn, snapshot, self.timeout, bulk)

    @contextmanager
    def _cursor(
        self, conn: Connection, sql: str, params: Mapping[str, Any] | None
    ) -> Iterator[Any]:
        """Run one statement; the driver's cursor to read its rows from (as the driver's own
        tuples, without SQLAlchemy's row objects), or QueryError naming the query."""
        try:
            with self.db.dialect.deadline(conn, self.timeout):
                result = conn.execute(text(sql), dict(params or {}))
                try:
                    yield result.cursor
                finally:
                    result.close()
        except _errors(self.db) as exc:
            raise classify(self.db, self.query, exc, self.timeout) from None

    def stream(
        self, conn: Connection, sql: str, params: Mapping[str, Any] | None = None, size: int = 5000
    ) -> Iterator[Sequence[Any]]:
        """One statement's rows, read a few thousand at a time; to be read whole inside the
        transaction. A first count of 200,000 series held as one list of rows left the
        allocator with about 80 MB it never gave back; a few thousand at a time, a few MB."""
        with self._cursor(conn, sql, params) as cursor:
            yield from _chunks(cursor, size)

    @contextmanager
    def timed(
        self, conn: Connection, sql: str, params: Mapping[str, Any]
    ) -> Iterator[tuple[Iterator[Sequence[Any]], float]]:
        """One statement run until its result has arrived, then its rows (read a few
        thousand at a time, inside the block) and the seconds it took: what the statement
        timeout bounds, not the rows' conversion."""
        began = time.monotonic()
        with self._cursor(conn, sql, params) as cursor:
            yield _chunks(cursor, 5000), time.monotonic() - began

    def fetch(
        self, conn: Connection, sql: str, params: Mapping[str, Any] | None = None
    ) -> list[Sequence[Any]]:
        """One statement's rows, all at once (a steady count's few thousand rows)."""
        with self._cursor(conn, sql, params) as cursor:
            return list(cursor.fetchall())

    def fail(self, exc: BaseException) -> QueryError:
        return classify(self.db, self.query, exc, self.timeout)


def _chunks(cursor: Any, size: int) -> Iterator[Sequence[Any]]:
    while chunk := cursor.fetchmany(size):
        yield from chunk


def classify(
    db: Database, query: str, exc: BaseException, timeout: float | None = None
) -> QueryError:
    """A short, secret-free error for a failed statement."""
    orig = exc.orig if isinstance(exc, DBAPIError) else exc
    message = (str(orig).strip().splitlines() or [type(orig).__name__])[0]
    for secret in db.secrets:
        message = message.replace(secret, "***")
    if orig is not None and db.dialect.is_timeout(orig, message):
        seconds = timeout or db.statement_timeout
        return QueryTimeout(query, f"statement timeout ({seconds:g}s) exceeded")
    transient = orig is None or db.dialect.is_transient(orig, message)
    return QueryError(query, message, transient=transient)


def refused(db: Database, exc: BaseException) -> str | None:
    """Why the database refused a connection (credentials, a missing role or database),
    secret-free; None when it did not answer or failed otherwise."""
    orig = exc.orig if isinstance(exc, DBAPIError) else exc
    message = classify(db, "database", exc).message
    return message if orig is not None and db.dialect.refused(orig, message) else None
