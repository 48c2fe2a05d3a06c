"""MySQL and MariaDB as first-class databases, on the real MariaDB 10.11 that ``make test``
starts: plain URLs, the demo seed and the reference mapping unchanged, the statement
timeout, a stop that kills the running query, a reader without PROCESS, naive timestamps
in another time zone, the shard hash, the state file, the README's user. (The counting
tests that run on both servers, from the same code, are in counting_test.py and
shard_test.py.)"""

from __future__ import annotations

import datetime as dt
import re
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pymysql
import pytest
from sqlalchemy import Engine, text

from exporter import demo
from exporter.collection import Collection
from exporter.dialects.mysql import CACHE_IDLE, MySQL, TrxProbe
from exporter.mapping import Shard, shard_of
from exporter.schema import metadata
from tests.conftest import SMALL_ORGS
from tests.support.expo import assembled, in_process, parse, served
from tests.support.procs import Exporter, run_cli, wait_until
from tests.support.servers import MARIADB, MARIADB_ADMIN

INSERT = (
    "INSERT INTO messages (org_id, direction, sender_type, channel) "
    "VALUES (1, 'inbound', 'user', 'sms') RETURNING id"
)
KEY = ("1", "inbound", "sms", "user")


@pytest.fixture
def maria() -> Iterator[Engine]:
    with MARIADB.database() as url:
        engine = MARIADB.engine(url)
        yield engine
        engine.dispose()


@pytest.fixture
def seeded_maria(maria: Engine) -> Engine:
    demo.seed(maria, orgs=SMALL_ORGS, seed=1)
    return maria


def _url(engine: Engine, scheme: str = "mysql") -> str:
    """The plain URL a user writes: ``mysql://`` or ``mariadb://``, no driver named."""
    return f"{scheme}://root@127.0.0.1:3306/{engine.url.database}"


def reference_counts(engine: Engine) -> dict[str, dict[tuple[str, ...], float]]:
    """Every exported series of the reference schema, counted directly, in MySQL's SQL."""
    orgs = "SELECT id FROM organizations"
    queries = {
        "convrs_org_info": "SELECT id, name, 1 FROM organizations",
        "convrs_bots": "SELECT org_id, channel, count(*) FROM bots GROUP BY 1, 2",
        "convrs_agents": (
            "SELECT o.id, s.status, count(a.id) FROM organizations o "
            "CROSS JOIN (SELECT 'active' AS status UNION ALL SELECT 'disabled') s "
            "LEFT JOIN agents a ON a.org_id = o.id AND "
            "(CASE WHEN a.disabled THEN 'disabled' ELSE 'active' END) = s.status GROUP BY 1, 2"
        ),
        "convrs_flows": f"SELECT o.id, count(f.id) FROM ({orgs}) o "
        "LEFT JOIN flows f ON f.org_id = o.id GROUP BY 1",
        "convrs_users": f"SELECT o.id, count(u.id) FROM ({orgs}) o "
        "LEFT JOIN users u ON u.org_id = o.id GROUP BY 1",
        "convrs_messages_total": "SELECT org_id, direction, channel, sender_type, count(*) "
        "FROM messages GROUP BY 1, 2, 3, 4",
        "convrs_messages_counting_since_timestamp_seconds": (
            "SELECT org_id, direction, UNIX_TIMESTAMP(min(created_at)) FROM messages GROUP BY 1, 2"
        ),
    }
    out: dict[str, dict[tuple[str, ...], float]] = {}
    with engine.connect() as conn:
        conn.execute(text("SET time_zone = '+00:00'"))  # created_at holds UTC
        for metric, sql in queries.items():
            out[metric] = {
                tuple(str(v) for v in r[:-1]): float(r[-1]) for r in conn.execute(text(sql))
            }
    return out


def run_n(coll: Collection, n: int = 3) -> None:
    for _ in range(n):
        time.sleep(1.5 * CACHE_IDLE)  # see counting_test.run_n
        assert coll.run()


# --- URLs, driver, the demo and the reference mapping ------------------------------------


