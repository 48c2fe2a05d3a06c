"""Tables of any size: the first count and reconciliation read key ranges, each well within
the statement timeout, adapting each range to what the last one cost; a range cut by the
timeout is retried smaller, not the whole count. On a real PostgreSQL."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterator

import pytest
from sqlalchemy import Connection, Engine, event, text
from sqlalchemy.exc import OperationalError

from exporter.messages import scan
from exporter.schema import metadata
from tests.support.expo import assembled, in_process, served
from tests.support.procs import wait_until

ROWS = 1_000_000


@pytest.fixture
def large(pg_engine: Engine) -> Engine:
    metadata.create_all(pg_engine)
    with pg_engine.begin() as conn:
        conn.execute(
            text(
                "INSERT INTO organizations (id, name) "
                "SELECT o, 'Org ' || o FROM generate_series(1, 20) o"
            )
        )
        conn.execute(
            text(
                "INSERT INTO messages (org_id, direction, sender_type, channel, created_at) "
                "SELECT 1 + g % 20, CASE WHEN g % 2 = 0 THEN 'inbound' ELSE 'outbound' END, "
                "CASE WHEN g % 2 = 0 THEN 'user' ELSE 'bot' END, "
                "(ARRAY['sms','line','web'])[1 + g % 3], "
                "timestamptz '2024-01-01' + g * interval '1 second' "
                f"FROM generate_series(1, {ROWS}) g"
            )
        )
        conn.execute(text("ANALYZE messages"))
    return pg_engine


def _url(engine: Engine) -> str:
    return engine.url.render_as_string(hide_password=False)


def _sql_counts(engine: Engine) -> dict[tuple[str, ...], float]:
    with engine.connect() as conn:
        rows = conn.execute(
            text(
                "SELECT org_id::text, direction, channel, sender_type, count(*) FROM messages "
                "GROUP BY 1, 2, 3, 4"
            )
        )
        return {tuple(r[:4]): float(r[4]) for r in rows}


TIMEOUT = "80ms"


def test_a_first_count_longer_than_the_timeout_is_read_in_ranges(
    large: Engine, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(scan, "LOG_EVERY", 0.0)
    coll, _ = in_process(_url(large), {"database": {"statement_timeout": TIMEOUT}})
    # one unbounded count of the table is cut by this timeout...
    with large.connect() as conn, pytest.raises(OperationalError, match="statement timeout"):
        conn.execute(text(f"SET statement_timeout = '{TIMEOUT}'"))
        conn.execute(text(coll.specs.messages.sql.full), {"after": -1, "upto": 10**12})
    ranges: list[dict[str, int]] = []
    sabotaged: list[dict[str, int]] = []
    connections: set[int] = set()
    lock = threading.Lock()

    def watch(
        conn: Connection, cursor: object, statement: str, params: object, *_: object
    ) -> tuple[str, object]:
        if statement.startswith("SELECT messages.org_id AS org") and isinstance(params, dict):
            with lock:  # two ranges are read at once, from two threads
                ranges.append(dict(params))
                connections.add(id(conn.connection.driver_connection))
                if len(ranges) == 3 and not sabotaged:  # this range is cut by the timeout
                    sabotaged.append(dict(params))
                    statement = f"SELECT * FROM ({statement}) s WHERE pg_sleep(0.2) IS NOT NULL"
        return statement, params

    event.listen(coll.db.engine, "before_cursor_execute", watch, retval=True)
    with caplog.at_level(logging.INFO, logger="convrs_exporter"):
        for _ in range(10):
            assert coll.run()
            if coll.counter.ready:
                break
    event.remove(coll.db.engine, "before_cursor_execute", watch)
    assert coll.counter.ready
    assert served(coll)["convrs_messages_total"] == _sql_counts(large)
    assert sum(served(coll)["convrs_messages_total"].values()) == ROWS
    # in ranges, two read at once on two connections, each starting where an earlier one
    # ended; the cut one read again, smaller (the one under way beside it dropped)
    assert len(ranges) > 4 and len(connections) == 2
    start = min(r["after"] for r in ranges)
    ends = {start} | {r["upto"] for r in ranges}
    assert all(r["after"] in ends for r in ranges)
    (cut,) = sabotaged
    assert any(r["after"] == cut["after"] and r["upto"] < cut["upto"] for r in ranges)
    assert max(r["upto"] for r in ranges) == ROWS
    messages = [r.getMessage() for r in caplog.records]
    assert "a range of messages took too long; trying a smaller one" in messages
    progress = [r for r in caplog.records if r.getMessage() == "counting messages: first count"]
    assert progress and all(0 < r.rows <= ROWS for r in progress)  # type: ignore[attr-defined]
    h = coll.health.registry.get_sample_value
    assert h("convrs_exporter_messages_scan_rows", {"phase": "first count"}) == ROWS
    assert h("convrs_exporter_messages_scan_estimated_rows", {"phase": "first count"}) == ROWS
    # counting-since is the oldest message of each pair, over every range
    since = served(coll)["convrs_messages_counting_since_timestamp_seconds"]
    assert since[("2", "outbound")] == 1704067200.0 + 1
    assert since[("1", "inbound")] == 1704067200.0 + 20
    coll.db.close()


@pytest.fixture
def small_ranges(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.setattr(scan, "FIRST_STEP", 10)
    monkeypatch.setattr(scan, "GROWTH", 1.0)
    yield


INSERT = (
    "INSERT INTO messages (id, org_id, direction, sender_type, channel) "
    "VALUES (:id, 1, 'inbound', 'user', 'sms')"
)
KEY = ("1", "inbound", "sms", "user")


def test_a_reconciliation_in_turns_finds_what_was_missed_below_the_watermark(
    pg_engine: Engine, small_ranges: None
) -> None:
    """A reconciliation reads a few ranges per turn, collections running between turns: a
    row committed below the watermark meanwhile is found and added once; a deletion never
    lowers the total."""
    metadata.create_all(pg_engine)
    with pg_engine.begin() as conn:
        conn.execute(text("INSERT INTO organizations (id, name) VALUES (1, 'A')"))
        for i in range(2, 101, 2):  # even ids: gaps for a late odd one
            conn.execute(text(INSERT), {"id": i})
    coll, _ = in_process(_url(pg_engine), {"collection": {"settle_after": "1ms"}})
    for _ in range(3):
        assert coll.run()
    assert coll.counter.watermark == 100
    coll.messages.budget = 0.0  # one range (10 keys) a turn
    assert coll.reconcile(to_the_end=False) is None  # one turn: keys up to 11
    with pg_engine.begin() as conn:
        conn.execute(  # committed below the watermark, in a range not yet read
            text(
                "INSERT INTO messages (id, org_id, direction, sender_type, channel) "
                "VALUES (51, 1, 'outbound', 'bot', 'sms')"
            )
        )
        conn.execute(text("DELETE FROM messages WHERE id IN (2, 90)"))
        conn.execute(text(INSERT), {"id": 101})  # and a new one above it
    turns = 1
    found = None
    while found is None:
        assert coll.run()
        found = coll.reconcile(to_the_end=False)
        turns += 1
    assert found == 1 and turns == 10
    late = ("1", "outbound", "sms", "bot")
    want = {KEY: 51.0, late: 1.0}  # 50 and 101; the late one; deletions lower nothing
    assert served(coll)["convrs_messages_total"] == want
    assert coll.reconcile() == 0  # to the end at once: nothing more to find
    assert served(coll)["convrs_messages_total"] == want
    coll.db.close()


def test_a_first_count_cut_by_a_reload_begins_again_and_counts_each_row_once(
    pg_engine: Engine, small_ranges: None
) -> None:
    """A reload that keeps the message counts (same mapping, database and shard) while the
    first count is under way does not carry its half-counted totals over."""
    from exporter.assembly import assemble

    metadata.create_all(pg_engine)
    with pg_engine.begin() as conn:
        conn.execute(text("INSERT INTO organizations (id, name) VALUES (1, 'A')"))
        for i in range(1, 101):
            conn.execute(text(INSERT), {"id": i})
    first = assembled(_url(pg_engine))
    first.collection.messages.budget = 0.0  # one range of 10 keys a collection
    assert first.collection.run() and not first.collection.counter.ready
    assert sum(first.collection.counter.totals) == 10
    again = assemble(first.config, first.db, counter=first.collection.counter)
    assert again.collection.counter is not first.collection.counter
    for _ in range(3):
        assert again.collection.run()
    assert served(again.collection)["convrs_messages_total"] == {KEY: 100.0}
    first.db.close()


def test_stopping_cancels_both_ranges_under_way(pg_engine: Engine, small_ranges: None) -> None:
    """A first count reads two ranges at once, on two connections: a stop cancels the
    statements on both, at once, and nothing of theirs is counted."""
    metadata.create_all(pg_engine)
    with pg_engine.begin() as conn:
        conn.execute(text("INSERT INTO organizations (id, name) VALUES (1, 'A')"))
        for i in range(1, 101):
            conn.execute(text(INSERT), {"id": i})
    coll, _ = in_process(_url(pg_engine), {"database": {"statement_timeout": "25s"}})
    running: list[int] = []

    def slow(
        conn: Connection, cursor: object, statement: str, params: object, *_: object
    ) -> tuple[str, object]:
        if statement.startswith("SELECT messages.org_id AS org"):
            running.append(id(conn))
            statement = f"SELECT * FROM ({statement}) s WHERE pg_sleep(20) IS NOT NULL"
        return statement, params

    event.listen(coll.db.engine, "before_cursor_execute", slow, retval=True)
    result: list[bool] = []
    worker = threading.Thread(target=lambda: result.append(coll.run()))
    worker.start()
    wait_until(lambda: _busy(pg_engine) == 2, what="two ranges under way")
    began = time.monotonic()
    coll.cancel()
    worker.join(10)
    took = time.monotonic() - began
    assert not worker.is_alive() and result == [False]
    assert took < 5, f"stopping took {took:.1f} s"
    assert len(set(running)) == 2
    assert not coll.counter.ready and sum(coll.counter.totals) == 0
    success = coll.health.registry.get_sample_value
    assert success("convrs_exporter_query_success", {"query": "messages"}) == 0
    wait_until(lambda: _busy(pg_engine) == 0, what="no statement left running")
    coll.db.close()


def _busy(engine: Engine) -> int:
    """The exporter's sessions in this database running a statement."""
    with engine.connect() as conn:
        return int(
            conn.execute(
                text(
                    "SELECT count(*) FROM pg_stat_activity WHERE application_name = "
                    "'convrs-exporter' AND datname = current_database() AND state = 'active'"
                )
            ).scalar_one()
        )


