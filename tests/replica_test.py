"""Counting through a streaming hot standby, built for the test (primary and standby of
our own, never the machine's cluster): exact after settling, no xid spent anywhere, and
the standby's lag reported."""

from __future__ import annotations

import time
from collections.abc import Iterator

import psycopg
import pytest
from sqlalchemy import create_engine, text

from exporter.collection import Collection
from exporter.schema import metadata
from tests.support.expo import in_process, served
from tests.support.standby import Pair, primary_and_standby

INSERT = (
    "INSERT INTO messages (org_id, direction, sender_type, channel) "
    "VALUES (1, 'inbound', 'user', 'sms') RETURNING id"
)
KEY = ("1", "inbound", "sms", "user")


@pytest.fixture(scope="module")
def pair() -> Iterator[Pair]:
    with primary_and_standby() as built:
        with psycopg.connect(built.dsn(built.primary_port), autocommit=True) as conn:
            conn.execute("CREATE DATABASE convrs")
        engine = create_engine(built.url(built.primary_port, "convrs"))
        metadata.create_all(engine)
        with engine.begin() as conn:
            conn.execute(text("INSERT INTO organizations (id, name) VALUES (1, 'A'), (2, 'B')"))
        engine.dispose()
        built.caught_up()
        yield built


def _primary(pair: Pair) -> psycopg.Connection[tuple[object, ...]]:
    return psycopg.connect(pair.dsn(pair.primary_port, "convrs"))


def _count(pair: Pair) -> int:
    with psycopg.connect(pair.dsn(pair.primary_port, "convrs")) as conn:
        row = conn.execute("SELECT count(*) FROM messages WHERE org_id = 1").fetchone()
        return int(row[0]) if row else 0


def _total(coll: Collection) -> float:
    return served(coll)["convrs_messages_total"].get(KEY, 0.0)


def _collect(coll: Collection, pair: Pair, n: int = 2) -> None:
    for _ in range(n):
        pair.caught_up()
        assert coll.run()


def test_out_of_order_commits_count_exactly_through_the_standby(pair: Pair) -> None:
    coll, _ = in_process(
        pair.url(pair.standby_port, "convrs"), {"collection": {"settle_after": "1ms"}}
    )
    try:
        _collect(coll, pair)
        before = _total(coll)
        t1, t2 = _primary(pair), _primary(pair)
        (low,) = t1.execute(INSERT).fetchone() or (0,)  # the lower id, left open
        (high,) = t2.execute(INSERT).fetchone() or (0,)
        t2.commit()
        assert low < high
        _collect(coll, pair, 3)
        assert _total(coll) == before + 1  # only the committed row
        assert coll.counter.watermark < low  # t1's xid, replayed, holds the watermark back
        t1.commit()
        _collect(coll, pair, 3)
        assert _total(coll) == before + 2 == _count(pair)
        assert coll.counter.watermark >= high
        h = coll.health.registry.get_sample_value
        assert h("convrs_exporter_database_standby") == 1
        lag = h("convrs_exporter_replication_lag_seconds")
        assert lag is not None and 0 <= lag < 60
        for conn in (t1, t2):
            conn.close()
    finally:
        coll.db.close()


def test_an_id_taken_before_its_xid_counts_within_settle_after(pair: Pair) -> None:
    """On a standby the primary's sessions cannot be seen, so an id taken before its
    transaction had an xid is guarded by settle_after (and reconciliation): committed
    within it, it is counted when its batch settles."""
    coll, _ = in_process(
        pair.url(pair.standby_port, "convrs"), {"collection": {"settle_after": "3s"}}
    )
    try:
        _collect(coll, pair)
        before = _total(coll)
        early = _primary(pair)
        (early_id,) = early.execute("SELECT nextval('messages_id_seq')").fetchone() or (0,)
        with _primary(pair) as other:
            other.execute(INSERT)
            other.commit()
        _collect(coll, pair, 1)  # counts the later id, in a batch not yet settled
        assert coll.counter.counted_to > early_id
        early.execute(
            "INSERT INTO messages (id, org_id, direction, sender_type, channel) "
            "VALUES (%s, 1, 'inbound', 'user', 'sms')",
            (early_id,),
        )
        early.commit()
        early.close()
        time.sleep(3.2)  # past settle_after: the batch settles, and is recounted
        _collect(coll, pair)
        assert coll.counter.watermark > early_id
        assert _total(coll) == before + 2 == _count(pair)
    finally:
        coll.db.close()


def test_collections_spend_no_transaction_id(pair: Pair) -> None:
    """The fence reads the next xid instead of taking one: on the primary (where nothing
    else runs) the next xid does not move however many collections run."""

    def next_xid() -> int:
        with psycopg.connect(pair.dsn(pair.primary_port, "convrs"), autocommit=True) as c:
            row = c.execute("SELECT pg_snapshot_xmax(pg_current_snapshot())::text").fetchone()
            return int(row[0]) if row else 0

    coll, _ = in_process(
        pair.url(pair.primary_port, "convrs"), {"collection": {"settle_after": "1ms"}}
    )
    try:
        assert coll.run()
        before = next_xid()
        for _ in range(5):
            assert coll.run()
        assert next_xid() == before
        assert coll.health.registry.get_sample_value("convrs_exporter_database_standby") == 0
    finally:
        coll.db.close()
