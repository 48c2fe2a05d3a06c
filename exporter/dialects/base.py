"""What differs per database, as the questions collection and counting ask, with the
answers a database that needs nothing special gives. One module per database answers
them its own way; the rest of the exporter never asks which database it is on."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any, ClassVar

from sqlalchemy import Connection, Engine


class Fence:
    """Taken with a count: what must have ended before the rows it counted are final.
    The base fence asks for nothing but time (``settle_after``)."""


class Probe:
    """Taken before a count: which earlier fences every transaction has passed."""

    def passed(self, fence: Fence) -> bool:
        return True


NO_FENCE = Fence()
TIME_ONLY = Probe()


class Dialect:
    """One database's answers. Subclasses override what differs."""

    name: ClassVar[str] = ""
    """SQLAlchemy's backend name (``postgresql``, ``sqlite``, ``mysql``)."""
    aliases: ClassVar[tuple[str, ...]] = ()
    """Other backend names it answers for (``mariadb``)."""
    url_example: ClassVar[str] = ""
    drivers: ClassVar[tuple[str, ...]] = ()
    """The drivers it is tested with; the first is the default for a plain URL."""
    install: ClassVar[str] = ""
    """What to install when the driver is missing (an optional dependency)."""
    org_arrays: ClassVar[bool] = False
    """Whether a steady count may group by label values with the orgs as an array
    (``org_array``, read back by ``org_lists``)."""
    replicas: ClassVar[bool] = False
    """Whether the database may be a read replica (``replication_lag`` asks it)."""

    # --- connecting ------------------------------------------------------------------

    def engine_args(self, connect_timeout: float, pool_size: int, prepared: bool) -> dict[str, Any]:
        """Keyword arguments for ``create_engine`` (``connect_args`` among them)."""
        return {  # no pool_pre_ping: db.connection() checks each connection, watched
            "pool_size": pool_size,
            "max_overflow": 0,
            "pool_timeout": connect_timeout,
            # the connection returned last is taken next: collections keep to one (its
            # prepared statements), the second is used only to read ranges beside it
            "pool_use_lifo": True,
        }

    def prepare_engine(self, engine: Engine, timezone: str = "UTC") -> None:
        """Event listeners on a new engine (``timezone``: ``database.timezone``, the zone of
        naive timestamps, for a database whose sessions convert some to theirs)."""

    # --- reading ---------------------------------------------------------------------

    concurrent_ranges: ClassVar[bool] = False
    """Whether a count in ranges may read two ranges at once, on two connections."""

    def begin(self, conn: Connection, timeout: float, snapshot: bool, bulk: int = 0) -> None:
        """First statement of a read-only transaction bounded by ``timeout`` seconds;
        with ``snapshot`` every statement of it reads one snapshot, where it can; ``bulk``:
        it groups a large range of rows (a first count's or a reconciliation's), one of
        ``bulk`` such ranges read at once (0: not such a range)."""

    @contextmanager
    def deadline(self, conn: Connection, seconds: float) -> Iterator[None]:
        """Around one statement, for a database that cannot bound it on the server."""
        yield

    def cancel(self, driver_conn: Any) -> None:
        """Stop the statement running on ``driver_conn``, from another thread."""

    def abort(self, driver_conn: Any) -> None:
        """Cut ``driver_conn`` off from another thread, when the database no longer answers
        (a stalled network: a cancel request would stall too). Its read fails at once."""

    def is_timeout(self, error: BaseException, message: str) -> bool:
        """Whether a driver error is the statement timeout (or ``deadline``) firing."""
        return False

    def is_transient(self, error: BaseException, message: str) -> bool:
        """Whether a failed statement may succeed as it is later (a lock, a lost
        connection): not a sign of a wrong mapping."""
        return False

    def refused(self, error: BaseException, message: str) -> bool:
        """Whether a failed connection was refused by the database itself (credentials,
        a missing role or database): a configuration error, not an outage."""
        return False

    # --- SQL -------------------------------------------------------------------------

    def integer(self, expr: str) -> str:
        """``expr`` as an integer whose ``sum()`` is an integer too."""
        return expr

    def org_array(self, org_expr: str) -> str:
        """The aggregate that gathers a group's orgs into one value (``org_arrays``)."""
        return f"array_agg({org_expr})"

    def org_lists(self, rows: list[Sequence[Any]], at: int) -> list[Sequence[Any]] | None:
        """Rows whose column ``at`` holds ``org_array`` values, with those as lists; None
        when some could not be read this time (cut short): this count is then read per
        series."""
        return rows

    def shard_hash(self, org_expr: str, total: int) -> str | None:
        """SQL for ``mapping.shard_of(org, total)``, or None where it cannot be computed."""
        return None

    # --- settling --------------------------------------------------------------------

    def probe(self, conn: Connection) -> Probe:
        """Which transactions are still open: in a transaction of its own (with a
        snapshot) before the count's."""
        return TIME_ONLY

    def replication_lag(self, conn: Connection) -> float | None:
        """Seconds a read replica is behind its primary; None on a primary. Run in a
        read-only transaction of its own."""
        return None

    def fenced(self, sql: str | None) -> str | None:
        """``sql`` (one row, or None for no statement) with the fence's columns in front."""
        return sql

    def split_fence(self, row: Sequence[Any]) -> tuple[Fence, Sequence[Any]]:
        """A fenced row: the fence, and the inner statement's columns."""
        return NO_FENCE, row

    def fence_to_json(self, fence: Fence) -> Any:
        """A fence as JSON, for the state file."""
        return None

    def fence_from_json(self, data: Any) -> Fence:
        """``fence_to_json`` undone; ValueError for what it did not write."""
        if data is not None:
            raise ValueError(f"not a fence of {self.name or 'this database'}")
        return NO_FENCE
