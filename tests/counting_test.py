"""Incremental message counting stays exact: ids committed out of order, transactions that take
an id before their xid, deletions, restarts, and a randomized mix, on a real PostgreSQL."""

from __future__ import annotations

import datetime as dt
import random
import time
from collections import Counter
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import cast

import psycopg
import pytest
from sqlalchemy import Engine, create_engine, event, text

from exporter.collection import Collection
from exporter.config import Config, reference_mapping
from exporter.dialects import NO_FENCE
from exporter.dialects.mysql import CACHE_IDLE, MySQL
from exporter.errors import QueryError
from exporter.mapping import build_specs
from exporter.messages.counter import MessageCounter, Summary
from exporter.messages.sql import KeyRange
from exporter.schema import metadata
from tests.support.expo import assembled, in_process, rendered_text, served
from tests.support.servers import MARIADB, POSTGRESQL, SERVERS, Server, Writer

KEY = ("1", "inbound", "sms", "user")
INSERT = (
    "INSERT INTO messages (org_id, direction, sender_type, channel) "
    "VALUES (1, 'inbound', 'user', 'sms') RETURNING id"
)


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    """The tests that take ``collection`` run on each server with a reader that sees other
    sessions' transactions, and on PostgreSQL also with a plain one (its xid check still
    guards late commits; MariaDB without PROCESS has only time, see the test of that); the
    others that take ``empty`` run on each server."""
    if "collection" in metafunc.fixturenames:
        metafunc.parametrize(
            ("server", "sees_others"),
            [(POSTGRESQL, True), (POSTGRESQL, False), (MARIADB, True)],
            ids=["postgresql-monitoring", "postgresql-plain", "mariadb-process"],
            indirect=True,
        )
    elif "server" in metafunc.fixturenames:
        metafunc.parametrize("server", SERVERS, ids=str, indirect=True)


@pytest.fixture
def server(request: pytest.FixtureRequest) -> Server:
    return cast(Server, request.param)


@pytest.fixture
def sees_others(request: pytest.FixtureRequest) -> bool:
    return bool(request.param)


def _schema(engine: Engine) -> Engine:
    metadata.create_all(engine)
    with engine.begin() as conn:
        conn.execute(text("INSERT INTO organizations (id, name) VALUES (1, 'A'), (2, 'B')"))
    return engine


@pytest.fixture
def empty(server: Server) -> Iterator[Engine]:
    """The reference schema with two organizations and no messages, on the test's server."""
    with server.database() as url:
        engine = server.engine(url)
        yield _schema(engine)
        engine.dispose()


@pytest.fixture
def pg_empty(pg_engine: Engine) -> Engine:
    """The same, on PostgreSQL only (tests of what only it has: xids, org arrays)."""
    return _schema(pg_engine)


@contextmanager
def as_reader(server: Server, empty: Engine, sees_others: bool) -> Iterator[Collection]:
    """The exporter as a read-only user of its own: one that sees every session's
    transactions (pg_read_all_stats, which pg_monitor grants; MariaDB: PROCESS), or a plain
    one that does not."""
    with server.reader(empty, sees_others) as url:
        coll, _ = in_process(url, {"collection": {"settle_after": "1ms"}})
        try:
            assert _sees_others(coll) is sees_others
            yield coll
        finally:
            coll.db.close()


@pytest.fixture
def collection(server: Server, empty: Engine, sees_others: bool) -> Iterator[Collection]:
    with as_reader(server, empty, sees_others) as coll:
        yield coll


@pytest.fixture
def monitoring(server: Server, empty: Engine) -> Iterator[Collection]:
    with as_reader(server, empty, True) as coll:
        yield coll


@pytest.fixture
def pg_monitoring(pg_empty: Engine) -> Iterator[Collection]:
    with as_reader(POSTGRESQL, pg_empty, True) as coll:
        yield coll


def _sees_others(coll: Collection) -> bool:
    from exporter.dialects.mysql import TrxProbe
    from exporter.dialects.postgresql import XidProbe

    with coll.db.engine.connect() as conn:
        probe = coll.db.dialect.probe(conn)
        assert isinstance(probe, XidProbe | TrxProbe)
        return probe.sees_all if isinstance(probe, XidProbe) else probe.sees


