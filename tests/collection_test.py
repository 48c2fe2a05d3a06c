"""Collection against a real PostgreSQL: every series equals what SQL says."""

from __future__ import annotations

import gc

import pytest
from sqlalchemy import Engine, text

from exporter.db import read_only
from exporter.memory import DEFAULT_FULL_THRESHOLD, FULL_COLLECTION_EVERY, gc_paused, thaw_heap
from tests.support import pg
from tests.support.expo import assembled, in_process, render_current, served


def _url(engine: Engine) -> str:
    return engine.url.render_as_string(hide_password=False)


def test_every_series_equals_sql(seeded: Engine) -> None:
    running = assembled(_url(seeded))
    collection, job = running.collection, running.job
    assert collection.run()
    got, want = served(collection), pg.reference_counts(seeded)
    for metric, series in want.items():
        assert got[metric] == pytest.approx(series), metric
    assert len(got["convrs_org_info"]) == 4
    assert not running.exposition.ready.is_set()  # published, not yet served
    job.render()
    assert running.exposition.ready.is_set()
    assert job.collect()  # the job's memory policy, after the first count:
    assert gc.get_freeze_count() > 0  # the first count's state is out of the collector's way
    collection.db.close()


def test_full_cyclic_collections_run_hourly_not_when_the_collector_wants(seeded: Engine) -> None:
    """After the first count the collector no longer starts full collections by itself (they
    held the GIL for up to 120 ms, several times per collection, at 290,000 series); the
    collection runs one every FULL_COLLECTION_EVERY instead, and a reload's thaw gives the
    collector back its own."""
    running = assembled(_url(seeded))
    collection, job = running.collection, running.job
    clock = [1000.0]
    job.memory.monotonic = lambda: clock[0]
    full: list[float] = []

    def watch(phase: str, info: dict[str, int]) -> None:
        if phase == "start" and info["generation"] == 2:
            full.append(clock[0])

    gc.callbacks.append(watch)
    try:
        assert job.collect()  # the first count: freezes, after one full collection
        assert gc.get_threshold()[2] > 10**6
        assert full and full[-1] == 1000.0  # (the collector may have run some before it)
        full.clear()
        clock[0] += FULL_COLLECTION_EVERY - 1
        assert job.collect()
        assert full == []  # not yet due; and none started by the collector itself
        clock[0] += 1
        assert job.collect()
        assert full == [1000.0 + FULL_COLLECTION_EVERY]
        assert gc.get_threshold()[2] > 10**6
    finally:
        gc.callbacks.remove(watch)
        thaw_heap()
        collection.db.close()
    assert gc.get_threshold()[2] == DEFAULT_FULL_THRESHOLD


