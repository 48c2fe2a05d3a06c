"""A newcomer's first hour: label values the contract does not know are refused by
``--config.check`` and counted at run time; ``--config.check`` shows each organization's
cards as the platform's page does; the built-in Organization Metrics page, loaded in a
real headless Chromium, shows what /metrics serves."""

from __future__ import annotations

import base64
import json
import logging
import re
import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import bcrypt
import pytest
import yaml
from sqlalchemy import Engine, create_engine, text

from exporter import demo
from exporter.config import reference_mapping
from tests.support import pg
from tests.support.expo import in_process, parse
from tests.support.procs import Exporter, run_cli

HOSTILE = '<script>alert("x")</script> & <b>Co</b>'


def _url(engine: Engine) -> str:
    return engine.url.render_as_string(hide_password=False)


def _config(tmp: Path, mapping: dict[str, Any]) -> str:
    path = tmp / "config.yml"
    path.write_text(yaml.safe_dump({"mapping": mapping}))
    return str(path)


# --- 1. label values outside the contract ---------------------------------------------------

SHORT_DIRECTION = "CASE WHEN messages.direction = 'inbound' THEN 'in' ELSE 'out' END"
ENABLED_STATUS = "CASE WHEN agents.disabled THEN 'disabled' ELSE 'enabled' END"


@pytest.mark.parametrize(
    ("entry", "label", "expression", "said"),
    [
        ("messages", "direction", SHORT_DIRECTION, "the direction label yields 'in'"),
        ("agents", "status", ENABLED_STATUS, "the status label yields 'enabled'"),
        (
            "messages",
            "sender",
            "CASE WHEN messages.direction = 'inbound' THEN 'bot' ELSE messages.sender_type END",
            "the sender label yields 'bot'; convrs_messages allows user for inbound",
        ),
    ],
)
def test_config_check_refuses_label_values_outside_the_contract(
    seeded: Engine, tmp_path: Path, entry: str, label: str, expression: str, said: str
) -> None:
    mapping = {entry: {**reference_mapping()[entry]}}
    mapping[entry]["labels"] = {**mapping[entry]["labels"], label: expression}
    result = run_cli(
        "--config.check",
        "--config.file",
        _config(tmp_path, mapping),
        env={"CONVRS_EXPORTER_DATABASE_URL": _url(seeded)},
        timeout=120,
    )
    assert result.returncode == 2, result.stdout + result.stderr
    (line,) = result.stderr.strip().splitlines()[-1:]
    assert f"mapping.{entry}" in line and said in line, line
    if entry == "messages" and label == "direction":
        assert "allows inbound, outbound" in line


def test_unexpected_label_values_at_run_time_are_counted_and_logged_once(
    seeded: Engine, caplog: pytest.LogCaptureFixture
) -> None:
    messages = {**reference_mapping()["messages"]}
    messages["labels"] = {**messages["labels"], "direction": SHORT_DIRECTION}
    agents = {**reference_mapping()["agents"]}
    agents["labels"] = {"status": ENABLED_STATUS}
    coll, _ = in_process(_url(seeded), {"mapping": {"messages": messages, "agents": agents}})
    with caplog.at_level(logging.WARNING, logger="convrs_exporter"):
        for _ in range(3):
            assert coll.run()  # served as they are: the values are the mapping's
    count = coll.health.registry.get_sample_value
    name = "convrs_exporter_unexpected_label_values_total"
    assert count(name, {"query": "messages", "label": "direction"}) == 2  # in, out
    assert count(name, {"query": "agents", "label": "status"}) == 1  # enabled
    warned = [r for r in caplog.records if "outside the contract" in r.getMessage()]
    assert sorted(r.value for r in warned) == ["enabled", "in", "out"]  # type: ignore[attr-defined]
    coll.db.close()


def test_the_reference_mapping_yields_only_allowed_values(seeded: Engine) -> None:
    coll, _ = in_process(_url(seeded))
    for _ in range(2):
        assert coll.run()
    name = "convrs_exporter_unexpected_label_values_total"
    assert not [s for m in coll.health.registry.collect() for s in m.samples if s.name == name]
    coll.db.close()


# --- 2. --config.check shows the cards ---------------------------------------------------------


def _want_cards(engine: Engine) -> dict[str, dict[str, Any]]:
    """Each organization's cards, straight from SQL."""
    counts = pg.reference_counts(engine)
    out: dict[str, dict[str, Any]] = {}
    for (org, name), _ in counts["convrs_org_info"].items():
        total = counts["convrs_messages_total"]
        agents = counts["convrs_agents"]
        since = counts["convrs_messages_counting_since_timestamp_seconds"]
        out[org] = {
            "name": name,
            "bots": int(sum(v for k, v in counts["convrs_bots"].items() if k[0] == org)),
            "agents_active": int(agents[(org, "active")]),
            "agents_disabled": int(agents[(org, "disabled")]),
            "flows": int(counts["convrs_flows"][(org,)]),
            "users": int(counts["convrs_users"][(org,)]),
            "inbound": int(sum(v for k, v in total.items() if k[:2] == (org, "inbound"))),
            "outbound": int(sum(v for k, v in total.items() if k[:2] == (org, "outbound"))),
            "inbound_since": since.get((org, "inbound")),
            "outbound_since": since.get((org, "outbound")),
        }
    return out