@pytest.mark.parametrize("scheme", ["mysql", "mariadb", "mysql+pymysql"])
def test_plain_urls_serve_the_reference_mapping_unchanged(
    seeded_maria: Engine, scheme: str
) -> None:
    coll, _ = in_process(_url(seeded_maria, scheme))
    assert isinstance(coll.db.dialect, MySQL)
    assert coll.db.engine.url.drivername.endswith("+pymysql")
    assert coll.run()
    got, want = served(coll), reference_counts(seeded_maria)
    for metric, series in want.items():
        assert got[metric] == series, metric
    assert sum(got["convrs_messages_total"].values()) == sum(n for _, n in SMALL_ORGS)
    coll.db.close()


def test_demo_seed_then_serve_on_mariadb(maria: Engine, tmp_path: Path) -> None:
    """``--demo.seed`` fills a MariaDB database; the exporter then serves what SQL counts,
    over HTTP, with the reference mapping as shipped."""
    env = {"CONVRS_EXPORTER_DATABASE_URL": _url(maria)}
    seeded = run_cli("--demo.seed", env=env)
    assert seeded.returncode == 0, seeded.stderr
    assert seeded.stdout.startswith("seeded 6 organizations, ")
    again = run_cli("--demo.seed", env=env)  # idempotent
    assert again.returncode == 0 and "already" in again.stdout + again.stderr
    exp = Exporter(tmp_path, {}, env=env).start()
    try:
        body = parse(exp.metrics())
    finally:
        assert exp.stop() == 0, exp.log()
    want = reference_counts(maria)
    for metric in ("convrs_bots", "convrs_agents", "convrs_flows", "convrs_users"):
        assert body[metric] == want[metric], metric
    assert body["convrs_messages_total"] == want["convrs_messages_total"]


def test_a_missing_driver_exits_2_naming_what_to_install(tmp_path: Path) -> None:
    """PyMySQL is an optional dependency (``[mysql]``): without it, one line, exit 2."""
    blocker = tmp_path / "pymysql.py"
    blocker.write_text("raise ImportError('No module named pymysql')\n")
    result = run_cli(
        "--config.check",
        env={"CONVRS_EXPORTER_DATABASE_URL": "mysql://u:s3cret@127.0.0.1:3306/db"},
        pythonpath=str(tmp_path),
    )
    assert result.returncode == 2, result.stderr
    (line,) = result.stderr.splitlines()
    assert "driver is not installed: pip install 'convrs-exporter[mysql]'" in line
    assert "s3cret" not in line + result.stdout


# --- the statement timeout and a stop -----------------------------------------------------


def _sleepy(maria: Engine, seconds: float) -> None:
    with maria.begin() as conn:
        conn.execute(text("CREATE TABLE IF NOT EXISTS ctl (sleep_s double NOT NULL)"))
        conn.execute(text("DELETE FROM ctl"))
        conn.execute(text("INSERT INTO ctl VALUES (:s)"), {"s": seconds})


SLOW_FLOWS = {
    "query": "SELECT flows.org_id AS org, count(*) AS value FROM flows "
    "WHERE (SELECT SLEEP(sleep_s) FROM ctl) = 0 GROUP BY 1"
}


def test_a_sleeping_query_is_cut_by_the_statement_timeout(seeded_maria: Engine) -> None:
    """MariaDB's max_statement_time (MySQL: max_execution_time) bounds every statement: a
    flows query that sleeps 10 s fails after 2 s, named; the other metrics are served."""
    _sleepy(seeded_maria, 10)
    coll, _ = in_process(
        _url(seeded_maria),
        {"database": {"statement_timeout": "2s"}, "mapping": {"flows": SLOW_FLOWS}},
    )
    began = time.monotonic()
    assert not coll.run()
    took = time.monotonic() - began
    assert 1.9 < took < 5, f"the collection took {took:.1f} s"
    h = coll.health.registry.get_sample_value
    assert h("convrs_exporter_query_success", {"query": "flows"}) == 0
    assert h("convrs_exporter_query_success", {"query": "users"}) == 1
    assert coll._failing["flows"] == "statement timeout (2s) exceeded"
    assert served(coll)["convrs_users"] == reference_counts(seeded_maria)["convrs_users"]
    _sleepy(seeded_maria, 0)
    assert coll.run()
    assert served(coll)["convrs_flows"] == reference_counts(seeded_maria)["convrs_flows"]
    coll.db.close()


