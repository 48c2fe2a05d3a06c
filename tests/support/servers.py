"""The database servers the counting tests run on, behind one face: PostgreSQL (15, at
127.0.0.1:5432, user postgres) and MariaDB (10.11, at 127.0.0.1:3306, root without a
password), both started by ``make test``. Each test gets a throwaway database and, where it
asks, a read-only user of its own; both are dropped afterwards."""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Protocol

import psycopg
import pymysql
from sqlalchemy import Engine, create_engine, text

from tests.support import pg

MARIADB_ADMIN = {"host": "127.0.0.1", "port": 3306, "user": "root", "password": ""}


class Writer(Protocol):
    """A client's own connection, in a transaction until it commits or rolls back (the
    platform's writers, whose commits arrive in any order)."""

    def execute(self, sql: str, params: Sequence[Any] = ()) -> Any: ...
    def commit(self) -> None: ...
    def rollback(self) -> None: ...
    def close(self) -> None: ...


class _MariaDBWriter:
    def __init__(self, database: str) -> None:
        self.conn = pymysql.connect(**MARIADB_ADMIN, database=database, autocommit=False)

    def execute(self, sql: str, params: Sequence[Any] = ()) -> Any:
        cur = self.conn.cursor()
        cur.execute(sql, tuple(params))
        return cur

    def commit(self) -> None:
        self.conn.commit()

    def rollback(self) -> None:
        self.conn.rollback()

    def close(self) -> None:
        self.conn.close()


@dataclass(frozen=True)
class Server:
    name: str

    def __str__(self) -> str:
        return self.name

    @contextmanager
    def database(self) -> Iterator[str]:
        """A fresh database; its URL (as the admin user); dropped afterwards."""
        if self.name == "postgresql":
            with pg.throwaway_database() as url:
                yield url
            return
        name = f"convrs_test_{uuid.uuid4().hex[:12]}"
        _mariadb(f"CREATE DATABASE `{name}`")
        try:
            yield f"mysql+pymysql://root@127.0.0.1:3306/{name}"
        finally:
            _drop_mariadb_database(name)

    def engine(self, url: str) -> Engine:
        return create_engine(url, pool_size=2)

    def writer(self, engine: Engine) -> Writer:
        database = engine.url.database
        assert database
        if self.name == "postgresql":
            dsn = f"host=127.0.0.1 port=5432 user=postgres dbname={database}"
            conn: Writer = psycopg.connect(dsn)
            return conn
        return _MariaDBWriter(database)

    @contextmanager
    def reader(self, engine: Engine, sees_others: bool) -> Iterator[str]:
        """A read-only user of this database, its URL; ``sees_others``: one that may read
        other sessions' transactions (PostgreSQL: pg_read_all_stats, as pg_monitor grants;
        MariaDB: PROCESS). Dropped afterwards."""
        user = f"exporter_{uuid.uuid4().hex[:8]}"
        database = engine.url.database
        if self.name == "postgresql":
            with engine.begin() as conn:
                conn.execute(text(f"CREATE ROLE {user} LOGIN"))
                conn.execute(text(f"GRANT SELECT ON ALL TABLES IN SCHEMA public TO {user}"))
                if sees_others:
                    conn.execute(text(f"GRANT pg_read_all_stats TO {user}"))
            try:
                yield engine.url.set(username=user).render_as_string(hide_password=False)
            finally:
                with engine.begin() as conn:
                    conn.execute(text(f"DROP OWNED BY {user}"))
                    conn.execute(text(f"DROP ROLE {user}"))
            return
        _mariadb(f"CREATE USER '{user}'@'%' IDENTIFIED BY 'pw-{user}'")
        _mariadb(f"GRANT SELECT ON `{database}`.* TO '{user}'@'%'")
        if sees_others:
            _mariadb(f"GRANT PROCESS ON *.* TO '{user}'@'%'")
        try:
            yield engine.url.set(username=user, password=f"pw-{user}").render_as_string(
                hide_password=False
            )
        finally:
            _mariadb(f"DROP USER IF EXISTS '{user}'@'%'")


POSTGRESQL = Server("postgresql")
MARIADB = Server("mariadb")
SERVERS = (POSTGRESQL, MARIADB)


def _mariadb(sql: str) -> None:
    conn = pymysql.connect(**MARIADB_ADMIN, autocommit=True)
    try:
        with conn.cursor() as cur:
            cur.execute(sql)
    finally:
        conn.close()


def _drop_mariadb_database(name: str) -> None:
    """As PostgreSQL's DROP DATABASE ... WITH (FORCE): the sessions still in it (a failed
    test's open writers hold metadata locks) are killed first."""
    conn = pymysql.connect(**MARIADB_ADMIN, autocommit=True)
    try:
        with conn.cursor() as cur:
            cur.execute(
                "SELECT id FROM information_schema.processlist WHERE db = %s AND id <> "
                "CONNECTION_ID()",
                (name,),
            )
            for (session,) in cur.fetchall():
                with contextlib.suppress(pymysql.MySQLError):  # it may have ended by now
                    cur.execute(f"KILL {int(session)}")
            cur.execute(f"DROP DATABASE IF EXISTS `{name}`")
    finally:
        conn.close()