def _url(engine: Engine) -> str:
    return engine.url.render_as_string(hide_password=False)


def _dsn(engine: Engine) -> str:
    return f"host=127.0.0.1 port=5432 user=postgres dbname={engine.url.database}"


def _delete_newest(engine: Engine, keep: int = 0) -> None:
    """Delete the newest message (``keep`` 0), or all but the newest ``keep`` (MySQL
    cannot read the table a DELETE writes in a subquery)."""
    with engine.begin() as conn:
        newest = int(conn.execute(text("SELECT max(id) FROM messages")).scalar_one())
        if keep:
            conn.execute(text("DELETE FROM messages WHERE id <= :n"), {"n": newest - keep})
        else:
            conn.execute(text("DELETE FROM messages WHERE id = :n"), {"n": newest})


def total(coll: Collection, key: tuple[str, ...] = KEY) -> float:
    return served(coll)["convrs_messages_total"].get(key, 0.0)


def table_count(engine: Engine) -> int:
    with engine.connect() as conn:
        return int(conn.execute(text("SELECT count(*) FROM messages")).scalar_one())


def run_n(coll: Collection, n: int = 3) -> None:
    """Collections in a row; on MySQL each a little after the last, as InnoDB refreshes its
    list of open transactions only once no one has read it for a moment
    (``dialects.mysql.CACHE_IDLE``; collections 30 s apart always find it fresh)."""
    for _ in range(n):
        if isinstance(coll.db.dialect, MySQL):
            time.sleep(1.5 * CACHE_IDLE)
        assert coll.run()


def test_lower_id_committed_after_a_higher_one(
    server: Server, collection: Collection, empty: Engine
) -> None:
    """A transaction held open past settle_after with the lower id: the watermark waits
    for it (PostgreSQL: its xid, and its session; MariaDB: InnoDB's open transactions)."""
    t1 = server.writer(empty)
    t2 = server.writer(empty)
    (low,) = t1.execute(INSERT).fetchone() or (0,)  # takes the lower id, stays open
    (high,) = t2.execute(INSERT).fetchone() or (0,)
    t2.commit()
    assert low < high
    run_n(collection)  # sees only the higher id, several times
    assert total(collection) == 1
    assert collection.counter.watermark < low  # held back while t1 is open
    t1.commit()
    run_n(collection)
    assert total(collection) == 2 == table_count(empty)
    for conn in (t1, t2):
        conn.close()


@pytest.mark.parametrize("sees_others", [True, False], ids=["monitoring", "plain"])
def test_older_xid_committing_first(sees_others: bool, pg_empty: Engine) -> None:
    """The open transaction's xid is above the snapshot's xmax (one past the newest completed
    xid): xmin-against-xmax alone would settle past its id."""
    empty = pg_empty
    with as_reader(POSTGRESQL, empty, sees_others) as collection:
        _older_xid_committing_first(collection, empty)


def _older_xid_committing_first(collection: Collection, empty: Engine) -> None:
    t2 = psycopg.connect(_dsn(empty))
    t1 = psycopg.connect(_dsn(empty))
    t2.execute("SELECT pg_current_xact_id()")
    t1.execute("SELECT pg_current_xact_id()")
    t1.execute(INSERT)  # id 1, open
    t2.execute(INSERT)  # id 2
    t2.commit()
    run_n(collection)
    t1.commit()
    run_n(collection)
    assert total(collection) == 2 == table_count(empty)
    t1.close()
    t2.close()


def test_id_taken_before_the_transaction_has_an_xid(
    pg_monitoring: Collection, pg_empty: Engine
) -> None:
    """SELECT nextval first, INSERT later (an ORM pattern): no xid yet while it holds the id.
    Only pg_stat_activity shows such a transaction (without pg_read_all_stats, settle_after
    is what covers it)."""
    collection, empty = pg_monitoring, pg_empty
    for _ in range(100):  # nextval takes an xid when it logs the sequence (every 32 values)
        t1 = psycopg.connect(_dsn(empty))
        (early,) = t1.execute("SELECT nextval('messages_id_seq')").fetchone() or (0,)
        if t1.execute("SELECT pg_current_xact_id_if_assigned()").fetchone() == (None,):
            break
        t1.close()
    else:
        pytest.fail("every nextval took an xid")
    with empty.begin() as conn:
        conn.execute(text(INSERT))
    run_n(collection)
    t1.execute(
        "INSERT INTO messages (id, org_id, direction, sender_type, channel) "
        "VALUES (%s, 1, 'inbound', 'user', 'sms')",
        (early,),
    )
    t1.commit()
    run_n(collection)
    assert total(collection) == 2 == table_count(empty)
    t1.close()