def test_config_check_prints_each_organizations_cards(seeded: Engine) -> None:
    env = {"CONVRS_EXPORTER_DATABASE_URL": _url(seeded)}
    result = run_cli("--config.check", "--output", "json", env=env, timeout=120)
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["configuration"] == "ok" and report["label_value_sets_checked"] > 0
    want = _want_cards(seeded)
    got = {o["org"]: o for o in report["organizations"]}
    assert set(got) == set(want)
    for org, cards in want.items():
        for field, value in cards.items():
            if field.endswith("_since") and value is not None:
                assert got[org][field] == pytest.approx(value), (org, field)
            else:
                assert got[org][field] == value, (org, field)
        active = cards["agents_active"]
        assert got[org]["users_per_active_agent"] == (
            pytest.approx(cards["users"] / active) if active else None
        )
        assert got[org]["outbound_per_inbound"] == pytest.approx(
            cards["outbound"] / cards["inbound"]
        )
    text_result = run_cli("--config.check", env=env, timeout=120)
    assert text_result.returncode == 0, text_result.stderr
    out = text_result.stdout
    acme = want[next(o for o, c in want.items() if c["name"] == "Acme Retail")]
    block = out[out.index("Acme Retail (org ") :].split("\n\n")[0]
    agents = acme["agents_active"] + acme["agents_disabled"]
    assert f"Bots {acme['bots']:,} | Agents {agents:,} ({acme['agents_active']:,} active" in block
    assert f"Inbound Messages {acme['inbound']:,} since " in block
    assert f"Outbound Messages {acme['outbound']:,} since " in block
    assert "Users per active agent " in block and "Outbound per inbound " in block


# --- 3. the Organization Metrics page in a real browser -----------------------------------------


class _Cards(HTMLParser):
    """The numbers on the rendered page: each card's value, by its data-card name."""

    def __init__(self) -> None:
        super().__init__()
        self.values: dict[str, str] = {}
        self.details: dict[str, str] = {}
        self.heading = ""
        self._card: str | None = None
        self._in: str | None = None
        self.scripts = 0

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = dict(attrs)
        if tag == "section" and a.get("data-card"):
            self._card = a["data-card"]
        elif tag == "p" and self._card:
            self._in = "value" if a.get("class") == "value" else "detail"
        elif tag == "h2" and a.get("id") == "org-name":
            self._in = "heading"
        elif tag == "script":
            self.scripts += 1

    def handle_endtag(self, tag: str) -> None:
        if tag == "section":
            self._card = None
        if tag in ("p", "h2"):
            self._in = None

    def handle_data(self, data: str) -> None:
        if self._in == "heading":
            self.heading += data
        elif self._in == "value" and self._card:
            self.values[self._card] = self.values.get(self._card, "") + data
        elif self._in == "detail" and self._card:
            self.details[self._card] = self.details.get(self._card, "") + data


