"""The state file: a restart resumes counting where it stopped (no recount, no counter
reset); a corrupt, truncated, foreign, changed-mapping or future-version file is ignored
and the whole table is counted. On a real PostgreSQL."""

from __future__ import annotations

import base64
import json
import logging
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Engine, event, text

from exporter import demo
from tests.conftest import SMALL_ORGS
from tests.support import pg
from tests.support.expo import assembled, served


def _url(engine: Engine) -> str:
    return engine.url.render_as_string(hide_password=False)


def _config(state: Path, **collection: Any) -> dict[str, Any]:
    return {"collection": {"state_file": str(state), "settle_after": "1ms", **collection}}


def _add_messages(engine: Engine, n: int) -> None:
    with engine.begin() as conn:
        conn.execute(
            text(
                "INSERT INTO messages (org_id, direction, sender_type, channel) "
                "SELECT 1 + g % 3, 'inbound', 'user', 'sms' FROM generate_series(1, :n) g"
            ),
            {"n": n},
        )


def _saved(seeded: Engine, state: Path) -> dict[tuple[str, ...], float]:
    """An exporter that counted, collected again with new rows, and stopped (saving)."""
    first = assembled(_url(seeded), _config(state))
    assert first.job.collect()
    _add_messages(seeded, 7)
    assert first.job.collect()  # a batch not settled yet goes into the file too
    first.job.save_state()
    totals = served(first.collection)["convrs_messages_total"]
    first.db.close()
    assert state.exists()
    return totals


def test_a_restart_resumes_from_the_state_file_without_a_recount(
    seeded: Engine, tmp_path: Path
) -> None:
    state = tmp_path / "state.json"
    before = _saved(seeded, state)
    _add_messages(seeded, 11)  # while it was stopped
    second = assembled(_url(seeded), _config(state))
    assert second.collection.counter.ready  # resumed: no first count to wait for
    full_counts: list[str] = []

    def watch(conn: object, cursor: object, statement: str, *_: object) -> None:
        if "first_ts" in statement and "min(messages.created_at) AS first_ts, max" in statement:
            full_counts.append(statement)

    event.listen(second.db.engine, "before_cursor_execute", watch)
    assert second.job.collect() and second.exposition.ready.is_set()
    event.remove(second.db.engine, "before_cursor_execute", watch)
    assert full_counts == []  # no count of the whole table (nor of a range of it)
    after = served(second.collection)
    want = pg.reference_counts(seeded)
    assert after["convrs_messages_total"] == pytest.approx(want["convrs_messages_total"])
    assert all(after["convrs_messages_total"][k] >= v for k, v in before.items())  # no reset
    assert after["convrs_messages_counting_since_timestamp_seconds"] == pytest.approx(
        want["convrs_messages_counting_since_timestamp_seconds"]
    )
    second.db.close()


def _corrupt(path: Path, _: Engine) -> str:
    path.write_bytes(b"\x00\xffnot json at all")
    return "not JSON (corrupt or truncated)"


def _truncated(path: Path, _: Engine) -> str:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    return "not JSON (corrupt or truncated)"


def _future(path: Path, _: Engine) -> str:
    data = json.loads(path.read_text())
    data["version"] = 99
    path.write_text(json.dumps(data))
    return "version 99, this exporter reads 1"


def _inconsistent(path: Path, _: Engine) -> str:
    data = json.loads(path.read_text())
    words = base64.b64decode(data["totals"])
    data["totals"] = base64.b64encode(words[:-8]).decode()  # one series' total short
    path.write_text(json.dumps(data))
    return "inconsistent: keys, totals and gone differ in length"


@pytest.mark.parametrize("damage", [_corrupt, _truncated, _future, _inconsistent])
def test_a_damaged_state_file_is_ignored_and_the_table_counted(
    damage: Any, seeded: Engine, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    state = tmp_path / "state.json"
    _saved(seeded, state)
    reason = damage(state, seeded)
    with caplog.at_level(logging.WARNING, logger="convrs_exporter"):
        second = assembled(_url(seeded), _config(state))
    assert not second.collection.counter.ready
    ignored = [r for r in caplog.records if r.getMessage().startswith("state file ignored")]
    assert [r.reason for r in ignored] == [reason]  # type: ignore[attr-defined]
    assert second.job.collect()
    want = pg.reference_counts(seeded)["convrs_messages_total"]
    assert served(second.collection)["convrs_messages_total"] == pytest.approx(want)
    second.db.close()


def test_a_state_file_of_another_database_or_mapping_is_ignored(
    seeded: Engine, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    state = tmp_path / "state.json"
    _saved(seeded, state)
    with pg.throwaway_database() as other_url:
        other = pg.engine(other_url)
        demo.seed(other, orgs=SMALL_ORGS, seed=2)
        for engine, raw in (
            (other, _config(state)),  # a foreign database
            (seeded, {**_config(state), "labels": {"drop": ["sender"]}}),  # a new mapping
        ):
            caplog.clear()
            with caplog.at_level(logging.WARNING, logger="convrs_exporter"):
                running = assembled(_url(engine), raw)
            assert not running.collection.counter.ready
            assert [r.reason for r in caplog.records] == [  # type: ignore[attr-defined]
                "written for another database, mapping or shard"
            ]
            assert running.job.collect()
            got = sum(served(running.collection)["convrs_messages_total"].values())
            with engine.connect() as conn:
                assert got == conn.execute(text("SELECT count(*) FROM messages")).scalar_one()
            running.db.close()
        other.dispose()
