"""SQLite (the embedded demo): read-only by pragma, a client-side deadline, no fences.

pysqlite starts no transaction for reads, so each statement reads the newest data;
the counts stay exact (a late row changes a batch's checksum, and it is recounted)."""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, ClassVar

from sqlalchemy import Connection, Engine, event

from .base import Dialect


class SQLite(Dialect):
    name: ClassVar[str] = "sqlite"
    url_example: ClassVar[str] = "sqlite:///path/to/file.db"
    drivers: ClassVar[tuple[str, ...]] = ("pysqlite",)

    def engine_args(self, connect_timeout: float, pool_size: int, prepared: bool) -> dict[str, Any]:
        return {
            "connect_args": {"check_same_thread": False, "timeout": connect_timeout},
        }

    def prepare_engine(self, engine: Engine, timezone: str = "UTC") -> None:
        event.listen(engine, "connect", _read_only)

    @contextmanager
    def deadline(self, conn: Connection, seconds: float) -> Iterator[None]:
        """No server-side timeout: interrupt the statement from a progress handler."""
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

    def cancel(self, driver_conn: Any) -> None:
        driver_conn.interrupt()

    def abort(self, driver_conn: Any) -> None:
        driver_conn.interrupt()  # a file: nothing stalls but the statement

    def is_timeout(self, error: BaseException, message: str) -> bool:
        return message == "interrupted"

    def is_transient(self, error: BaseException, message: str) -> bool:
        return message == "interrupted" or "locked" in message or "unable to open" in message


def _read_only(dbapi_conn: sqlite3.Connection, _record: object) -> None:
    dbapi_conn.execute("PRAGMA query_only = ON")