def test_an_open_transaction_in_another_database_does_not_hold_the_watermark(
    server: Server, monitoring: Collection, empty: Engine
) -> None:
    """Only this database's sessions can write its messages: a session elsewhere on the
    server, idle in a transaction that read a table, does not keep batches from settling."""
    with server.database() as other_url:
        other = server.engine(other_url)
        with other.begin() as conn:
            conn.execute(text("CREATE TABLE t (id integer PRIMARY KEY)"))
        elsewhere = server.writer(other)
        elsewhere.execute("SELECT count(*) FROM t")  # open, idle, from before the counts
        try:
            with empty.begin() as conn:
                for _ in range(3):
                    conn.execute(text(INSERT))
            run_n(monitoring)
            c = monitoring.counter
            assert c.watermark == c.counted_to and not c.batches
            assert total(monitoring) == 3 == table_count(empty)
        finally:
            elsewhere.close()
            other.dispose()


def test_deleting_never_lowers_and_adding_moves_by_exactly_what_was_added(
    collection: Collection, empty: Engine
) -> None:
    with empty.begin() as conn:
        for _ in range(10):
            conn.execute(text(INSERT))
    run_n(collection)
    assert total(collection) == 10
    _delete_newest(empty)  # a recent row deleted and a new one added in one interval
    with empty.begin() as conn:
        conn.execute(text(INSERT))
    assert collection.run()
    assert total(collection) == 11
    _delete_newest(empty, keep=2)  # retention: all but the newest two go
    run_n(collection)
    assert total(collection) == 11
    with empty.begin() as conn:
        for _ in range(4):
            conn.execute(text(INSERT))
    assert collection.run()
    assert total(collection) == 15


def test_late_commit_beside_a_deleted_tail_row_is_found_by_the_checksum(
    server: Server, collection: Collection, empty: Engine
) -> None:
    """A late commit in one series and a delete of a tail row of another, in one interval:
    the tail's row count is unchanged, its key checksum is not, so the tail is recounted
    per series and the late row counts."""
    other = ("2", "outbound", "line", "bot")
    t1 = server.writer(empty)
    (low,) = t1.execute(INSERT).fetchone() or (0,)  # the lower id, left open
    with empty.begin() as conn:
        conn.execute(
            text(
                "INSERT INTO messages (org_id, direction, sender_type, channel) "
                "VALUES (2, 'outbound', 'bot', 'line'), (2, 'outbound', 'bot', 'line')"
            )
        )
    assert collection.run()
    assert (total(collection), total(collection, other)) == (0, 2)
    assert collection.counter.watermark < low  # the tail holds t1's id while it is open
    t1.commit()
    _delete_newest(empty)  # one of the tail's rows goes in the same interval
    run_n(collection, 1)
    assert (total(collection), total(collection, other)) == (1, 2)
    run_n(collection)
    assert (total(collection), total(collection, other)) == (1, 2)
    # what is settled is what is left (the deleted row is gone from it, not from the total)
    assert _settled(collection) == _count_upto(empty, collection.counter.watermark)
    assert collection.reconcile() == 0 and total(collection, other) == 2
    t1.close()


