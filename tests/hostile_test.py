"""Hostile input: label values of any content from the database, invalid UTF-8 included,
never break the exposition."""

from __future__ import annotations

import subprocess
import uuid
from collections.abc import Iterator

import psycopg
import pytest
from sqlalchemy import Engine, text

from exporter import demo
from exporter.db import connect
from tests.support.expo import in_process, parse, render_current
from tests.support.pg import ADMIN_DSN


@pytest.fixture
def sql_ascii() -> Iterator[Engine]:
    """A database that stores bytes as they come: names that are not UTF-8 at all."""
    name = f"convrs_test_ascii_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(ADMIN_DSN, autocommit=True) as conn:
        conn.execute(
            f"CREATE DATABASE \"{name}\" ENCODING 'SQL_ASCII' LC_COLLATE 'C' "
            "LC_CTYPE 'C' TEMPLATE template0"
        )
    # plain SQLAlchemy cannot even connect to it (the server version comes back as bytes);
    # the exporter's engine decodes its text leniently
    db = connect(
        f"postgresql://postgres@127.0.0.1:5432/{name}",
        statement_timeout=5,
        connect_timeout=5,
        pool_size=2,
    )
    try:
        yield db.engine
    finally:
        db.close()
        with psycopg.connect(ADMIN_DSN, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def _check(body: bytes) -> None:
    result = subprocess.run(["promtool", "check", "metrics"], input=body, capture_output=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_invalid_utf8_from_the_database(sql_ascii: Engine) -> None:
    demo.create_schema(sql_ascii)
    with sql_ascii.begin() as conn:
        conn.execute(
            text(
                "INSERT INTO organizations (id, name) VALUES "
                "(1, E'caf\\xe9 latin-1'), (2, E'broken \\xff\\xfe bytes'), (3, 'plain')"
            )
        )
        conn.execute(text("INSERT INTO bots (org_id, name, channel) VALUES (2, 'b', E'ch\\xc3')"))
        conn.execute(
            text(
                "INSERT INTO messages (org_id, direction, sender_type, channel) "
                "VALUES (2, 'inbound', 'user', E'ch\\xc3')"
            )
        )
    collection, _ = in_process(sql_ascii.url.render_as_string(hide_password=False))
    assert collection.run()
    rendered = render_current(collection)
    _check(rendered.text)
    got = parse(rendered.text.decode())
    assert got["convrs_org_info"] == {
        ("1", "caf\ufffd latin-1"): 1.0,
        ("2", "broken \ufffd\ufffd bytes"): 1.0,
        ("3", "plain"): 1.0,
    }
    assert got["convrs_bots"] == {("2", "ch\ufffd"): 1.0}
    assert got["convrs_messages_total"] == {("2", "inbound", "ch\ufffd", "user"): 1.0}
    assert parse(rendered.openmetrics.decode() + "# EOF\n", openmetrics=True) == got
    collection.db.close()


def test_control_characters_and_very_long_values(pg_engine: Engine) -> None:
    names = [
        "\x01\x02\x1f bell\x07",
        "tab\tcr\rlf\n",
        "\u2028 line sep",
        "x" * 100_000,
        "ends with backslash \\",
    ]
    demo.seed(pg_engine, orgs=tuple((n, 3) for n in names), seed=9)
    collection, _ = in_process(pg_engine.url.render_as_string(hide_password=False))
    assert collection.run()
    rendered = render_current(collection)
    _check(rendered.text)
    for got in (
        parse(rendered.text.decode()),
        parse(rendered.openmetrics.decode() + "# EOF\n", openmetrics=True),
    ):
        assert sorted(n for _, n in got["convrs_org_info"]) == sorted(names)
    collection.db.close()