def _chromium(*args: str) -> subprocess.CompletedProcess[str]:
    browser = shutil.which("chromium")
    assert browser, "make test installs Debian's chromium package"
    return subprocess.run(
        [browser, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars", *args],
        capture_output=True,
        text=True,
        timeout=90,
    )


def test_the_organization_metrics_page_in_a_real_browser(seeded: Engine, tmp_path: Path) -> None:
    """Loaded in headless Chromium, behind basic auth: each organization's cards equal what
    /metrics serves; a hostile name is text, not markup; screenshots are saved (desktop
    and phone widths)."""
    with seeded.begin() as conn:
        conn.execute(text("INSERT INTO organizations (id, name) VALUES (99, :n)"), {"n": HOSTILE})
    password = "page-Secret-1"  # noqa: S105 - the test's own basic auth user
    web = tmp_path / "web.yml"
    hashed = bcrypt.hashpw(password.encode(), bcrypt.gensalt(4)).decode()
    web.write_text(yaml.safe_dump({"basic_auth_users": {"sre": hashed}}))
    exp = Exporter(
        tmp_path,
        {"collection": {"interval": "1h"}},
        env={"CONVRS_EXPORTER_DATABASE_URL": _url(seeded)},
        args=["--web.config.file", str(web)],
    )
    exp.headers = {
        "Authorization": "Basic " + base64.b64encode(f"sre:{password}".encode()).decode()
    }
    exp.start()
    shots = Path(__file__).resolve().parent.parent / ".cache" / "screenshots"
    shots.mkdir(parents=True, exist_ok=True)
    try:
        assert exp.get("/organizations", {"Authorization": ""})[0] == 401  # same auth
        status, _, landing = exp.get("/")
        assert status == 200 and b'href="/organizations"' in landing
        body = parse(exp.metrics())
        base = f"http://sre:{password}@127.0.0.1:{exp.port}/organizations"
        names = {k[0]: k[1] for k in body["convrs_org_info"]}
        for org, name in names.items():
            dom = _chromium("--dump-dom", f"{base}?org={org}")
            assert dom.returncode == 0, dom.stderr
            page = _Cards()
            page.feed(dom.stdout)
            assert page.heading == name  # a hostile name is its text: nothing was injected
            assert page.scripts == 1  # the page's own, no other
            _assert_cards_equal_metrics(page, body, org)
        phone = tmp_path / "organizations-phone.png"
        for path, size in ((shots / "organizations.png", "1200,900"), (phone, "390,844")):
            shot = _chromium(f"--window-size={size}", f"--screenshot={path}", f"{base}?org=1")
            assert shot.returncode == 0, shot.stderr
            assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and path.stat().st_size > 10_000
        shutil.copy(phone, shots / "organizations-phone.png")
    finally:
        assert exp.stop() == 0, exp.log()
    assert password not in exp.log()


def _assert_cards_equal_metrics(page: _Cards, body: dict[str, Any], org: str) -> None:
    def n(text_value: str) -> int:
        return int(text_value.replace(",", ""))

    def total(metric: str, **match: str) -> int:
        labels = {"convrs_messages_total": ("org", "direction", "channel", "sender")}.get(
            metric, ()
        )
        out = 0.0
        for key, value in body[metric].items():
            if key[0] != org:
                continue
            named = dict(zip(labels, key, strict=False))
            if all(named.get(k) == v for k, v in match.items()):
                out += value
        return int(out)

    assert n(page.values["bots"]) == total("convrs_bots")
    assert n(page.values["agents"]) == total("convrs_agents")
    active = int(body["convrs_agents"].get((org, "active"), 0))
    disabled = int(body["convrs_agents"].get((org, "disabled"), 0))
    assert page.details["agents"] == f"{active:,} active · {disabled:,} disabled"
    assert n(page.values["flows"]) == total("convrs_flows")
    assert n(page.values["users"]) == total("convrs_users")
    inbound = total("convrs_messages_total", direction="inbound")
    outbound = total("convrs_messages_total", direction="outbound")
    assert n(page.values["inbound"]) == inbound
    assert n(page.values["outbound"]) == outbound
    since = body["convrs_messages_counting_since_timestamp_seconds"]
    for direction in ("inbound", "outbound"):
        ts = since.get((org, direction))
        detail = page.details[direction]
        if ts is None:
            assert detail == "no messages yet"
        else:
            assert re.fullmatch(r"since \d{4}-\d{2}-\d{2}", detail)
    users = total("convrs_users")
    want_ratio = f"{users / active:,.2f}" if active else "-"
    assert page.values["users_per_active_agent"] == want_ratio
    assert page.values["outbound_per_inbound"] == (f"{outbound / inbound:,.2f}" if inbound else "-")


# --- 7. small things a first run shows -----------------------------------------------------------


def test_a_sqlite_path_is_logged_and_debug_has_no_tzlocal_noise(tmp_path: Path) -> None:
    """A SQLite URL holds no secret: its path is logged as it is. ``--log.level debug``
    shows the exporter's lines, not APScheduler's time zone lookup."""
    path = tmp_path / "own.sqlite"
    exp = Exporter(tmp_path, {}, env={"CONVRS_EXPORTER_DATABASE_URL": f"sqlite:///{path}"}, args=[])
    exp.args = ["--log.level", "debug", "--demo.path", str(tmp_path / "unused.sqlite")]
    engine = create_engine(f"sqlite:///{path}")
    demo.seed(engine, orgs=(("Solo", 10),), seed=3)
    engine.dispose()
    exp.start()
    assert exp.stop() == 0
    log = exp.log()
    assert f"database=sqlite+pysqlite:///{path}" in log
    assert "logger=tzlocal" not in log and "level=debug" in log


def test_cards_read_0_for_no_rows_and_names_are_safe_for_a_terminal(seeded: Engine) -> None:
    """A metric served with no rows at all (no bots anywhere) is 0 on the cards, not the
    dash that means "not served"; a name with an escape sequence prints as its codes."""
    from exporter.cards import as_text, organization_cards

    with seeded.begin() as conn:
        conn.execute(text("DELETE FROM bots"))
        conn.execute(text("UPDATE organizations SET name = :n WHERE id = 1"), {"n": "Red\x1b[31m"})
    coll, _ = in_process(_url(seeded))
    assert coll.run()
    cards = organization_cards(coll.specs, coll.snapshot())
    assert cards and all(c.bots == 0 for c in cards)
    text_out = as_text(cards)
    assert "\x1b" not in text_out and "Red\\x1b[31m (org 1)" in text_out
    assert "Bots 0 |" in text_out
    coll.db.close()