def test_a_steady_collection_counts_only_the_new_rows(
    pg_monitoring: Collection, pg_empty: Engine
) -> None:
    """Once the tail has settled, a collection runs the summary and one grouped count over
    the new rows only (the key range is its bound parameters), never the full shape; on
    PostgreSQL grouped by label values, with the orgs as an array."""
    collection, empty = pg_monitoring, pg_empty
    with empty.begin() as conn:
        for _ in range(5):
            conn.execute(text(INSERT))
    run_n(collection)
    highest = collection.counter.counted_to
    statements: list[tuple[str, dict[str, int]]] = []

    def seen(conn: object, cursor: object, statement: str, params: object, *_: object) -> None:
        if isinstance(params, dict) and "after" in params:
            statements.append((statement, dict(params)))

    event.listen(collection.db.engine, "before_cursor_execute", seen)
    with empty.begin() as conn:
        for _ in range(3):
            conn.execute(text(INSERT))
    assert collection.run()
    event.remove(collection.db.engine, "before_cursor_execute", seen)
    assert total(collection) == 8
    spec = collection.specs.messages
    assert spec.sql.summary is not None
    (summary, s_params), (counts, c_params) = statements
    assert "settling_rows" in summary and s_params == {"after": highest, "upto": highest}
    # not the full shape: one row per set of label values, the orgs as an array
    assert "first_ts" not in counts and "array_agg(messages.org_id)" in counts
    assert counts.endswith("GROUP BY 1, 2, 3")
    assert c_params == {"after": highest, "upto": collection.counter.counted_to}
    assert collection.counter.counted_to == highest + 3


def test_steady_counts_by_label_values_stay_exact_for_new_series_and_odd_org_ids(
    server: Server, empty: Engine
) -> None:
    """A steady count reads one row per set of label values, with the org of each new row
    in an array (PostgreSQL: array_agg; MySQL: JSON_ARRAYAGG): org ids with array and JSON
    syntax in them come back whole, and series first met in a steady count (a new org, a
    new channel) are added, each exactly once."""
    if server is POSTGRESQL:
        org = "'o,\"{} \\' || CAST(messages.org_id AS text)"  # o,"{} \<id>
    else:
        org = "CONCAT('o,\"{} \\\\', messages.org_id)"  # the same: MySQL escapes \
    messages = {**reference_mapping()["messages"], "org": org}
    coll, _ = in_process(
        _url(empty), {"collection": {"settle_after": "1ms"}, "mapping": {"messages": messages}}
    )
    insert = (
        "INSERT INTO messages (org_id, direction, sender_type, channel) "
        "VALUES (:org, :direction, :sender, :channel)"
    )
    batches = [
        [(1, "inbound", "user", "sms", 3)],
        [(1, "inbound", "user", "sms", 2), (2, "outbound", "bot", "line", 4)],
        [(2, "outbound", "bot", "web", 1), (1, "outbound", "agent", "sms", 5)],
        [(2, "inbound", "user", "line", 2), (1, "inbound", "user", "sms", 1)],
    ]
    try:
        for batch in batches:
            with empty.begin() as conn:
                for o, d, snd, ch, n in batch:
                    params = {"org": o, "direction": d, "sender": snd, "channel": ch}
                    for _ in range(n):
                        conn.execute(text(insert), params)
            run_n(coll, 2)
        with empty.connect() as conn:
            want = {
                tuple(r[:4]): float(r[4])
                for r in conn.execute(
                    text(
                        f"SELECT {org}, direction, channel, sender_type, count(*) "
                        "FROM messages GROUP BY 1, 2, 3, 4"
                    )
                )
            }
        assert served(coll)["convrs_messages_total"] == want
        assert ('o,"{} \\2', "outbound", "web", "bot") in want
        assert coll.messages.steady_shape(KeyRange(0, 10)) == "by_labels"
    finally:
        coll.db.close()


def test_by_labels_rows_find_their_series_by_their_own_values() -> None:
    """An org id of another type (text "1" for integer 1) is the same series, as in every
    other shape; rows of new series say which (org, direction) pairs are new."""
    config = Config.model_validate(
        {"database": {"url": "sqlite://"}, "mapping": reference_mapping()}
    )
    counter = MessageCounter(build_specs(config).messages.labels, 0.0)
    now = dt.datetime.now(dt.UTC)
    counter.add_new([(1, "inbound", "sms", "user", 2, now, 2, 3)], "full", None, 0.0, NO_FENCE)
    rows = [("inbound", "sms", "user", [1, "1", 2, 1], 4, 9), ("outbound", "sms", "bot", [1], 1, 5)]
    pairs = counter.add_new(rows, "by_labels", 7, 1.0, NO_FENCE)
    assert counter.totals_by_key() == {
        ("1", "inbound", "sms", "user"): 5,
        ("2", "inbound", "sms", "user"): 1,
        ("1", "outbound", "sms", "bot"): 1,
    }
    assert pairs == {("2", "inbound"), ("1", "outbound")}
    batch = counter.batches[-1]
    assert (batch.upper, batch.rows, batch.checksum) == (7, 5, 14)
    assert sorted(zip(batch.series, batch.counts, strict=True)) == [(0, 3), (1, 1), (2, 1)]


