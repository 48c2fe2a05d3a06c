"""A configuration fuzzer: malformed YAML and values of every kind end in exit 2 with one
clear line (or a valid configuration, exit 0): never a traceback, never the password."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from exporter.cli import main

SECRET = "fuzz-pa55word"  # noqa: S105 - the one that must never be printed
URL = f"postgresql://fuzz:{SECRET}@127.0.0.1:1/nodb"  # port 1: refused at once
SECTIONS = {
    "database": ["url", "statement_timeout", "connect_timeout", "pool_size"],
    "collection": ["interval", "stale_after", "settle_after", "reconcile_interval"],
    "labels": ["drop"],
    "web": ["listen_address", "telemetry_path", "config_file"],
    "log": ["level", "format"],
    "thresholds": ["defaults", "organizations"],
    "shard": ["index", "total"],
    "mapping": ["organizations", "bots", "agents", "flows", "users", "messages"],
}
scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**70), 2**70),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=30),
    st.sampled_from(["30s", "1m", "0s", "-5s", "5x", "[", ":", SECRET]),
)
values = st.recursive(
    scalars,
    lambda inner: st.one_of(
        st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=10), inner, max_size=4)
    ),
    max_leaves=10,
)


@st.composite
def configs(draw: st.DrawFn) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for section in draw(st.lists(st.sampled_from([*SECTIONS, "bogus"]), max_size=4)):
        keys = [*SECTIONS.get(section, []), "nope"]
        out[section] = draw(
            st.one_of(values, st.dictionaries(st.sampled_from(keys), values, max_size=4))
        )
    return out


def run(
    tmp: Path, text: str, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> tuple[int, str]:
    path = tmp / "fuzz.yml"
    path.write_text(text)
    monkeypatch.setenv("CONVRS_EXPORTER_DATABASE_URL", URL)
    try:
        code = main(["--config.file", str(path), "--config.check"])
    except SystemExit as exc:
        code = int(exc.code or 0)
    captured = capsys.readouterr()
    return code, captured.out + captured.err


def check(code: int, out: str) -> None:
    event(f"exit {code}")
    assert "Traceback" not in out and SECRET not in out, out
    errors = [line for line in out.splitlines() if line.startswith("convrs-exporter: error: ")]
    if code == 2:
        assert len(errors) == 1, out
    else:
        assert code == 0 and not errors and "configuration OK" in out, out


SETTINGS = settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)


@SETTINGS
@given(st.text(max_size=200))
def test_arbitrary_text(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, text: str
) -> None:
    check(*run(tmp_path, text, capsys, monkeypatch))


@SETTINGS
@given(configs())
def test_structured_configs(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    config: dict[str, Any],
) -> None:
    text = yaml.safe_dump(config, allow_unicode=True)
    check(*run(tmp_path, text, capsys, monkeypatch))
