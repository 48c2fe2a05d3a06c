"""The organizations and the resource counts (bots, agents, flows, users): each one
statement per collection, its rows summed into series."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

from sqlalchemy import Connection

from .db import Database, Reader
from .labels import Columns, columns, labels_of, to_unix
from .mapping import GaugeSpec, OrgSpec, Shard
from .snapshot import MetricData, Series


class OrganizationsCollector:
    """Rows ``org, name, counting_since``: ``convrs_org_info``, and each org's own
    counting-since where the mapping reads one."""

    def __init__(self, db: Database, spec: OrgSpec, shard: Shard) -> None:
        self.spec, self.shard = spec, shard
        self.key = spec.key
        self.reader = Reader(db, spec.key, spec.timeout)
        self.null_orgs = [0]
        """Rows skipped for a NULL org since the collection last asked."""
        self._columns = columns(2)
        self.counting_since: dict[str, float] = {}
        """By org, from the latest read that succeeded: kept while the query fails, so that
        counting-since does not fall back to the exporter's own and jump back."""

    def collect(self, conn: Connection, now: float) -> MetricData:
        tz = self.reader.db.timezone
        with self.reader.read_only(conn):
            rows = self.shard.mine(self.reader.stream(conn, self.spec.sql), self.null_orgs)
            series = tuple(
                Series(labels_of(self._columns, r), 1.0, to_unix(r[2], tz)) for r in rows
            )
        self.counting_since = {s.labels[0]: s.created for s in series if s.created is not None}
        return MetricData(self.key, series, now)


class GaugeCollector:
    """Rows ``org, <labels...>, value``; equal label sets (as text) are summed."""

    def __init__(self, db: Database, spec: GaugeSpec, shard: Shard) -> None:
        self.spec, self.shard = spec, shard
        self.key = spec.key
        self.reader = Reader(db, spec.key, spec.timeout)
        self.null_orgs = [0]
        """Rows skipped for a NULL org since the collection last asked."""
        self._columns = columns(1 + len(spec.labels))

    def collect(self, conn: Connection, now: float) -> MetricData:
        with self.reader.read_only(conn):
            rows = self.shard.mine(self.reader.stream(conn, self.spec.sql), self.null_orgs)
            return MetricData(self.key, _sum_series(rows, self._columns), now)

    def zero_filled(self, data: MetricData, org_ids: Sequence[str]) -> MetricData:
        """Every known org gets its series even when it has no rows (0, not "no data"),
        where the contract's labels are a closed set."""
        fill = self.spec.metric.zero_fill
        if fill is None or any(lb not in self.spec.labels for lb in fill):
            return data
        wanted: list[tuple[str, ...]] = [(org,) for org in org_ids]
        for label in fill:
            values = self.spec.metric.allowed[label]
            wanted = [(*key, value) for key in wanted for value in values]
        have = {s.labels for s in data.series}
        extra = tuple(Series(k, 0.0) for k in wanted if k not in have)
        if not extra:
            return data
        return MetricData(data.key, data.series + extra, data.collected_at)


def _sum_series(rows: Iterable[Sequence[Any]], cols: Columns) -> tuple[Series, ...]:
    """Rows (org, labels..., value) as series, in the order the database returned them
    (sorting 60,000 keys took 100 ms of GIL per collection; the formats ask for no
    order)."""
    sums: dict[tuple[str, ...], float] = {}
    get = sums.get
    width = len(cols)
    for row in rows:
        key = labels_of(cols, row)
        sums[key] = get(key, 0.0) + float(row[width] or 0)
    return tuple(map(Series, sums.keys(), sums.values()))