def test_org_ids_that_come_back_from_arrays_as_text_are_counted_per_series(
    pg_empty: Engine,
) -> None:
    """psycopg reads an array of a type it does not know (here an enum) as one string: the
    steady count sees that, reads the same range one row per series instead, and stays
    exact."""
    empty = pg_empty
    with empty.begin() as conn:
        conn.execute(text("CREATE TYPE org_code AS ENUM ('o1', 'o2')"))
    org = "CAST('o' || messages.org_id AS org_code)"
    messages = {**reference_mapping()["messages"], "org": org}
    coll, _ = in_process(
        _url(empty), {"collection": {"settle_after": "1ms"}, "mapping": {"messages": messages}}
    )
    try:
        for n in (2, 3, 4):
            with empty.begin() as conn:
                for _ in range(n):
                    conn.execute(text(INSERT))
                conn.execute(
                    text(
                        "INSERT INTO messages (org_id, direction, sender_type, channel) "
                        "VALUES (2, 'outbound', 'bot', 'line')"
                    )
                )
            run_n(coll, 2)
        got = served(coll)["convrs_messages_total"]
        assert got == {
            ("o1", "inbound", "sms", "user"): 9.0,
            ("o2", "outbound", "line", "bot"): 3.0,
        }
        assert coll.messages.steady_shape(KeyRange(0, 10)) == "per_series"  # from then on
    finally:
        coll.db.close()


def test_a_long_range_of_new_keys_is_counted_per_series(
    monkeypatch: pytest.MonkeyPatch, pg_monitoring: Collection, pg_empty: Engine
) -> None:
    """A catch-up (after an outage, a bulk load) would put every new row's org in one array:
    past BY_LABELS_MAX_ROWS new rows (estimated from the keys) a steady count reads one row
    per series instead. Keys with gaps (time-based ids) are estimated by their density."""
    monkeypatch.setattr("exporter.messages.collector.BY_LABELS_MAX_ROWS", 3)
    collection, empty = pg_monitoring, pg_empty
    with empty.begin() as conn:
        conn.execute(text(INSERT))
    run_n(collection, 1)
    statements: list[str] = []

    def seen(conn: object, cursor: object, statement: str, params: object, *_: object) -> None:
        if isinstance(params, dict) and "upto" in params:
            statements.append(statement)

    event.listen(collection.db.engine, "before_cursor_execute", seen)
    for n in (2, 5):
        with empty.begin() as conn:
            for _ in range(n):
                conn.execute(text(INSERT))
        assert collection.run()
    event.remove(collection.db.engine, "before_cursor_execute", seen)
    spec = collection.specs.messages
    steady = (_driver(collection, spec.sql.by_labels), _driver(collection, spec.sql.per_series))
    assert [s for s in statements if s in steady] == list(steady)  # 2 new keys, then 5
    assert total(collection) == 8 == table_count(empty)
    assert collection.messages.rows_per_key == 1.0  # 5 rows over 5 keys
    collection.messages.rows_per_key = 1e-9  # a billion keys, one row
    assert collection.messages.steady_shape(KeyRange(0, 10**9)) == "by_labels"


def _driver(coll: Collection, sql: str | None) -> str:
    assert sql is not None
    return str(text(sql).compile(dialect=coll.db.engine.dialect))


def test_a_shard_counts_only_its_own_orgs_from_by_labels_rows() -> None:
    config = Config.model_validate(
        {"database": {"url": "sqlite://"}, "mapping": reference_mapping()}
    )
    counter = MessageCounter(build_specs(config).messages.labels, 0.0, owns=lambda org: org != "2")
    rows = [("inbound", "sms", "user", [1, 2, 2, 3], 4, 10)]
    counter.add_new(rows, "by_labels", 9, 0.0, NO_FENCE)
    assert counter.totals_by_key() == {
        ("1", "inbound", "sms", "user"): 1,
        ("3", "inbound", "sms", "user"): 1,
    }
    counter.add_new(rows, "by_labels", 19, 1.0, NO_FENCE)  # the known orgs, and 2 again
    assert counter.totals_by_key() == {
        ("1", "inbound", "sms", "user"): 2,
        ("3", "inbound", "sms", "user"): 2,
    }