def test_no_cyclic_collection_runs_during_a_collection_or_its_render(seeded: Engine) -> None:
    """Rows and lines are freed by reference counting; the collector only cost time there
    (8 of 49 ms of a steady count at 10M messages). It is back on afterwards."""
    with seeded.begin() as conn:  # thousands of series alive at once, as at scale
        conn.execute(
            text(
                "INSERT INTO organizations (id, name) SELECT o, 'Org ' || o "
                "FROM generate_series(100, 3099) o"
            )
        )
        conn.execute(
            text(
                "INSERT INTO bots (org_id, name, channel) SELECT o, 'b', 'sms' "
                "FROM generate_series(100, 3099) o"
            )
        )
    running = assembled(_url(seeded))
    collection, job = running.collection, running.job
    started: list[int] = []

    def watch(phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            started.append(info["generation"])

    assert job.collect()  # the first count: it freezes the heap, with gc.collect()
    gc.callbacks.append(watch)
    try:
        young = [tuple([i]) for i in range(5000)]  # what sets a young collection off
        assert started, "the watch sees collections the collector starts by itself"
        started.clear()
        for _ in range(3):
            assert job.collect()  # a collection and its render
        # at most the one young collection that looks at what a run left alive, as the
        # collector comes back on (without the pauses: 157 here, one per 700 objects alive)
        assert len(started) <= 3, started
        assert gc.isenabled()
    finally:
        gc.callbacks.remove(watch)
        collection.db.close()
    assert len(young) == 5000


def test_gc_pauses_nest_and_the_last_to_end_turns_it_back_on() -> None:
    assert gc.isenabled()
    with gc_paused():
        with gc_paused():
            assert not gc.isenabled()
        assert not gc.isenabled()
    assert gc.isenabled()
    gc.disable()
    try:
        with gc_paused():
            pass
        assert not gc.isenabled()  # left as it was found
    finally:
        gc.enable()


def test_repeated_statements_stay_prepared_and_are_planned_for_their_bounds(
    seeded: Engine,
) -> None:
    """Read-only transactions end with COMMIT: psycopg forgets its prepared statements at
    every ROLLBACK, so each collection parsed every statement afresh."""
    collection, _ = in_process(_url(seeded))
    for _ in range(7):  # psycopg prepares a statement at its fifth run
        assert collection.run()
    with collection.db.engine.connect() as conn, read_only(collection.db, conn):
        prepared = [
            r[0] for r in conn.execute(text("SELECT statement FROM pg_prepared_statements"))
        ]
        mode = conn.execute(text("SHOW plan_cache_mode")).scalar()
    assert any("FROM bots" in s for s in prepared), prepared
    assert any("FROM messages" in s for s in prepared), prepared
    assert mode == "force_custom_plan"
    collection.db.close()


def test_prepared_statements_can_be_turned_off_for_a_pooler(seeded: Engine) -> None:
    collection, config = in_process(_url(seeded), {"database": {"prepared_statements": False}})
    assert config.database.prepared_statements is False
    for _ in range(7):
        assert collection.run()
    with collection.db.engine.connect() as conn, read_only(collection.db, conn):
        prepared = conn.execute(text("SELECT count(*) FROM pg_prepared_statements")).scalar()
    assert prepared == 0
    assert (
        served(collection)["convrs_messages_total"]
        == pg.reference_counts(seeded)["convrs_messages_total"]
    )
    collection.db.close()


def test_new_rows_appear_and_deletes_never_lower_the_counter(seeded: Engine) -> None:
    collection, _ = in_process(_url(seeded))
    assert collection.run()
    before = served(collection)["convrs_messages_total"]
    key = ("1", "inbound", "sms", "user")
    with seeded.begin() as conn:
        conn.execute(
            text(
                "INSERT INTO messages (org_id, direction, sender_type, channel) "
                "SELECT 1, 'inbound', 'user', 'sms' FROM generate_series(1, 7)"
            )
        )
        conn.execute(text("INSERT INTO bots (org_id, name, channel) VALUES (2, 'new', 'sms')"))
    assert collection.run()
    after = served(collection)
    assert after["convrs_messages_total"][key] == before.get(key, 0) + 7
    assert after["convrs_bots"] == pytest.approx(pg.reference_counts(seeded)["convrs_bots"])

    with seeded.begin() as conn:  # retention deletes the oldest half of all messages
        conn.execute(text("DELETE FROM messages WHERE id <= (SELECT max(id) / 2 FROM messages)"))
    assert collection.run()
    assert served(collection)["convrs_messages_total"] == after["convrs_messages_total"]

    with seeded.begin() as conn:
        conn.execute(
            text(
                "INSERT INTO messages (org_id, direction, sender_type, channel) "
                "VALUES (1, 'inbound', 'user', 'sms'), (1, 'outbound', 'bot', 'sms')"
            )
        )
    assert collection.run()
    final = served(collection)["convrs_messages_total"]
    assert final[key] == after["convrs_messages_total"][key] + 1
    bot_key = ("1", "outbound", "sms", "bot")
    assert final[bot_key] == after["convrs_messages_total"].get(bot_key, 0) + 1
    collection.db.close()


def test_counting_since_is_the_oldest_message_and_never_moves(seeded: Engine) -> None:
    collection, _ = in_process(_url(seeded))
    assert collection.run()
    want = pg.reference_counts(seeded)["convrs_messages_counting_since_timestamp_seconds"]
    first = served(collection)["convrs_messages_counting_since_timestamp_seconds"]
    assert first == pytest.approx(want)
    with seeded.begin() as conn:
        conn.execute(text("DELETE FROM messages WHERE id <= (SELECT max(id) / 2 FROM messages)"))
    assert collection.run()
    assert served(collection)["convrs_messages_counting_since_timestamp_seconds"] == first
    collection.db.close()


def test_dropped_labels_are_summed_away(seeded: Engine) -> None:
    collection, _ = in_process(_url(seeded), {"labels": {"drop": ["channel", "sender"]}})
    assert collection.run()
    body = render_current(collection).text.decode()
    assert "channel=" not in body and "sender=" not in body
    with seeded.connect() as conn:
        want = {
            (str(o), d): n
            for o, d, n in conn.execute(
                text("SELECT org_id, direction, count(*) FROM messages GROUP BY 1, 2")
            )
        }
    from prometheus_client.parser import text_string_to_metric_families

    got = {
        (s.labels["org"], s.labels["direction"]): s.value
        for f in text_string_to_metric_families(body)
        for s in f.samples
        if s.name == "convrs_messages_total"
    }
    assert got == want
    collection.db.close()


def test_label_values_of_other_types_keep_their_own_text(seeded: Engine) -> None:
    """Each column's values are converted once and remembered per column: a boolean label
    beside integer org ids stays "True"/"False" (True == 1 in Python), and a value that
    cannot be remembered (an array) is still converted, each time."""
    agents = {"table": "agents", "org": "agents.org_id", "labels": {"status": "agents.disabled"}}
    bots = {"table": "bots", "org": "bots.org_id", "labels": {"channel": "ARRAY[bots.channel]"}}
    with seeded.begin() as conn:
        conn.execute(
            text("INSERT INTO agents (org_id, email, disabled) VALUES (1, 'gone@a', true)")
        )
    collection, _ = in_process(_url(seeded), {"mapping": {"agents": agents, "bots": bots}})
    for _ in range(2):  # the second reads what the first remembered
        assert collection.run()
        got = served(collection)
        with seeded.connect() as conn:
            want_agents = {
                (str(o), str(d)): float(n)
                for o, d, n in conn.execute(
                    text("SELECT org_id, disabled, count(*) FROM agents GROUP BY 1, 2")
                )
            }
            want_bots = {
                (str(o), str([c])): float(n)
                for o, c, n in conn.execute(
                    text("SELECT org_id, channel, count(*) FROM bots GROUP BY 1, 2")
                )
            }
        assert {k: v for k, v in got["convrs_agents"].items() if v} == want_agents
        assert {("1", "True"), ("1", "False")} <= set(want_agents)
        assert got["convrs_bots"] == want_bots
    collection.db.close()


def test_a_value_that_is_not_a_number_fails_its_query_not_the_collection(seeded: Engine) -> None:
    """A mapped value or timestamp that cannot be read (text where a count or a time belongs)
    fails that query alone: it is reported like any failed query, the others are served."""
    mapping = {
        "flows": {"table": "flows", "org": "flows.org_id", "value": "'many'"},
        "organizations": {
            "table": "organizations",
            "id": "organizations.id",
            "name": "organizations.name",
            "counting_since": "'not a time'",
        },
    }
    collection, _ = in_process(_url(seeded), {"mapping": mapping})
    assert collection.run() is False
    h = collection.health.registry.get_sample_value
    assert h("convrs_up") == 0
    for query in ("flows", "organizations"):
        assert h("convrs_exporter_query_success", {"query": query}) == 0
        assert h("convrs_exporter_query_errors_total", {"query": query}) == 1
    for query in ("bots", "agents", "users", "messages"):
        assert h("convrs_exporter_query_success", {"query": query}) == 1
    assert h("convrs_exporter_collections_total", {"result": "error"}) == 1
    got, want = served(collection), pg.reference_counts(seeded)
    assert got["convrs_bots"] == pytest.approx(want["convrs_bots"])
    assert got["convrs_messages_total"] == pytest.approx(want["convrs_messages_total"])
    assert got["convrs_flows"] == {}
    collection.db.close()


def test_an_orgs_own_counting_since_holds_while_the_organizations_query_fails(
    seeded: Engine,
) -> None:
    """Where the mapping reads counting-since from the organizations table, a failing
    organizations query (its series withheld past stale_after) does not make counting-since
    fall back to the oldest message counted, to jump back on recovery."""
    with seeded.begin() as conn:
        conn.execute(text("CREATE TABLE org_switch (on_ int)"))
        conn.execute(text("UPDATE organizations SET created_at = '2020-01-02T03:04:05Z'"))
    organizations = {
        "table": "organizations",
        "id": "organizations.id",
        "name": "organizations.name",
        "counting_since": "organizations.created_at",
        "filter": "EXISTS (SELECT 1 FROM org_switch) OR NOT EXISTS (SELECT 1 FROM org_switch)",
    }
    collection, config = in_process(_url(seeded), {"mapping": {"organizations": organizations}})
    clock = [1000.0]
    collection.monotonic = lambda: clock[0]
    assert collection.run()
    since = served(collection)["convrs_messages_counting_since_timestamp_seconds"]
    own = 1577934245.0  # 2020-01-02T03:04:05Z
    assert since and set(since.values()) == {own}
    with seeded.begin() as conn:
        conn.execute(text("DROP TABLE org_switch"))
    clock[0] += config.collection.stale_after_seconds(config.collection.interval) + 1
    assert collection.run() is False  # past stale_after: the organizations' series withheld
    got = served(collection)
    assert got["convrs_org_info"] == {}
    assert got["convrs_messages_counting_since_timestamp_seconds"] == since
    collection.db.close()


def test_a_metric_with_its_own_statement_timeout_may_take_longer(seeded: Engine) -> None:
    slow = "SELECT org_id AS org, count(*) AS value FROM flows, pg_sleep(0.4) GROUP BY 1"
    base = {"database": {"statement_timeout": "200ms"}}
    own = {**base, "mapping": {"flows": {"query": slow, "statement_timeout": "3s"}}}
    collection, _ = in_process(_url(seeded), own)
    assert collection.run()
    assert served(collection)["convrs_flows"] == pytest.approx(
        pg.reference_counts(seeded)["convrs_flows"]
    )
    collection.db.close()
    collection, _ = in_process(_url(seeded), {**base, "mapping": {"flows": {"query": slow}}})
    assert collection.run() is False
    h = collection.health.registry.get_sample_value
    assert h("convrs_exporter_query_success", {"query": "flows"}) == 0
    assert h("convrs_exporter_query_success", {"query": "messages"}) == 1
    collection.db.close()
