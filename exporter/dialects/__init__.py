"""One seam per database, chosen once from the URL (``dialect_for``)."""

from __future__ import annotations

from sqlalchemy.engine import URL

from ..errors import ConfigError
from .base import NO_FENCE, TIME_ONLY, Dialect, Fence, Probe
from .mysql import MySQL
from .postgresql import PostgreSQL
from .sqlite import SQLite

SUPPORTED: tuple[Dialect, ...] = (PostgreSQL(), MySQL(), SQLite())

__all__ = ["NO_FENCE", "SUPPORTED", "TIME_ONLY", "Dialect", "Fence", "Probe", "dialect_for"]


def supported_list() -> str:
    return ", ".join(f"{d.name} ({d.url_example})" for d in SUPPORTED)


def dialect_for(url: URL) -> Dialect:
    """The dialect of a parsed URL; ConfigError (exit 2) for one the exporter does not
    support, naming those it does."""
    backend, _, driver = url.drivername.partition("+")  # without loading SQLAlchemy's dialect
    for dialect in SUPPORTED:
        if backend not in (dialect.name, *dialect.aliases):
            continue
        if driver and driver not in dialect.drivers:
            raise ConfigError(
                f"driver {driver!r} is not supported for {backend}; "
                f"use {backend}+{dialect.drivers[0]}:// (or {backend}://)",
                key="database.url",
            )
        return dialect
    raise ConfigError(
        f"database {backend!r} is not supported; supported: {supported_list()}",
        key="database.url",
    )