def test_a_stop_kills_the_running_query(seeded_maria: Engine) -> None:
    _sleepy(seeded_maria, 30)
    coll, _ = in_process(
        _url(seeded_maria),
        {"database": {"statement_timeout": "25s"}, "mapping": {"flows": SLOW_FLOWS}},
    )
    result: list[bool] = []
    worker = threading.Thread(target=lambda: result.append(coll.run()))
    worker.start()
    wait_until(lambda: _sleeping(seeded_maria) == 1, what="the sleeping query")
    began = time.monotonic()
    coll.cancel()
    worker.join(10)
    assert not worker.is_alive() and result == [False]
    assert time.monotonic() - began < 3
    assert coll._failing["flows"] == "cancelled: the exporter is stopping"
    assert _sleeping(seeded_maria) == 0  # killed on the server, not left to run out
    coll.db.close()


def _sleeping(engine: Engine) -> int:
    with engine.connect() as conn:
        return int(
            conn.execute(
                text(
                    "SELECT count(*) FROM information_schema.processlist WHERE db = DATABASE() "
                    "AND info LIKE '%SLEEP(sleep_s) FROM ctl) = 0%' AND id <> CONNECTION_ID()"
                )
            ).scalar_one()
        )


# --- settling without PROCESS -------------------------------------------------------------


def test_without_process_a_late_commit_waits_for_the_reconciliation(maria: Engine) -> None:
    """A reader without the PROCESS privilege cannot see InnoDB's open transactions: a
    transaction held past settle_after is settled past (time alone guards it), and the
    reconciliation finds its row. With PROCESS it would wait (counting_test)."""
    metadata.create_all(maria)
    with maria.begin() as conn:
        conn.execute(text("INSERT INTO organizations (id, name) VALUES (1, 'A')"))
    with MARIADB.reader(maria, sees_others=False) as url:
        coll, _ = in_process(url, {"collection": {"settle_after": "1ms"}})
        with coll.db.engine.connect() as conn:
            probe = coll.db.dialect.probe(conn)
        assert isinstance(probe, TrxProbe) and not probe.sees
        late = MARIADB.writer(maria)
        (low,) = late.execute(INSERT).fetchone()
        with maria.begin() as conn:
            conn.execute(text(INSERT))
        run_n(coll)
        assert coll.counter.watermark > low  # settled past the open transaction's id
        late.commit()
        late.close()
        run_n(coll)
        assert served(coll)["convrs_messages_total"] == {KEY: 1.0}  # the documented gap
        assert coll.reconcile() == 1
        assert served(coll)["convrs_messages_total"] == {KEY: 2.0}
        coll.db.close()


# --- naive timestamps in another time zone ------------------------------------------------


def test_naive_timestamps_in_another_zone_give_the_right_counting_since(maria: Engine) -> None:
    """The platform writes local wall-clock times (its sessions in +05:30) into DATETIME
    (naive) columns: with ``database.timezone: "+05:30"`` counting-since is the true
    instant; with the default (UTC) it would be 5.5 hours late."""
    metadata.create_all(maria)
    writer = pymysql.connect(**MARIADB_ADMIN, database=maria.url.database, autocommit=True)
    with writer.cursor() as cur:
        cur.execute("SET time_zone = '+05:30'")
        cur.execute("INSERT INTO organizations (id, name, created_at) VALUES (1, 'A', NOW())")
        cur.execute(
            "INSERT INTO messages (org_id, direction, sender_type, channel, created_at) "
            "VALUES (1, 'inbound', 'user', 'sms', NOW())"
        )
        cur.execute("SELECT UNIX_TIMESTAMP(NOW())")
        (instant,) = cur.fetchone()
    writer.close()
    local = in_process(_url(maria), {"database": {"timezone": "+05:30"}})[0]
    assert local.run()
    since = served(local)["convrs_messages_counting_since_timestamp_seconds"][("1", "inbound")]
    assert abs(since - float(instant)) <= 1
    assert abs(since - dt.datetime.now(dt.UTC).timestamp()) < 60
    utc = in_process(_url(maria))[0]
    assert utc.run()
    wrong = served(utc)["convrs_messages_counting_since_timestamp_seconds"][("1", "inbound")]
    assert wrong - since == 5.5 * 3600
    local.db.close()
    utc.db.close()