def test_a_range_cut_by_the_timeout_is_read_again_smaller_than_it_was() -> None:
    """Two ranges are planned at once: the second with the step before the first was
    counted, which then grew the step. When the second is cut, the next try is smaller
    than the range that was cut, not half the grown step (which was no smaller)."""
    from contextlib import ExitStack

    from exporter.dialects import NO_FENCE
    from exporter.errors import QueryTimeout
    from exporter.messages.ranges import Opened, read_ranges
    from exporter.messages.scan import Scan
    from exporter.messages.sql import KeyRange

    s = Scan("first count", 0, 1_000_000, 0.0)
    s.step = 100_000
    tried: list[KeyRange] = []
    cut: list[KeyRange] = []

    def open_range(conn: object, keys: KeyRange, streams: int) -> Opened:
        tried.append(keys)
        if keys.after == 100_000 and not cut:
            cut.append(keys)
            raise QueryTimeout("messages", "statement timeout (1s) exceeded")
        took = 0.01  # fast: the step grows fourfold after each range
        return Opened(keys, iter(()), took, NO_FENCE, ExitStack())

    def fold(opened: Opened) -> int:
        return opened.keys.upto - opened.keys.after

    conns = [object(), object()]
    read_ranges(s, conns, open_range, fold, 60.0, 1.0, lambda: False, lambda: 0.0)  # type: ignore[arg-type]
    assert s.finished
    (failed,) = cut
    again = next(k for k in tried if k.after == failed.after and k is not failed)
    assert again.upto - again.after < failed.upto - failed.after
