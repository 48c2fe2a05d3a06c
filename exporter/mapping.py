"""Turns the configuration into immutable query specs: the SQL each metric runs.

Every spec reads all organizations at once, grouped by org and labels; never a
query per organization. Group-by is positional (``GROUP BY 1, 2``) so that a
label given as a long CASE expression is written once.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

from .config import REQUIRED_LABELS, Config, MessagesMapping, OrganizationsMapping, TableMapping

#: metric key -> (exported name, help text)
METRICS: dict[str, tuple[str, str]] = {
    "bots": ("convrs_bots", "Chatbots configured, by channel."),
    "agents": ("convrs_agents", "Agent accounts, by status (active, disabled)."),
    "flows": ("convrs_flows", "Chatbot flows."),
    "users": ("convrs_users", "Customers or contacts who interacted with the chatbots."),
}
MESSAGES_METRIC = "convrs_messages"
MESSAGES_HELP = (
    "Messages, inbound (from users) and outbound (from agents, bots and the "
    "system); created is when counting began."
)
SINCE_METRIC = "convrs_messages_counting_since_timestamp_seconds"
SINCE_HELP = "When message counting began for the organization and direction (Unix seconds)."
ORG_INFO_METRIC = "convrs_org_info"
ORG_INFO_HELP = "Organization display names, always 1; join on org."


@dataclass(frozen=True)
class GaugeSpec:
    """A resource count: rows of ``org, <labels...>, value``."""

    key: str
    metric: str
    help: str
    labels: tuple[str, ...]
    sql: str
    interval: float

    def statements(self) -> tuple[str, ...]:
        return (self.sql,)


@dataclass(frozen=True)
class OrgSpec:
    """Rows of ``org, name, counting_since`` (the last may be NULL)."""

    key: str
    sql: str
    interval: float

    def statements(self) -> tuple[str, ...]:
        return (self.sql,)


@dataclass(frozen=True)
class MessagesSpec:
    """The statements that count messages past a watermark (see counting.py).

    - ``sql``: the full shape, per series over keys in (``:after``, ``:upto``]: rows
      ``org, <labels...>, n, first_ts, max_key, checksum``. The first count, a recount of
      the tail, and reconciliation.
    - ``counts_sql``: the same range, rows ``org, <labels...>, n, checksum`` (the new rows).
    - ``by_labels_sql``: the same count, one row per set of label values: ``<labels...>,
      orgs, n, checksum`` with ``orgs`` the org of every row, as an array (PostgreSQL,
      where any shard is filtered in SQL; else None). A steady count reads this one: a
      few dozen rows, not one per series, so that no Python object is made per series.
    - ``summary_sql``: one row: the tail's rows (keys in (``:after``, ``:seen``]), their
      checksum, and the highest key above ``:seen``. None where the shard cannot be
      filtered per row in SQL: the tail is then recounted every time.
    - ``since_sql``: ``org, direction, first_ts`` over (``:after``, ``:upto``], for
      (org, direction) pairs seen for the first time.
    """

    key: str
    labels: tuple[str, ...]
    sql: str
    interval: float
    counts_sql: str = ""
    by_labels_sql: str | None = None
    summary_sql: str | None = None
    since_sql: str = ""

    @property
    def steady_sql(self) -> str:
        """What a steady count of the new rows runs."""
        return self.by_labels_sql or self.counts_sql

    def statements(self) -> tuple[str, ...]:
        every = (self.sql, self.counts_sql, self.by_labels_sql, self.summary_sql, self.since_sql)
        return tuple(s for s in every if s)


Spec = GaugeSpec | OrgSpec | MessagesSpec


@dataclass(frozen=True)
class Specs:
    organizations: OrgSpec
    gauges: tuple[GaugeSpec, ...]
    messages: MessagesSpec
    shard: Shard

    def all(self) -> tuple[Spec, ...]:
        return (self.organizations, *self.gauges, self.messages)


def shard_of(org: str, total: int) -> int:
    """The stable hash of an org id that picks its shard: the first 32 bits of its MD5."""
    return int(hashlib.md5(org.encode()).hexdigest()[:8], 16) % total  # noqa: S324 - not security


@dataclass(frozen=True)
class Shard:
    index: int = 0
    total: int = 1
    pushdown: bool = False
    """Whether the SQL filters on the shard (PostgreSQL). Rows are checked again in Python:
    each row, or, in a steady ``by_labels`` count, each org the first time it is met."""

    def owns(self, org: str) -> bool:
        return self.total == 1 or shard_of(org, self.total) == self.index

    def condition(self, org_expr: str) -> str | None:
        """The same hash in SQL, where the database can compute it."""
        if self.total == 1 or not self.pushdown:
            return None
        digits = f"('x' || substr(md5(CAST({org_expr} AS text)), 1, 8))::bit(32)::bigint"
        return f"mod({digits}, {self.total}) = {self.index}"

    def having(self, org_expr: str) -> str:
        cond = self.condition(org_expr)
        return f" HAVING {cond}" if cond else ""


def _strip(sql: str) -> str:
    return sql.strip().rstrip(";").strip()


def _from(table: str, joins: list[str], conditions: list[str]) -> str:
    parts = [f"FROM {table}", *joins]
    if conditions:
        parts.append("WHERE " + " AND ".join(f"({c})" for c in conditions))
    return " ".join(parts)


def _group_by(count: int) -> str:
    return "GROUP BY " + ", ".join(str(i) for i in range(1, count + 1))


def gauge_sql(mapping: TableMapping, labels: tuple[str, ...], shard: Shard = Shard()) -> str:
    if mapping.query is not None:
        cols = ", ".join(["src.org AS org", *(f"src.{lb} AS {lb}" for lb in labels)])
        return (
            f"SELECT {cols}, sum(src.value) AS value FROM ({_strip(mapping.query)}) src "
            + _group_by(1 + len(labels))
            + shard.having("src.org")
        )
    assert mapping.table is not None and mapping.org is not None
    cols = ", ".join([f"{mapping.org} AS org", *(f"{mapping.labels[lb]} AS {lb}" for lb in labels)])
    where = [mapping.filter] if mapping.filter else []
    return (
        f"SELECT {cols}, {mapping.value} AS value "
        + _from(mapping.table, mapping.joins, where)
        + " "
        + _group_by(1 + len(labels))
        + shard.having(mapping.org)
    )


def organizations_sql(mapping: OrganizationsMapping, shard: Shard = Shard()) -> str:
    if mapping.query is not None:
        cond = shard.condition("src.org")
        return (
            f"SELECT src.org AS org, src.name AS name, src.counting_since AS counting_since "
            f"FROM ({_strip(mapping.query)}) src" + (f" WHERE {cond}" if cond else "")
        )
    assert mapping.table is not None and mapping.id is not None
    since = mapping.counting_since or "NULL"
    cond = shard.condition(mapping.id)
    where = [c for c in (mapping.filter, cond) if c]
    return (
        f"SELECT {mapping.id} AS org, {mapping.name} AS name, {since} AS counting_since "
        + _from(mapping.table, [], where)
    )


CHECKSUM_MODULUS = 1_000_003
"""Keys are summed modulo this prime: a checksum that stays a small integer."""


def messages_specs(
    mapping: MessagesMapping,
    labels: tuple[str, ...],
    interval: float,
    shard: Shard = Shard(),
    dialect: str = "",
) -> MessagesSpec:
    if mapping.query is not None:
        org, key, ts = "src.org", "src.id", "src.created_at"
        exprs = {lb: f"src.{lb}" for lb in labels}
        table, joins, filters = f"({_strip(mapping.query)}) src", [], []
    else:
        assert mapping.table and mapping.org and mapping.key and mapping.timestamp
        org, key, ts = mapping.org, mapping.key, mapping.timestamp
        exprs = {lb: mapping.labels[lb] for lb in labels}
        table, joins = mapping.table, mapping.joins
        filters = [mapping.filter] if mapping.filter else []
    residue = f"{key} % {CHECKSUM_MODULUS}"
    if dialect == "postgresql":
        residue = f"CAST({residue} AS integer)"  # sum(integer) is a bigint, not a numeric
    in_range = _from(table, joins, [f"{key} > :after", f"{key} <= :upto", *filters])
    cols = ", ".join([f"{org} AS org", *(f"{exprs[lb]} AS {lb}" for lb in labels)])
    group = f"{_group_by(1 + len(labels))}{shard.having(org)}"
    full = (
        f"SELECT {cols}, count(*) AS n, min({ts}) AS first_ts, max({key}) AS max_key, "
        f"sum({residue}) AS checksum {in_range} {group}"
    )
    counts = f"SELECT {cols}, count(*) AS n, sum({residue}) AS checksum {in_range} {group}"
    direction = exprs.get("direction", "NULL")
    since = (
        f"SELECT {org} AS org, {direction} AS direction, min({ts}) AS first_ts "
        f"{in_range} {_group_by(2)}{shard.having(org)}"
    )
    summary = by_labels = None
    if shard.total == 1 or shard.pushdown:
        cond = shard.condition(org)

        def shard_range(upto: str) -> str:
            """Keys in (:after, :<upto>], this shard's rows only, filtered per row."""
            where = [f"{key} > :after", f"{key} <= :{upto}", *filters, *([cond] if cond else [])]
            return _from(table, joins, where)

        if dialect == "postgresql":
            label_cols = [f"{exprs[lb]} AS {lb}" for lb in labels]
            by_labels = (
                f"SELECT {', '.join([*label_cols, f'array_agg({org}) AS orgs'])}, "
                f"count(*) AS n, sum({residue}) AS checksum {shard_range('upto')}"
                + (f" {_group_by(len(labels))}" if labels else "")
            )
        tail = shard_range("seen")
        # the highest key is only the upper bound of the next count: neither the filter nor
        # the shard narrows it, so that an index answers it at once
        above = _from(table, joins, [f"{key} > :seen"])
        summary = (
            f"SELECT count(*) AS tail_rows, sum({residue}) AS tail_checksum, "
            f"(SELECT max({key}) {above}) AS max_key {tail}"
        )
    return MessagesSpec(
        "messages",
        labels,
        full,
        interval,
        counts_sql=counts,
        by_labels_sql=by_labels,
        summary_sql=summary,
        since_sql=since,
    )


def build_specs(config: Config, dialect: str = "") -> Specs:
    """The query specs for a validated configuration (``dialect``: the database's, for the
    shard condition)."""
    m, default = config.mapping, config.collection.interval
    shard = Shard(config.shard.index, config.shard.total, pushdown=dialect == "postgresql")
    dropped = set(config.labels.drop)

    def kept(names: tuple[str, ...]) -> tuple[str, ...]:
        return tuple(n for n in names if n not in dropped)

    gauges = []
    for key, (metric, help_text) in METRICS.items():
        entry: TableMapping = getattr(m, key)
        labels = kept(REQUIRED_LABELS[key])
        gauges.append(
            GaugeSpec(
                key,
                metric,
                help_text,
                labels,
                gauge_sql(entry, labels, shard),
                entry.interval or default,
            )
        )
    msg_labels = kept(("direction", "channel", "sender"))
    return Specs(
        organizations=OrgSpec(
            "organizations",
            organizations_sql(m.organizations, shard),
            m.organizations.interval or default,
        ),
        gauges=tuple(gauges),
        shard=shard,
        messages=messages_specs(
            m.messages, msg_labels, m.messages.interval or default, shard, dialect
        ),
    )
