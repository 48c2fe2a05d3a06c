"""PostgreSQL through psycopg 3: read-only REPEATABLE READ transactions with a server-side
statement timeout, the shard hash and the steady count's org arrays in SQL, and fences
by transaction id (what settles the message watermark)."""

from __future__ import annotations

import datetime as dt
import os
import socket
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

from psycopg.abc import Buffer
from psycopg.adapt import Loader
from sqlalchemy import Connection, Engine, event, text

from .base import Dialect, Fence, Probe


@dataclass(frozen=True)
class XidFence(Fence):
    """Taken right after the snapshot a count reads: the next transaction id to be assigned
    (read, not assigned: nothing on a primary or a standby spends an xid on it), and the
    database's clock. Every transaction that could still hold an uncommitted key at or
    below the count's highest key started before ``at``, and has an xid below ``next_xid``
    if it had one by then."""

    next_xid: int
    at: dt.datetime


@dataclass(frozen=True)
class XidProbe(Probe):
    xmin: int
    """The oldest transaction id still running (pg_current_snapshot's xmin; on a standby,
    as replayed)."""
    oldest_start: dt.datetime | None
    """Start of the oldest open transaction of any other client session in this database
    (None on a standby, where the primary's sessions cannot be seen)."""
    sees_all: bool
    """False when pg_stat_activity hides other roles' sessions (no pg_read_all_stats) or
    does not show the writers at all (a standby): then only the xid check and time guard."""

    def passed(self, fence: Fence) -> bool:
        assert isinstance(fence, XidFence)
        if self.xmin < fence.next_xid:
            return False
        return not self.sees_all or self.oldest_start is None or self.oldest_start > fence.at


_HERE = "datname = current_database() AND pid <> pg_backend_pid()"
PROBE_SQL = (
    "SELECT pg_snapshot_xmin(pg_current_snapshot())::text::bigint, "
    "CASE WHEN NOT pg_is_in_recovery() THEN (SELECT min(xact_start) FROM pg_stat_activity "
    f" WHERE {_HERE} AND backend_type = 'client backend') END, "
    "NOT pg_is_in_recovery() AND NOT EXISTS (SELECT 1 FROM pg_stat_activity "
    f" WHERE {_HERE} AND query = '<insufficient privilege>')"
)
"""Which transactions are still open. Only this database's sessions can write its
messages, so the sessions half is scoped to it; the xid half is cluster-wide by nature."""

_XID_WRAP = 4294967296
FENCE_SQL = (
    f"SELECT ref.x + age((ref.x % {_XID_WRAP})::text::xid) AS fence_next_xid, "
    "clock_timestamp() AS fence_at "
    f"FROM (SELECT CASE WHEN xmax % {_XID_WRAP} < 3 THEN xmax - 3 ELSE xmax END AS x "
    "FROM (SELECT pg_snapshot_xmax(pg_current_snapshot())::text::bigint AS xmax) s) ref"
)
"""An XidFence, as two columns. ``age(xid)`` is the distance from the next xid to be
assigned (read once per transaction, after its snapshot) to ``xid``: added to a
reference at or below it (the snapshot's xmax, kept off the three special xids), it is
that next xid in full 64 bits, with no xid assigned."""

LAG_SQL = (
    "SELECT CASE WHEN NOT pg_is_in_recovery() THEN NULL "
    "WHEN pg_last_wal_receive_lsn() = pg_last_wal_replay_lsn() THEN 0 "
    "ELSE extract(epoch FROM now() - pg_last_xact_replay_timestamp()) END"
)
"""On a standby: 0 when it has replayed all it received, else the seconds since the last
transaction it replayed committed (postgres_exporter's pg_replication_lag). NULL on a
primary."""


