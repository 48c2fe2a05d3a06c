"""Scale-out: shards of one database together serve exactly what one exporter serves."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from sqlalchemy import Engine

from exporter import demo
from exporter.dialects.postgresql import PostgreSQL
from exporter.mapping import Shard, shard_of
from tests.conftest import SMALL_ORGS
from tests.support.expo import in_process, served
from tests.support.servers import SERVERS, Server


@pytest.fixture(params=SERVERS, ids=str)
def seeded_on(request: pytest.FixtureRequest) -> Iterator[Engine]:
    """The reference schema with the small data set, on each server."""
    server: Server = request.param
    with server.database() as url:
        engine = server.engine(url)
        demo.seed(engine, orgs=SMALL_ORGS, seed=1)
        yield engine
        engine.dispose()


def test_three_shards_serve_exactly_the_unsharded_series(seeded_on: Engine) -> None:
    """On PostgreSQL and MariaDB the shard's hash runs in SQL (``HAVING``), the same
    hash as in Python."""
    url = seeded_on.url.render_as_string(hide_password=False)
    whole, _ = in_process(url)
    assert whole.run()
    want = served(whole)
    shards = []
    for index in range(3):
        coll, _ = in_process(url, {"shard": {"index": index, "total": 3}})
        assert coll.specs.shard.in_sql and "having mod(" in coll.specs.messages.sql.full.lower()
        assert coll.run()
        shards.append(served(coll))
        coll.db.close()
    for metric, series in want.items():
        parts = [s[metric] for s in shards]
        union: dict[tuple[str, ...], float] = {}
        for part in parts:
            assert not set(part) & set(union), f"{metric}: a series served by two shards"
            union.update(part)
        assert union == pytest.approx(series), metric
    # every shard got some organizations (4 orgs over 3 shards by a hash: not all in one)
    assert sum(1 for s in shards if s["convrs_org_info"]) >= 2
    whole.db.close()


def test_the_sql_hash_equals_the_python_hash(seeded: Engine) -> None:
    from sqlalchemy import text

    shard = Shard(1, 7, PostgreSQL())
    cond = shard.condition("CAST(v AS text)")
    values = ["1", "42", "9999999", "org-a", "Zürich"]
    with seeded.connect() as conn:
        for v in values:
            sql = f"SELECT {cond} FROM (SELECT CAST(:v AS text) AS v) q"
            assert conn.execute(text(sql), {"v": v}).scalar_one() == (shard_of(v, 7) == 1)


def test_shard_config_is_validated() -> None:
    from exporter.config import load_config
    from exporter.errors import ConfigError

    with pytest.raises(ConfigError, match=r"index \(3\) must be below total \(3\)"):
        load_config(None, {"CONVRS_EXPORTER_SHARD_INDEX": "3", "CONVRS_EXPORTER_SHARD_TOTAL": "3"})
