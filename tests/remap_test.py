"""A schema that is not the reference one, mapped in YAML only: the numbers still equal SQL."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pytest
import yaml
from prometheus_client.openmetrics.parser import text_string_to_metric_families
from sqlalchemy import Engine, text

from tests.support.expo import assert_counts, in_process, render_current, served

EXAMPLE = Path(__file__).parent.parent / "config" / "examples" / "remapped.yml"

SCHEMA = """
CREATE TABLE tenant (tenant_id int PRIMARY KEY, display_name text NOT NULL,
                     messages_counted_since timestamptz);
CREATE TABLE chatbot (bot_id serial PRIMARY KEY, tenant_ref int NOT NULL, medium text NOT NULL,
                      deleted boolean NOT NULL DEFAULT false);
CREATE TABLE operator (op_id serial PRIMARY KEY, tenant_ref int NOT NULL, is_active boolean);
CREATE TABLE journey (j_id serial PRIMARY KEY, tenant_ref int NOT NULL, published boolean);
CREATE TABLE contact (c_id serial PRIMARY KEY, tenant_ref int NOT NULL, external_ref text);
CREATE TABLE conversation (conv_id serial PRIMARY KEY, tenant_ref int NOT NULL, medium text);
CREATE TABLE chat_message (msg_id bigserial PRIMARY KEY,
                           conversation_id int NOT NULL REFERENCES conversation,
                           message_type smallint NOT NULL, sent_at timestamptz NOT NULL);
INSERT INTO tenant VALUES (10, 'Ten', '2026-01-01T00:00:00Z'), (20, 'Twenty', NULL);
INSERT INTO chatbot (tenant_ref, medium, deleted) VALUES
  (10, 'whatsapp', false), (10, 'whatsapp', false), (10, 'sms', true), (20, 'line', false),
  (20, 'test-channel', false);
INSERT INTO operator (tenant_ref, is_active) VALUES (10, true), (10, false), (20, true);
INSERT INTO journey (tenant_ref, published) VALUES (10, true), (10, false), (20, true);
INSERT INTO contact (tenant_ref, external_ref) VALUES (10, 'a'), (10, 'a'), (10, 'b'), (20, 'c');
INSERT INTO conversation (tenant_ref, medium) VALUES (10, 'whatsapp'), (10, 'sms'), (20, 'line');
INSERT INTO chat_message (conversation_id, message_type, sent_at)
SELECT 1 + mod(i, 3), mod(i, 4), timestamptz '2026-10-01' + i * interval '1 minute'
FROM generate_series(1, 500) i;
"""


def test_remapped_schema_exports_the_right_numbers(pg_engine: Engine) -> None:
    with pg_engine.begin() as conn:
        for statement in SCHEMA.split(";\n"):
            if statement.strip():
                conn.exec_driver_sql(statement)
    raw = yaml.safe_load(EXAMPLE.read_text())
    collection, _ = in_process(pg_engine.url.render_as_string(hide_password=False), raw)
    assert collection.run()
    got = served(collection)

    with pg_engine.connect() as conn:
        msgs = conn.execute(
            text(
                "SELECT c.tenant_ref::text, m.message_type, c.medium, count(*), min(m.sent_at) "
                "FROM chat_message m JOIN conversation c ON c.conv_id = m.conversation_id "
                "GROUP BY 1, 2, 3"
            )
        ).all()
    senders = {0: "user", 1: "agent", 2: "bot", 3: "system"}
    want_msgs = {
        (org, "inbound" if t == 0 else "outbound", ch, senders[t]): float(n)
        for org, t, ch, n, _ in msgs
    }
    oldest: dict[tuple[str, str], dt.datetime] = {}
    for org, t, _, _, first in msgs:
        od = (org, "inbound" if t == 0 else "outbound")
        oldest[od] = min(first, oldest.get(od, first))
    ten_since = dt.datetime(2026, 1, 1, tzinfo=dt.UTC).timestamp()
    assert_counts(
        got,
        {
            "convrs_org_info": {("10", "Ten"): 1.0, ("20", "Twenty"): 1.0},
            "convrs_bots": {("10", "whatsapp"): 2.0, ("20", "line"): 1.0},
            "convrs_agents": {
                ("10", "active"): 1.0,
                ("10", "disabled"): 1.0,
                ("20", "active"): 1.0,
                ("20", "disabled"): 0.0,
            },
            "convrs_flows": {("10",): 1.0, ("20",): 1.0},
            "convrs_users": {("10",): 2.0, ("20",): 1.0},
            "convrs_messages_total": want_msgs,
            # tenant 10 records when counting began; tenant 20 falls back to its oldest message
            "convrs_messages_counting_since_timestamp_seconds": {
                od: ten_since if od[0] == "10" else ts.timestamp() for od, ts in oldest.items()
            },
        },
    )
    body = render_current(collection).openmetrics.decode() + "# EOF\n"
    created = [
        (sample.labels["direction"], sample.value)
        for family in text_string_to_metric_families(body)
        for sample in family.samples
        if sample.name == "convrs_messages_created" and sample.labels["org"] == "20"
    ]
    assert created  # the counter's created time is tenant 20's counting-since
    for direction, value in created:
        assert value == pytest.approx(oldest[("20", direction)].timestamp())
    collection.db.close()
