"""Outages as the cards show them, against a real Prometheus: a failing query shows no value
(not 0) once its values are withheld, and so does every card when the exporter is gone."""

from __future__ import annotations

from pathlib import Path

from sqlalchemy import text

from exporter import demo
from tests.conftest import SMALL_ORGS
from tests.dashboard_test import CARD_TITLES, by_title, substitute
from tests.support import pg
from tests.support.procs import Exporter, Prometheus, wait_until


def card(prom: Prometheus, title: str, org: str = ".*") -> list[float]:
    expr = substitute(by_title(title)["targets"][0]["expr"], org, "1m")
    return [float(r["value"][1]) for r in prom.query(expr)]


def test_no_card_shows_0_for_an_outage(tmp_path: Path) -> None:
    with pg.throwaway_database() as url:
        eng = pg.engine(url)
        demo.seed(eng, orgs=SMALL_ORGS, seed=5)
        with eng.begin() as conn:
            conn.execute(text("CREATE VIEW flows_v AS SELECT * FROM flows"))
            flows = float(conn.execute(text("SELECT count(*) FROM flows")).scalar_one())
        config = {
            "collection": {"interval": "1s", "stale_after": "2s"},
            "database": {"statement_timeout": "800ms"},
            "mapping": {"flows": {"table": "flows_v", "org": "flows_v.org_id"}},
        }
        exp = Exporter(tmp_path, config, env={"CONVRS_EXPORTER_DATABASE_URL": url}).start()
        prom = Prometheus(tmp_path, [f"127.0.0.1:{exp.port}"]).start()
        try:
            wait_until(lambda: card(prom, "Flows") == [flows], what="the Flows card")
            # an org with no flows at all reads 0: the exporter collected and found none
            with eng.begin() as conn:
                conn.execute(text("INSERT INTO organizations (id, name) VALUES (77, 'New')"))
            wait_until(lambda: card(prom, "Bots", "77") == [0.0], what="a 0 for no bots")
            with eng.begin() as conn:  # the flows query fails from now on
                conn.execute(text("DROP VIEW flows_v"))
            wait_until(lambda: card(prom, "Flows") == [], what="no Flows value past stale_after")
            assert card(prom, "Flows", "77") == []  # not 0
            assert card(prom, "Bots") and card(prom, "Users")  # the others go on
            exp.stop()  # the exporter is gone: every card shows no value, none shows 0
            wait_until(
                lambda: all(card(prom, t) == [] for t in CARD_TITLES),
                timeout=30,
                what="every card empty once the exporter is gone",
            )
        finally:
            prom.stop()
            exp.stop()
            eng.dispose()