def test_a_named_zone_the_server_does_not_know_is_a_configuration_error(maria: Engine) -> None:
    """A named zone needs the server's time zone tables (this MariaDB has none loaded):
    the start-up check says so and exits 2, rather than read timestamps wrong."""
    result = run_cli(
        "--config.check",
        env={
            "CONVRS_EXPORTER_DATABASE_URL": _url(maria),
            "CONVRS_EXPORTER_DATABASE_TIMEZONE": "Asia/Kolkata",
        },
    )
    assert result.returncode == 2, result.stdout + result.stderr
    assert "Unknown or incorrect time zone: 'Asia/Kolkata'" in result.stderr


# --- shards -------------------------------------------------------------------------------


def test_the_sql_hash_equals_the_python_hash(maria: Engine) -> None:
    shard = Shard(1, 7, MySQL())
    cond = shard.condition("v")
    with maria.connect() as conn:
        for v in ["1", "42", "9999999", "org-a", "Zürich"]:
            sql = f"SELECT {cond} FROM (SELECT CAST(:v AS CHAR) AS v) q"
            assert bool(conn.execute(text(sql), {"v": v}).scalar_one()) == (shard_of(v, 7) == 1)


# --- a restart from the state file ----------------------------------------------------------


def test_a_restart_resumes_from_the_state_file(seeded_maria: Engine, tmp_path: Path) -> None:
    """The state file works on MariaDB as on PostgreSQL: the fences (the database's clock)
    are saved and read back, and the restart counts only what came meanwhile."""
    state = tmp_path / "state.json"
    config = {"collection": {"state_file": str(state), "settle_after": "1ms"}}

    def add(n: int) -> None:
        with seeded_maria.begin() as conn:
            for _ in range(n):
                conn.execute(text(INSERT))

    first = assembled(_url(seeded_maria), config)
    assert first.job.collect()
    add(7)
    assert first.job.collect()  # a batch not settled yet goes into the file too
    first.job.save_state()
    before = served(first.collection)["convrs_messages_total"]
    first.db.close()
    add(11)  # while it was stopped
    second = assembled(_url(seeded_maria), config)
    assert second.collection.counter.ready  # resumed: no first count to wait for
    assert second.collection.counter.batches  # with its fences, read back
    assert second.job.collect()
    after = served(second.collection)["convrs_messages_total"]
    assert after == reference_counts(seeded_maria)["convrs_messages_total"]
    assert after[KEY] == before[KEY] + 11
    second.db.close()


# --- the README's read-only user --------------------------------------------------------------


def readme_user_sql(database: str, user: str, password: str) -> list[str]:
    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text()
    found = re.search(
        r"```sql\n(-- convrs-exporter: read-only user \(MySQL, MariaDB\)\n.*?-- end of user)\n```",
        readme,
        re.S,
    )
    assert found, "README lacks the MySQL read-only user snippet"
    sql = (
        found.group(1)
        .replace("convrs_exporter", user)
        .replace("'change-me'", f"'{password}'")
        .replace("ON convrs.*", f"ON `{database}`.*")
    )
    lines = [line for line in sql.splitlines() if not line.startswith("--")]
    return [s.strip() for s in "\n".join(lines).split(";") if s.strip()]


def test_exporter_runs_as_the_readme_read_only_user(seeded_maria: Engine, tmp_path: Path) -> None:
    """The README's user, exactly: it reads every metric, sees InnoDB's open transactions
    (PROCESS), cannot write, and its password appears nowhere in the log."""
    user, password = f"convrs_exporter_{uuid.uuid4().hex[:8]}", uuid.uuid4().hex
    statements = readme_user_sql(str(seeded_maria.url.database), user, password)
    assert [s.split()[0] for s in statements] == ["CREATE", "GRANT", "GRANT"]
    admin = pymysql.connect(**MARIADB_ADMIN, autocommit=True)
    try:
        with admin.cursor() as cur:
            for statement in statements:
                cur.execute(statement)
        url = f"mysql://{user}:{password}@127.0.0.1:3306/{seeded_maria.url.database}"
        coll, _ = in_process(url)
        with coll.db.engine.connect() as conn:
            probe = coll.db.dialect.probe(conn)
        assert isinstance(probe, TrxProbe) and probe.sees
        coll.db.close()
        exp = Exporter(tmp_path, {}, env={"CONVRS_EXPORTER_DATABASE_URL": url}).start()
        try:
            body = parse(exp.metrics())
        finally:
            assert exp.stop() == 0, exp.log()
        want = reference_counts(seeded_maria)
        for metric in ("convrs_bots", "convrs_agents", "convrs_flows", "convrs_users"):
            assert body[metric] == want[metric], metric
        assert body["convrs_messages_total"] == want["convrs_messages_total"]
        assert password not in exp.log()
        with pytest.raises(pymysql.err.OperationalError, match="command denied"):
            refused = pymysql.connect(
                host="127.0.0.1", user=user, password=password, database=seeded_maria.url.database
            )
            with refused.cursor() as cur:
                cur.execute("INSERT INTO flows (org_id, name) VALUES (1, 'pwned')")
    finally:
        with admin.cursor() as cur:
            cur.execute(f"DROP USER IF EXISTS '{user}'@'%'")
        admin.close()


