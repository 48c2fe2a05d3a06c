"""What ``--config.check`` shows against a database that answers, before anything is
deployed: the label values the mapping yields, sampled and held against the contract's
closed sets (a wrong value is a configuration error), and each organization's cards as
the platform's page shows them, from one collection run as the exporter would run it."""

from __future__ import annotations

from sqlalchemy import Connection

from . import contract
from .assembly import assemble
from .cards import OrgCards, organization_cards
from .config import Config
from .db import Database, Reader, connection
from .errors import ConfigError
from .labels import label_value
from .mapping import Specs
from .messages.collector import read_bounds
from .messages.sql import KeyRange

SAMPLE_KEYS = 100_000
"""The newest messages' keys whose label values are sampled (an index range: cheap on a
table of any size)."""


def check_label_values(db: Database, specs: Specs) -> int:
    """Every label value a closed label's expression yields (the gauges' whole result, the
    newest messages), against the contract; ConfigError naming the metric, the label and
    the value. Returns how many distinct sets of label values were checked."""
    seen = 0
    with connection(db) as conn:
        for spec in specs.gauges:
            if not spec.metric.allowed:
                continue
            reader = Reader(db, spec.key, spec.timeout)
            with reader.read_only(conn):
                rows = reader.fetch(conn, spec.sql)
            seen += _check(spec.key, spec.metric, spec.labels, {tuple(r[1:-1]) for r in rows})
        messages = specs.messages
        reader = Reader(db, messages.key, messages.timeout)
        keys = _newest(conn, reader, messages.sql.bounds)
        if keys is not None:
            with reader.read_only(conn):
                rows = reader.fetch(conn, messages.sql.per_series, keys.params())
            width = len(messages.labels)
            values = {tuple(r[1 : 1 + width]) for r in rows}
            seen += _check(messages.key, contract.MESSAGES, messages.labels, values)
    return seen


def _newest(conn: Connection, reader: Reader, bounds: str) -> KeyRange | None:
    low, high = read_bounds(reader, conn, bounds)
    if low is None or high is None:
        return None
    return KeyRange(max(low - 1, high - SAMPLE_KEYS), high)


def _check(
    key: str, metric: contract.Metric, labels: tuple[str, ...], rows: set[tuple[object, ...]]
) -> int:
    for row in sorted(tuple(map(label_value, r)) for r in rows):  # the first wrong, by value
        values = dict(zip(labels, row, strict=True))
        wrong = contract.unexpected(metric, values)
        if wrong is not None:
            label, value, allowed = wrong
            raise ConfigError(
                f"the {label} label yields {value!r}; {metric.name} allows {allowed}",
                key=f"mapping.{key}",
            )
    return len(rows)


def cards_now(config: Config, db: Database, specs: Specs) -> list[OrgCards]:
    """One collection, as the exporter would run it (the first count to its end)."""
    running = assemble(config, db, specs)
    while True:
        ok = running.collection.run()
        if running.collection.counter.ready or not ok:
            break
    return organization_cards(specs, running.collection.snapshot())