def test_the_tail_is_read_only_when_a_batch_may_settle(empty: Engine) -> None:
    """Before settle_after has passed no batch can settle, so the summary reads no tail rows
    (a first count of the whole table is not re-read each collection); new rows still
    count at once."""
    coll, _ = in_process(_url(empty), {"collection": {"settle_after": "1h"}})
    with empty.begin() as conn:
        for _ in range(4):
            conn.execute(text(INSERT))
    assert coll.run()
    watermark = coll.counter.watermark
    summaries: list[dict[str, int]] = []

    def seen(conn: object, cursor: object, statement: str, params: object, *_: object) -> None:
        if "settling_rows" in statement and isinstance(params, dict):
            summaries.append(dict(params))

    event.listen(coll.db.engine, "before_cursor_execute", seen)
    with empty.begin() as conn:
        conn.execute(text(INSERT))
    assert coll.run()
    event.remove(coll.db.engine, "before_cursor_execute", seen)
    assert summaries == [{"after": watermark, "upto": watermark}]  # an empty tail range
    assert coll.counter.watermark == watermark and len(coll.counter.batches) == 2
    assert total(coll) == 5 == table_count(empty)
    coll.db.close()


def test_restart_rebuilds_totals_from_the_table(collection: Collection, empty: Engine) -> None:
    with empty.begin() as conn:
        for _ in range(6):
            conn.execute(text(INSERT))
    run_n(collection)
    with empty.begin() as conn:
        conn.execute(text("DELETE FROM messages WHERE id <= 2"))
    run_n(collection)
    assert total(collection) == 6
    restarted = assembled(_url(empty))
    assert not restarted.exposition.ready.is_set()
    assert restarted.job.collect() and restarted.exposition.ready.is_set()
    assert total(restarted.collection) == 4 == table_count(empty)  # a counter reset, as spec
    restarted.db.close()


