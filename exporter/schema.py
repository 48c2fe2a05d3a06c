"""The reference schema: the platform's tables as the exporter expects them by default.

The demo database and the tests use it; a real deployment maps its own schema
onto the metrics in the configuration instead (see reference_mapping.yml).
"""

from __future__ import annotations

from sqlalchemy import (
    BigInteger,
    Boolean,
    Column,
    DateTime,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    func,
)

metadata = MetaData()

# SQLite only auto-increments an INTEGER PRIMARY KEY; elsewhere the ids are 64-bit.
Id = BigInteger().with_variant(Integer(), "sqlite")

organizations = Table(
    "organizations",
    metadata,
    Column("id", Id, primary_key=True),
    Column("name", Text, nullable=False),
    Column("created_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
)

bots = Table(
    "bots",
    metadata,
    Column("id", Id, primary_key=True),
    Column("org_id", Id, ForeignKey("organizations.id"), nullable=False, index=True),
    Column("name", Text, nullable=False),
    Column("channel", String(32), nullable=False),
)

agents = Table(
    "agents",
    metadata,
    Column("id", Id, primary_key=True),
    Column("org_id", Id, ForeignKey("organizations.id"), nullable=False, index=True),
    Column("email", Text, nullable=False),
    Column("disabled", Boolean, nullable=False, server_default="0"),
)

flows = Table(
    "flows",
    metadata,
    Column("id", Id, primary_key=True),
    Column("org_id", Id, ForeignKey("organizations.id"), nullable=False, index=True),
    Column("name", Text, nullable=False),
)

users = Table(
    "users",
    metadata,
    Column("id", Id, primary_key=True),
    Column("org_id", Id, ForeignKey("organizations.id"), nullable=False, index=True),
    Column("external_id", Text, nullable=False),
    Column("channel", String(32), nullable=False),
)

messages = Table(
    "messages",
    metadata,
    Column("id", Id, primary_key=True, autoincrement=True),
    Column("org_id", Id, ForeignKey("organizations.id"), nullable=False),
    Column("direction", String(8), nullable=False),
    Column("sender_type", String(8), nullable=False),
    Column("channel", String(32), nullable=False),
    Column("body", Text),
    Column("created_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
    Index("messages_org_created_idx", "org_id", "created_at"),
)

CHANNELS = ("whatsapp", "messenger", "web_widget", "sms", "instagram", "telegram", "line")
SENDERS_OUTBOUND = ("agent", "bot", "system")