class PostgreSQL(Dialect):
    name: ClassVar[str] = "postgresql"
    url_example: ClassVar[str] = "postgresql://user@host:5432/database"
    drivers: ClassVar[tuple[str, ...]] = ("psycopg",)
    org_arrays: ClassVar[bool] = True
    replicas: ClassVar[bool] = True
    concurrent_ranges: ClassVar[bool] = True

    def engine_args(self, connect_timeout: float, pool_size: int, prepared: bool) -> dict[str, Any]:
        args = super().engine_args(connect_timeout, pool_size, prepared)
        connect: dict[str, Any] = {
            "connect_timeout": max(1, round(connect_timeout)),
            "application_name": "convrs-exporter",
            # a dead peer or path is noticed in about 30 s, not in the OS's 15 min to hours
            "keepalives": 1,
            "keepalives_idle": 10,
            "keepalives_interval": 5,
            "keepalives_count": 3,
            "tcp_user_timeout": 30_000,
        }
        if not prepared:
            connect["prepare_threshold"] = None
        return {**args, "connect_args": connect}

    def prepare_engine(self, engine: Engine, timezone: str = "UTC") -> None:
        # first_connect runs SQLAlchemy's own set-up queries (server version) through it too
        event.listen(engine, "first_connect", _lenient_text, insert=True)
        event.listen(engine, "connect", _lenient_text, insert=True)

    def begin(self, conn: Connection, timeout: float, snapshot: bool, bulk: int = 0) -> None:
        """Each statement is planned for its own bounds (``force_custom_plan``), so that a
        full count never runs on a plan made for a few thousand rows. A bulk range groups
        every series in memory (``work_mem``: with the default 4MB, a range of 500,000 rows
        over 28,000 series sorted on disk, 3x slower). Read alone, it runs in parallel, as
        the planner does for a whole table but not, by its costs, for a range; read beside
        another range (the exporter's own parallelism), it runs in one process: two ranges
        in parallel plans gathered 1.25M rows each in 280 ms, two serial ones at once 2.5M
        rows in 340 ms (30M messages, 2 cores). For this transaction only."""
        level = "ISOLATION LEVEL REPEATABLE READ, " if snapshot else ""
        settings = ""
        if bulk == 1:
            settings = (
                "; SET LOCAL work_mem = '64MB'; SET LOCAL parallel_setup_cost = 0;"
                " SET LOCAL parallel_tuple_cost = 0"
            )
        elif bulk > 1:
            settings = (
                "; SET LOCAL work_mem = '64MB'; SET LOCAL max_parallel_workers_per_gather = 0"
            )
        conn.exec_driver_sql(
            f"SET TRANSACTION {level}READ ONLY; "
            f"SET LOCAL statement_timeout = {max(1, int(timeout * 1000))}; "
            f"SET LOCAL plan_cache_mode = force_custom_plan{settings}"
        )

    def cancel(self, driver_conn: Any) -> None:
        driver_conn.cancel()  # psycopg sends the server a cancel request

    def abort(self, driver_conn: Any) -> None:
        fd = os.dup(driver_conn.pgconn.socket)
        with socket.socket(fileno=fd) as sock:
            sock.shutdown(socket.SHUT_RDWR)

    def is_timeout(self, error: BaseException, message: str) -> bool:
        return getattr(error, "sqlstate", None) == "57014"

    def is_transient(self, error: BaseException, message: str) -> bool:
        """No SQLSTATE (the connection failed), or a class that passes: connection (08),
        resources (53), operator intervention (57), lock not available (55), rollback (40)."""
        state = getattr(error, "sqlstate", None)
        return state is None or state[:2] in ("08", "53", "57", "55", "40")

    def refused(self, error: BaseException, message: str) -> bool:
        return any(
            why in message
            for why in (
                "password authentication failed",
                "authentication failed for user",
                "no pg_hba.conf entry",
                "does not exist",  # the role or the database
                "password is required",
            )
        )

    def integer(self, expr: str) -> str:
        return f"CAST({expr} AS integer)"  # sum(integer) is a bigint, not a numeric

    def shard_hash(self, org_expr: str, total: int) -> str:
        digits = f"('x' || substr(md5(CAST({org_expr} AS text)), 1, 8))::bit(32)::bigint"
        return f"mod({digits}, {total})"

    def probe(self, conn: Connection) -> XidProbe:
        row = conn.execute(text(PROBE_SQL)).one()
        return XidProbe(xmin=int(row[0]), oldest_start=row[1], sees_all=bool(row[2]))

    def fenced(self, sql: str | None) -> str:
        """Within one REPEATABLE READ transaction the fence is read after the snapshot that
        every statement of it reads, which is all a fence needs (see ``XidFence``)."""
        inner = sql or "SELECT 1 AS one"
        return f"SELECT fence.*, inner_row.* FROM ({FENCE_SQL}) fence, ({inner}) inner_row"

    def split_fence(self, row: Sequence[Any]) -> tuple[Fence, Sequence[Any]]:
        return XidFence(next_xid=int(row[0]), at=row[1]), row[2:]

    def fence_to_json(self, fence: Fence) -> Any:
        assert isinstance(fence, XidFence)
        return {"next_xid": fence.next_xid, "at": fence.at.isoformat()}

    def fence_from_json(self, data: Any) -> Fence:
        if not isinstance(data, dict) or set(data) != {"next_xid", "at"}:
            raise ValueError("not a PostgreSQL fence")
        next_xid, at = data["next_xid"], dt.datetime.fromisoformat(data["at"])
        if type(next_xid) is not int or next_xid < 0 or at.tzinfo is None:
            raise ValueError("not a PostgreSQL fence")
        return XidFence(next_xid, at)

    def replication_lag(self, conn: Connection) -> float | None:
        lag = conn.execute(text(LAG_SQL)).scalar()
        return None if lag is None else float(lag)


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