def test_randomized_out_of_order_commits_and_deletes(
    server: Server, collection: Collection, empty: Engine
) -> None:
    """Seeded random mix of writers that commit out of order or roll back, retention deletes,
    and collections: the totals never exceed the rows ever committed, and equal them,
    series by series, once no writer is left open."""
    rng = random.Random(20261126)
    series = [
        (org, d, ch, "user" if d == "inbound" else "bot")
        for org in (1, 2)
        for d in ("inbound", "outbound")
        for ch in ("sms", "line")
    ]
    committed: Counter[tuple[str, ...]] = Counter()
    settled_checks = reconciled = 0
    checks = random.Random(7)  # its own stream: the writers' sequence stays the seed's
    open_tx: list[tuple[Writer, Counter[tuple[str, ...]]]] = []
    for _step in range(120):
        action = rng.random()
        if action < 0.35 or not open_tx:  # a writer opens and inserts a few rows
            conn = server.writer(empty)
            added: Counter[tuple[str, ...]] = Counter()
            for _ in range(rng.randint(1, 4)):
                org, d, ch, sender = rng.choice(series)
                conn.execute(
                    "INSERT INTO messages (org_id, direction, sender_type, channel) "
                    "VALUES (%s, %s, %s, %s)",
                    (org, d, sender, ch),
                )
                added[(str(org), d, ch, sender)] += 1
            open_tx.append((conn, added))
        elif action < 0.75:  # some writer, not necessarily the oldest, ends
            conn, added = open_tx.pop(rng.randrange(len(open_tx)))
            if rng.random() < 0.85:
                conn.commit()
                committed.update(added)
            else:
                conn.rollback()  # leaves a permanent gap in the ids
            conn.close()
        elif action < 0.8:  # retention deletes some settled rows
            with empty.begin() as c:
                oldest = c.execute(
                    text("SELECT id FROM messages WHERE id <= :w ORDER BY id LIMIT 3"),
                    {"w": collection.counter.watermark},
                ).scalars()
                for key in list(oldest):
                    c.execute(text("DELETE FROM messages WHERE id = :k"), {"k": key})
        elif action < 0.95:
            assert collection.run()
            got = served(collection)["convrs_messages_total"]
            # never more than committed (nothing twice); a late commit may wait for its
            # batch to settle, so "fewer" is allowed while writers are open
            assert all(0 < n <= committed[k] for k, n in got.items()), (got, committed)
            if checks.random() < 0.3:  # the safety net finds nothing missed, deletions or not
                assert collection.reconcile() == 0
                assert _settled(collection) == _count_upto(empty, collection.counter.watermark)
                reconciled += 1
        else:  # the writers end (a few roll back); two collections settle everything
            for conn, added in open_tx:
                if rng.random() < 0.85:
                    conn.commit()
                    committed.update(added)
                else:
                    conn.rollback()
                conn.close()
            open_tx.clear()
            settled_checks += 1
            run_n(collection, 2)
            got = served(collection)["convrs_messages_total"]
            assert got == {k: float(v) for k, v in committed.items() if v}
    assert settled_checks >= 3  # the seed gives moments with no writer open
    assert reconciled >= 3
    for conn, added in open_tx:
        conn.commit()
        committed.update(added)
        conn.close()
    run_n(collection)
    assert served(collection)["convrs_messages_total"] == {
        k: float(v) for k, v in committed.items() if v
    }
    # and a full count over what is left agrees with a direct SQL count
    fresh, _ = in_process(_url(empty))
    assert fresh.run()
    with empty.connect() as c:
        left = {
            (str(o), d, ch, s): float(n)
            for o, d, ch, s, n in c.execute(
                text(
                    "SELECT org_id, direction, channel, sender_type, count(*) FROM messages "
                    "GROUP BY 1, 2, 3, 4"
                )
            )
        }
    assert served(fresh)["convrs_messages_total"] == left
    fresh.db.close()


def _settled(coll: Collection) -> dict[tuple[str, ...], int]:
    """What the counter holds as settled per series (at or below its watermark)."""
    c = coll.counter
    return {c.keys[i]: n for i, n in enumerate(c.settled_per_series()) if n}


def _count_upto(engine: Engine, watermark: int) -> dict[tuple[str, ...], int]:
    with engine.connect() as conn:
        rows = conn.execute(
            text(
                "SELECT org_id, direction, channel, sender_type, count(*) FROM messages "
                "WHERE id <= :w GROUP BY 1, 2, 3, 4"
            ),
            {"w": watermark},
        )
        return {(str(r[0]), *r[1:4]): int(r[4]) for r in rows}


def test_reconciliation_adds_what_the_increments_could_not_see(pg_empty: Engine) -> None:
    """Without pg_stat_activity a transaction holding an id before its xid can slip below the
    watermark; the periodic full count finds the row and adds it; deletions change nothing."""
    empty = pg_empty
    with as_reader(POSTGRESQL, empty, sees_others=False) as plain:
        for _ in range(100):  # an id taken with no xid (see the test above)
            t1 = psycopg.connect(_dsn(empty))
            (early,) = t1.execute("SELECT nextval('messages_id_seq')").fetchone() or (0,)
            if t1.execute("SELECT pg_current_xact_id_if_assigned()").fetchone() == (None,):
                break
            t1.close()
        with empty.begin() as conn:
            for _ in range(3):
                conn.execute(text(INSERT))
        run_n(plain)
        assert plain.counter.watermark > early  # settled past the id t1 still holds
        t1.execute(
            "INSERT INTO messages (id, org_id, direction, sender_type, channel) "
            "VALUES (%s, 1, 'inbound', 'user', 'sms')",
            (early,),
        )
        t1.commit()
        t1.close()
        run_n(plain)
        assert total(plain) == 3  # the documented gap without pg_read_all_stats
        assert plain.reconcile() == 1
        assert total(plain) == 4 == table_count(empty)
        with empty.begin() as conn:
            conn.execute(text("DELETE FROM messages WHERE id <= :e"), {"e": early})
        assert plain.reconcile() == 0
        run_n(plain)
        assert total(plain) == 4
        body = rendered_text(plain)
        assert "convrs_messages_total" in body
        assert (
            plain.health.registry.get_sample_value("convrs_exporter_messages_reconciled_total") == 1
        )


