"""Organization names of any content come out correctly escaped, in both formats."""

from __future__ import annotations

import subprocess

from sqlalchemy import Engine, text

from exporter import demo
from tests.support.expo import in_process, parse, render_current

ODD_NAMES = [
    'He said "hi"',
    "C:\\path\\to\\",
    "line one\nline two",
    "Zürich \u2013 東京 🚀",  # en dash
    "tab\there, comma, {brace} = equals",
    "\\n is not a newline",
    "",
]


def test_odd_org_names_round_trip(pg_engine: Engine) -> None:
    demo.seed(pg_engine, orgs=tuple((name, 5) for name in ODD_NAMES), seed=5)
    with pg_engine.connect() as conn:
        want = {(str(i), n) for i, n in conn.execute(text("SELECT id, name FROM organizations"))}
    assert {n for _, n in want} == set(ODD_NAMES)
    collection, _ = in_process(pg_engine.url.render_as_string(hide_password=False))
    assert collection.run()
    rendered = render_current(collection)
    body = rendered.text.decode()
    assert set(parse(body)["convrs_org_info"]) == want
    om = rendered.openmetrics.decode() + "# EOF\n"
    assert set(parse(om, openmetrics=True)["convrs_org_info"]) == want
    assert 'name="line one\\nline two"' in body
    assert 'name="C:\\\\path\\\\to\\\\"' in body
    assert 'name="He said \\"hi\\""' in body
    check = subprocess.run(
        ["promtool", "check", "metrics"], input=rendered.text, capture_output=True
    )
    assert check.returncode == 0, check.stdout + check.stderr
    collection.db.close()
