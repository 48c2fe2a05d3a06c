"""The exporter's exceptions.

ExporterError
├── ConfigError        a configuration that cannot run; the CLI exits 2 with one line
└── QueryError         a metric's query failed; counted, logged, collection goes on
    └── QueryTimeout   ... because the statement timeout cut it
"""

from __future__ import annotations


class ExporterError(Exception):
    """Base of everything the exporter raises on purpose."""


class ConfigError(ExporterError):
    """A configuration problem: where it is (file and key) and what is wrong."""

    def __init__(self, message: str, *, source: str | None = None, key: str | None = None):
        self.message = message
        self.source = source
        self.key = key
        super().__init__(self.line())

    def line(self) -> str:
        """The single line printed before exiting with status 2."""
        where = ": ".join(part for part in (self.source, self.key) if part)
        return f"{where}: {self.message}" if where else self.message


class QueryError(ExporterError):
    """A metric's query failed; `query` names the metric."""

    def __init__(self, query: str, message: str, transient: bool = False):
        self.query = query
        self.message = message
        self.transient = transient
        """It may pass by itself (a timeout, a lock, a lost connection): not the mapping's
        fault, even when the database answered."""
        super().__init__(f"could not collect {query}: {message}")


class QueryTimeout(QueryError):
    """The statement timeout ended the query."""

    def __init__(self, query: str, message: str):
        super().__init__(query, message, transient=True)