def test_a_recount_lets_the_settled_batches_settle(empty: Engine) -> None:
    """Only the batches that may settle are checked and, when they changed, recounted, so
    they settle even while a younger one may not yet (merged with it, the watermark would
    wait for the youngest)."""
    coll, _ = in_process(_url(empty), {"collection": {"settle_after": "2s"}})
    with empty.begin() as conn:
        for _ in range(3):
            conn.execute(text(INSERT))
    assert coll.run()  # batch 1: the first count
    first = coll.counter.counted_to
    time.sleep(1.0)
    with empty.begin() as conn:
        for _ in range(2):
            conn.execute(text(INSERT))
    assert coll.run()  # batch 2, a second younger
    time.sleep(1.2)  # batch 1 may settle now, batch 2 not yet
    with empty.begin() as conn:  # the settling batch changes: one of its rows is deleted
        oldest = conn.execute(text("SELECT min(id) FROM messages")).scalar_one()
        conn.execute(text("DELETE FROM messages WHERE id = :k"), {"k": oldest})
    assert coll.run()
    assert coll.counter.watermark == first
    assert [b.rows for b in coll.counter.batches] == [2]  # batch 2, checked when it settles
    assert total(coll) == 5
    coll.db.close()


def test_a_row_committed_between_the_summary_and_the_count_is_counted_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """SQLite reads each statement's newest data: a row committed right after a summary that
    saw nothing new is left to the next collection, not counted without a batch."""
    url = f"sqlite:///{tmp_path / 'convrs.db'}"
    writer = create_engine(url)
    metadata.create_all(writer)
    with writer.begin() as conn:
        conn.execute(text("INSERT INTO organizations (id, name) VALUES (1, 'A')"))
        conn.execute(text(INSERT.replace(" RETURNING id", "")))
    coll, _ = in_process(url, {"collection": {"settle_after": "1ms"}})
    assert coll.run()

    read = Summary.of

    def sneak(row: Sequence[object]) -> Summary:
        with writer.begin() as w:  # commits once the summary has been read
            w.execute(text(INSERT.replace(" RETURNING id", "")))
        return read(row)

    monkeypatch.setattr(Summary, "of", sneak)
    assert coll.run()  # the summary saw nothing above the highest key; the row came after
    monkeypatch.setattr(Summary, "of", read)
    for _ in range(2):
        assert coll.run()
    assert total(coll) == 2 == table_count(writer)
    coll.db.close()
    writer.dispose()


def test_a_count_that_fails_part_way_applies_nothing() -> None:
    """Rows are read into per-series counts first: a read that fails part-way (a statement
    timeout, a lost connection) leaves the totals as they were."""
    config = Config.model_validate(
        {"database": {"url": "sqlite://"}, "mapping": reference_mapping()}
    )
    counter = MessageCounter(build_specs(config).messages.labels, 0.0)
    now = dt.datetime.now(dt.UTC)

    def rows() -> Iterator[tuple[object, ...]]:
        yield (1, "inbound", "sms", "user", 3, now, 3, 6)
        raise QueryError("messages", "statement timeout (1s) exceeded")

    with pytest.raises(QueryError):
        counter.add_new(rows(), "full", None, 0.0, NO_FENCE)
    assert sum(counter.totals) == 0 and not counter.batches and not counter.ready
    counter.add_new([(1, "inbound", "sms", "user", 4, now, 4, 10)], "full", None, 0.0, NO_FENCE)
    assert counter.totals_by_key() == {("1", "inbound", "sms", "user"): 4}
    assert counter.since == {("1", "inbound"): now.timestamp()} and not counter.pending
    # a new pair seen by a steady count waits for its counting-since; without one, now
    pairs = counter.add_new([(2, "outbound", "sms", "bot", 1, 5)], "per_series", 5, 1.0, NO_FENCE)
    assert pairs == counter.pending == {("2", "outbound")}
    counter.add_counting_since([], pairs, fallback=1_800_000_000.0)
    assert counter.since[("2", "outbound")] == 1_800_000_000.0 and not counter.pending