# --- settling: the probe's time zone and writers from other schemas ------------------------


@pytest.mark.parametrize("timezone", ["-05:00", "+05:30"])
@pytest.mark.parametrize("writer_schema", ["this", "another"])
def test_an_open_writer_holds_the_watermark_whatever_its_schema_and_zone(
    maria: Engine, timezone: str, writer_schema: str
) -> None:
    """InnoDB reports when a transaction began in the server's own zone, not the session's:
    west of it, read in the session's zone, a transaction that began before the fence
    looked younger and the batch settled past its id. A writer whose default database is
    another one, writing this one's table by its qualified name, holds it back too."""
    metadata.create_all(maria)
    with maria.begin() as conn:
        conn.execute(text("INSERT INTO organizations (id, name) VALUES (1, 'A')"))
    with MARIADB.reader(maria, sees_others=True) as url:
        coll, _ = in_process(
            url, {"collection": {"settle_after": "1ms"}, "database": {"timezone": timezone}}
        )
        with MARIADB.database() as elsewhere:
            schema = maria.url.database if writer_schema == "this" else elsewhere.rsplit("/")[-1]
            late = pymysql.connect(**MARIADB_ADMIN, database=schema, autocommit=False)
            with late.cursor() as cur:
                qualified = f"INTO `{maria.url.database}`.messages"
                cur.execute(INSERT.replace("INTO messages", qualified))
                (low,) = cur.fetchone()
            with maria.begin() as conn:
                conn.execute(text(INSERT))
            run_n(coll)
            assert coll.counter.watermark < low  # held back while the writer is open
            late.commit()
            late.close()
        run_n(coll)
        assert served(coll)["convrs_messages_total"] == {KEY: 2.0}
        assert coll.counter.watermark == coll.counter.counted_to
        coll.db.close()


def test_org_arrays_cut_short_are_counted_per_series_that_once(
    maria: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    """MariaDB cuts a JSON_ARRAYAGG past max_allowed_packet (a long catch-up): that count
    reads one row per series and stays exact; the next ones use arrays again. DECIMAL org
    ids keep their digits."""
    from decimal import Decimal

    dialect = MySQL()
    assert dialect.org_lists([("inbound", "[1, 2, 3", 3, 6)], 1) is None
    assert dialect.org_lists([("inbound", "[5.00, 7]", 2, 1)], 1) == [
        ("inbound", [Decimal("5.00"), 7], 2, 1)
    ]
    metadata.create_all(maria)
    with maria.begin() as conn:
        conn.execute(text("INSERT INTO organizations (id, name) VALUES (1, 'A')"))
        conn.execute(text(INSERT))
    coll, _ = in_process(_url(maria), {"collection": {"settle_after": "1ms"}})
    run_n(coll, 1)
    real = MySQL.org_lists
    monkeypatch.setattr(MySQL, "org_lists", lambda self, rows, at: None)
    with maria.begin() as conn:
        for _ in range(3):
            conn.execute(text(INSERT))
    run_n(coll, 1)
    assert served(coll)["convrs_messages_total"] == {KEY: 4.0}
    assert coll.messages.by_labels  # this once only
    monkeypatch.setattr(MySQL, "org_lists", real)
    with maria.begin() as conn:
        conn.execute(text(INSERT))
    run_n(coll, 2)
    assert served(coll)["convrs_messages_total"] == {KEY: 5.0}
    coll.db.close()
