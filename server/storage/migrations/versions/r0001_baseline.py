"""The schema as it stood when the storage layer was made (sqlite-utils era).

On SQLite this revision is never run: `server/storage/legacy.py` reaches the same
schema (a site database made before, or a new file) and the file is stamped 0001.
On PostgreSQL it creates the tables.

Revision ID: 0001
Revises:
"""

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

T = sa.Text
I = sa.Integer  # noqa: E741


def upgrade() -> None:
    if op.get_bind().dialect.name == "sqlite":
        raise RuntimeError("SQLite stores reach 0001 through server/storage/legacy.py")
    op.create_table(
        "events",
        sa.Column("gate", T, nullable=False),
        sa.Column("epoch", T, nullable=False, server_default=""),
        sa.Column("seq", I, nullable=False),
        sa.Column("uuid", T, nullable=False),
        sa.Column("at", T, nullable=False),
        sa.Column("kind", T, nullable=False),
        sa.Column("decision", T),
        sa.Column("reason", T, nullable=False),
        sa.Column("household", T),
        sa.Column("pass_id", I),
        sa.Column("body", T, nullable=False),
        sa.Column("received_at", T, nullable=False),
        sa.Column("direction", T),
        sa.PrimaryKeyConstraint("gate", "epoch", "seq"),
    )
    op.create_index("events_at", "events", ["at"])
    op.create_index("events_household", "events", ["household", "at"])
    op.create_index("events_pass", "events", ["pass_id", "at"])
    op.create_index("events_uuid", "events", ["gate", "uuid"])
    op.create_table(
        "event_aliases",
        sa.Column("gate", T, nullable=False),
        sa.Column("epoch", T, nullable=False),
        sa.Column("seq", I, nullable=False),
        sa.Column("uuid", T, nullable=False),
        sa.PrimaryKeyConstraint("gate", "epoch", "seq"),
    )
    op.create_table(
        "gates",
        sa.Column("gate", T, primary_key=True),
        sa.Column("contiguous_seq", I, nullable=False, server_default="0"),
        sa.Column("last_seen", T),
        sa.Column("status", T),
        sa.Column("epoch", T),
    )
    op.create_table(
        "conflicts",
        sa.Column("id", I, primary_key=True, autoincrement=True),
        sa.Column("gate", T, nullable=False),
        sa.Column("seq", I, nullable=False),
        sa.Column("kind", T, nullable=False),
        sa.Column("detail", T, nullable=False),
        sa.Column("body", T),
        sa.Column("at", T, nullable=False),
        sa.Column("uuid", T),
    )
    op.create_index(
        "conflicts_once",
        "conflicts",
        ["kind", "uuid"],
        unique=True,
        postgresql_where=sa.text("uuid IS NOT NULL"),
    )
    op.create_table(
        "rejected_messages",
        sa.Column("id", I, primary_key=True, autoincrement=True),
        sa.Column("topic", T, nullable=False),
        sa.Column("reason", T, nullable=False),
        sa.Column("excerpt", T),
        sa.Column("at", T, nullable=False),
    )
    op.create_table(
        "keys",
        sa.Column("key_id", I, primary_key=True, autoincrement=False),
        sa.Column("public_key", sa.LargeBinary, nullable=False),
        sa.Column("created_at", T, nullable=False),
        sa.Column("retired_at", T),
    )
    op.create_table(
        "meta", sa.Column("key", T, primary_key=True), sa.Column("value", T, nullable=False)
    )
    op.create_table(
        "households",
        sa.Column("household", T, primary_key=True),
        sa.Column("quarantined", I, nullable=False, server_default="0"),
        sa.Column("quarantine_until", T),
        sa.Column("updated_at", T, nullable=False),
        *(
            sa.Column(c, T, nullable=False, server_default="")
            for c in ("building", "unit", "room", "grid", "community", "street", "district")
        ),
    )
    op.create_index("households_place", "households", ["building", "unit", "room"])
    op.create_table(
        "audit",
        sa.Column("id", I, primary_key=True, autoincrement=True),
        sa.Column("at", T, nullable=False),
        sa.Column("actor", T, nullable=False),
        sa.Column("action", T, nullable=False),
        sa.Column("target", T),
        sa.Column("detail", T),
    )
    op.create_table(
        "persons",
        sa.Column("person_id", I, primary_key=True, autoincrement=True),
        sa.Column("household", T, sa.ForeignKey("households.household"), nullable=False),
        sa.Column("name", T, nullable=False),
        sa.Column("phone", T, nullable=False, server_default=""),
        sa.Column("role", T, nullable=False, server_default="resident"),
        sa.Column("created_at", T, nullable=False),
        sa.Column("updated_at", T, nullable=False),
        sa.UniqueConstraint("household", "name", "phone"),
    )
    op.create_index("persons_name", "persons", ["name"])
    op.create_table(
        "passes",
        sa.Column("pass_id", I, primary_key=True, autoincrement=False),
        sa.Column("household", T, nullable=False),
        sa.Column("name", T, nullable=False),
        sa.Column("room", T, nullable=False, server_default=""),
        sa.Column("role", T, nullable=False),
        sa.Column("valid_from", sa.BigInteger, nullable=False),
        sa.Column("valid_until", sa.BigInteger, nullable=False),
        sa.Column("key_id", I, nullable=False),
        sa.Column("qr", T, nullable=False),
        sa.Column("issued_at", T, nullable=False),
        sa.Column("revoked_at", T),
        sa.Column("revoke_reason", T),
        sa.Column("person_id", I, sa.ForeignKey("persons.person_id")),
    )
    op.create_table(
        "alerts",
        sa.Column("id", I, primary_key=True, autoincrement=True),
        sa.Column("key", T, nullable=False, unique=True),
        sa.Column("at", T, nullable=False),
        sa.Column("kind", T, nullable=False),
        sa.Column("priority", T, nullable=False),
        sa.Column("gate", T),
        sa.Column("pass_id", I),
        sa.Column("household", T),
        sa.Column("detail", T, nullable=False, server_default=""),
        sa.Column("event_at", T),
        sa.Column("acked_at", T),
        sa.Column("acked_by", T),
        sa.Column("ack_note", T),
    )
    op.create_index("alerts_open", "alerts", ["acked_at", "at"])
    op.create_table(
        "gate_outages",
        sa.Column("id", I, primary_key=True, autoincrement=True),
        sa.Column("gate", T, nullable=False),
        sa.Column("since", T, nullable=False),
        sa.Column("cause", T, nullable=False),
        sa.Column("alert_key", T, nullable=False),
        sa.Column("opened_at", T, nullable=False),
        sa.Column("ended_at", T),
    )
    op.create_index(
        "gate_outages_open",
        "gate_outages",
        ["gate"],
        unique=True,
        postgresql_where=sa.text("ended_at IS NULL"),
    )
    op.create_table(
        "visitors",
        sa.Column("id", I, primary_key=True, autoincrement=True),
        sa.Column("at", T, nullable=False),
        sa.Column("name", T, nullable=False),
        sa.Column("phone", T, nullable=False),
        sa.Column("reason", T, nullable=False),
        sa.Column("host_household", T, nullable=False),
        sa.Column("temperature_c", sa.Float, nullable=False),
        sa.Column("pass_id", I),
        sa.Column("valid_until", sa.BigInteger, nullable=False),
        sa.Column("registered_by", T, nullable=False),
        sa.Column("purged_at", T),
    )
    op.create_index("visitors_at", "visitors", ["at"])
    op.create_index("visitors_valid_until", "visitors", ["valid_until"])
    op.create_table(
        "operators",
        sa.Column("name", T, primary_key=True),
        sa.Column("role", T, nullable=False),
        sa.Column("password_hash", T, nullable=False),
        sa.Column("created_at", T, nullable=False),
        sa.Column("last_login_at", T),
        sa.Column("disabled", I, nullable=False, server_default="0"),
    )
    op.create_table(
        "sessions",
        sa.Column("token_sha256", T, primary_key=True),
        sa.Column("operator", T, sa.ForeignKey("operators.name"), nullable=False),
        sa.Column("csrf", T, nullable=False),
        sa.Column("created_at", T, nullable=False),
        sa.Column("expires_at", T, nullable=False),
        sa.Column("last_seen_at", T, nullable=False),
        sa.Column("address", T),
    )
    op.create_table(
        "login_failures",
        sa.Column("id", I, primary_key=True, autoincrement=True),
        sa.Column("account", T, nullable=False),
        sa.Column("address", T, nullable=False),
        sa.Column("at", T, nullable=False),
    )
    op.create_index("login_failures_at", "login_failures", ["address", "account", "at"])
