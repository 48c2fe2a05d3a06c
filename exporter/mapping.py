"""Turns the configuration into immutable query specs: the SQL each metric runs.

Every spec reads all organizations at once, grouped by org and labels; never a
query per organization. The message statements are messages/sql.py's.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

from . import contract
from .config import Config, OrganizationsMapping, TableMapping
from .dialects import Dialect
from .labels import label_value
from .messages.sql import MessagesSql, messages_sql
from .sqltext import group_by, select_from, strip


@dataclass(frozen=True)
class GaugeSpec:
    """A resource count: rows of ``org, <labels...>, value``."""

    key: str
    metric: contract.Metric
    labels: tuple[str, ...]
    """The contract's labels less those dropped."""
    sql: str
    interval: float
    timeout: float

    def statements(self) -> tuple[str, ...]:
        return (self.sql,)


@dataclass(frozen=True)
class OrgSpec:
    """Rows of ``org, name, counting_since`` (the last may be NULL)."""

    key: str
    sql: str
    interval: float
    timeout: float

    def statements(self) -> tuple[str, ...]:
        return (self.sql,)


@dataclass(frozen=True)
class MessagesSpec:
    key: str
    labels: tuple[str, ...]
    sql: MessagesSql
    interval: float
    timeout: float

    def statements(self) -> tuple[str, ...]:
        return self.sql.statements()


Spec = GaugeSpec | OrgSpec | MessagesSpec


def shard_of(org: str, total: int) -> int:
    """The stable hash of an org id that picks its shard: the first 32 bits of its MD5."""
    return int(hashlib.md5(org.encode()).hexdigest()[:8], 16) % total  # noqa: S324 - not security


@dataclass(frozen=True)
class Shard:
    index: int = 0
    total: int = 1
    dialect: Dialect = field(default_factory=Dialect, compare=False, repr=False)
    """Whose SQL computes the same hash, where it can (``Dialect.shard_hash``). Rows are
    checked again in Python: each row, or, in a steady ``by_labels`` count, each org the
    first time it is met."""

    def owns(self, org: str) -> bool:
        return self.total == 1 or shard_of(org, self.total) == self.index

    @property
    def in_sql(self) -> bool:
        """Whether rows can be filtered per row in SQL (always, unsharded)."""
        return self.total == 1 or self.dialect.shard_hash("org", self.total) is not None

    def condition(self, org_expr: str) -> str | None:
        """This shard's rows in SQL, where the database can compute the hash."""
        if self.total == 1:
            return None
        digits = self.dialect.shard_hash(org_expr, self.total)
        return None if digits is None else f"{digits} = {self.index}"

    def mine(self, rows: Iterable[Sequence[Any]], null_orgs: list[int]) -> Iterator[Sequence[Any]]:
        """This shard's rows, org first (the SQL may have filtered already; this is exact
        everywhere). Rows whose org is NULL belong to no organization: skipped, counted in
        ``null_orgs[0]``."""
        everyone = self.total == 1
        for row in rows:
            org = row[0]
            if org is None:
                null_orgs[0] += 1
            elif everyone or self.owns(label_value(org)):
                yield row

    def having(self, org_expr: str) -> str:
        cond = self.condition(org_expr)
        return f" HAVING {cond}" if cond else ""


@dataclass(frozen=True)
class Specs:
    organizations: OrgSpec
    gauges: tuple[GaugeSpec, ...]
    messages: MessagesSpec
    shard: Shard

    def all(self) -> tuple[Spec, ...]:
        return (self.organizations, *self.gauges, self.messages)


def gauge_sql(mapping: TableMapping, labels: tuple[str, ...], shard: Shard) -> str:
    if mapping.query is not None:
        cols = ", ".join(["src.org AS org", *(f"src.{lb} AS {lb}" for lb in labels)])
        return (
            f"SELECT {cols}, sum(src.value) AS value FROM ({strip(mapping.query)}) src "
            + group_by(1 + len(labels))
            + shard.having("src.org")
        )
    assert mapping.table is not None and mapping.org is not None
    cols = ", ".join([f"{mapping.org} AS org", *(f"{mapping.labels[lb]} AS {lb}" for lb in labels)])
    where = [mapping.filter] if mapping.filter else []
    return (
        f"SELECT {cols}, {mapping.value} AS value "
        + select_from(mapping.table, mapping.joins, where)
        + " "
        + group_by(1 + len(labels))
        + shard.having(mapping.org)
    )


def organizations_sql(mapping: OrganizationsMapping, shard: Shard) -> str:
    if mapping.query is not None:
        cond = shard.condition("src.org")
        return (
            f"SELECT src.org AS org, src.name AS name, src.counting_since AS counting_since "
            f"FROM ({strip(mapping.query)}) src" + (f" WHERE {cond}" if cond else "")
        )
    assert mapping.table is not None and mapping.id is not None
    since = mapping.counting_since or "NULL"
    cond = shard.condition(mapping.id)
    where = [c for c in (mapping.filter, cond) if c]
    return (
        f"SELECT {mapping.id} AS org, {mapping.name} AS name, {since} AS counting_since "
        + select_from(mapping.table, [], where)
    )


def build_specs(config: Config, dialect: Dialect | None = None) -> Specs:
    """The query specs for a validated configuration, in ``dialect``'s SQL (by default,
    SQL that asks nothing of the database beyond the standard)."""
    dialect = dialect or Dialect()
    m, default = config.mapping, config.collection.interval
    shard = Shard(config.shard.index, config.shard.total, dialect)
    dropped = set(config.labels.drop)

    def kept(names: tuple[str, ...]) -> tuple[str, ...]:
        return tuple(n for n in names if n not in dropped)

    gauges = []
    for metric in contract.GAUGES:
        entry: TableMapping = getattr(m, metric.key)
        labels = kept(metric.labels)
        gauges.append(
            GaugeSpec(
                metric.key,
                metric,
                labels,
                gauge_sql(entry, labels, shard),
                entry.interval or default,
                config.statement_timeout(metric.key),
            )
        )
    msg_labels = kept(contract.MESSAGES.labels)
    msg = m.messages
    sql = messages_sql(msg, msg_labels, dialect, shard.condition, shard.in_sql)
    return Specs(
        organizations=OrgSpec(
            "organizations",
            organizations_sql(m.organizations, shard),
            m.organizations.interval or default,
            config.statement_timeout("organizations"),
        ),
        gauges=tuple(gauges),
        shard=shard,
        messages=MessagesSpec(
            "messages",
            msg_labels,
            sql,
            msg.interval or default,
            config.statement_timeout("messages"),
        ),
    )
