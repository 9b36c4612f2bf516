"""The collector's schema at the newest migration, as SQLAlchemy Core tables.

The one description of the tables that the storage layer's queries are built
from (`server/storage/*`), for SQLite and PostgreSQL alike. It changes only
together with a new migration in `server/storage/migrations/versions/`;
tests/server/test_storage_schema.py compares a migrated database with it.

Integers that the protocol allows past 2^31 (seq, pass ids) are BigInteger: 64-bit on
PostgreSQL as SQLite's INTEGER always is (revision 0003).

Times: instants that queries filter or order by are also stored as integer
microseconds since the Unix epoch, UTC (`*_us`), which an index serves on both
backends; the text beside them keeps what the gate wrote (its own UTC offset)
for display and export.
"""

from __future__ import annotations

from sqlalchemy import (
    BigInteger,
    Column,
    Float,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    PrimaryKeyConstraint,
    Table,
    Text,
    UniqueConstraint,
    text,
)

metadata = MetaData()

# --- events from gates ---------------------------------------------------------------------

events = Table(
    "events",
    metadata,
    Column("gate", Text, nullable=False),
    Column("epoch", Text, nullable=False, server_default=""),
    Column("seq", BigInteger, nullable=False),
    Column("uuid", Text, nullable=False),
    Column("at", Text, nullable=False),  # ISO 8601 with the gate's offset
    Column("at_us", BigInteger, nullable=False),  # the same instant, µs since epoch, UTC
    Column("kind", Text, nullable=False),
    Column("decision", Text),
    Column("reason", Text, nullable=False),
    Column("household", Text),
    Column("pass_id", BigInteger),
    Column("role", Text),  # the pass's role (resident, staff, visitor…) when the event has one
    Column("body", Text, nullable=False),  # the event as exported (protocol.events.Event)
    Column("received_at", Text, nullable=False),
    Column("direction", Text),
    PrimaryKeyConstraint("gate", "epoch", "seq"),
    Index("events_at_us", "at_us"),
    Index("events_household_at_us", "household", "at_us"),
    Index("events_pass_at_us", "pass_id", "at_us"),
    Index("events_uuid", "gate", "uuid"),
    Index("events_kind_at_us", "kind", "at_us"),
)

event_aliases = Table(
    "event_aliases",
    metadata,
    Column("gate", Text, nullable=False),
    Column("epoch", Text, nullable=False),
    Column("seq", BigInteger, nullable=False),
    Column("uuid", Text, nullable=False),
    PrimaryKeyConstraint("gate", "epoch", "seq"),
)

gates = Table(
    "gates",
    metadata,
    Column("gate", Text, primary_key=True),
    Column("contiguous_seq", BigInteger, nullable=False, server_default="0"),
    Column("last_seen", Text),
    Column("status", Text),
    Column("epoch", Text),
)

conflicts = Table(
    "conflicts",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("gate", Text, nullable=False),
    Column("seq", BigInteger, nullable=False),
    Column("kind", Text, nullable=False),
    Column("detail", Text, nullable=False),
    Column("body", Text),
    Column("at", Text, nullable=False),
    Column("uuid", Text),
    Column("epoch", Text),  # of the refused event (seq_reused); None for replay conflicts
    Index(
        "conflicts_once",
        "kind",
        "uuid",
        unique=True,
        sqlite_where=text("uuid IS NOT NULL"),
        postgresql_where=text("uuid IS NOT NULL"),
    ),
)

household_days = Table(
    "household_days",
    metadata,
    # The conflict replay's state after the last passage it took, per household and replay
    # period (server/conflicts.py): a passage later than `last_*` costs one step, not a replay.
    Column("household", Text, nullable=False),
    Column("period_start_us", BigInteger, nullable=False),
    Column("last_at_us", BigInteger, nullable=False),
    Column("last_gate", Text, nullable=False),
    Column("last_seq", BigInteger, nullable=False),
    Column("state", Text, nullable=False),  # JSON
    PrimaryKeyConstraint("household", "period_start_us"),
)

rejected_messages = Table(
    "rejected_messages",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("topic", Text, nullable=False),
    Column("reason", Text, nullable=False),
    Column("excerpt", Text),
    Column("at", Text, nullable=False),
)

rejection_counts = Table(
    "rejection_counts",
    metadata,
    # Every refused message and event, counted per UTC day and topic; `sampled` of them have a
    # row in rejected_messages (server/storage/events.py, reject_message).
    Column("day", Text, nullable=False),  # YYYY-MM-DD (UTC)
    Column("topic", Text, nullable=False),
    Column("refused", BigInteger, nullable=False),
    Column("sampled", Integer, nullable=False),
    PrimaryKeyConstraint("day", "topic"),
)

gate_outages = Table(
    "gate_outages",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("gate", Text, nullable=False),
    Column("since", Text, nullable=False),
    Column("cause", Text, nullable=False),
    Column("alert_key", Text, nullable=False),
    Column("opened_at", Text, nullable=False),
    Column("ended_at", Text),
    Index(
        "gate_outages_open",
        "gate",
        unique=True,
        sqlite_where=text("ended_at IS NULL"),
        postgresql_where=text("ended_at IS NULL"),
    ),
)

alerts = Table(
    "alerts",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("key", Text, nullable=False, unique=True),
    Column("at", Text, nullable=False),
    Column("kind", Text, nullable=False),
    Column("priority", Text, nullable=False),
    Column("gate", Text),
    Column("pass_id", BigInteger),
    Column("household", Text),
    Column("detail", Text, nullable=False, server_default=""),
    Column("event_at", Text),
    Column("acked_at", Text),
    Column("acked_by", Text),
    Column("ack_note", Text),
    Index("alerts_open", "acked_at", "at"),
)

# --- the site: keys, register, passes ------------------------------------------------------

keys = Table(
    "keys",
    metadata,
    Column("key_id", Integer, primary_key=True, autoincrement=False),
    Column("public_key", LargeBinary, nullable=False),
    Column("created_at", Text, nullable=False),
    Column("retired_at", Text),
)

roots = Table(
    # The site's trust roots (protocol.roots), one row per version: the signed root document
    # as published. Root n+1 is signed by a key of root n (revision 0004).
    "roots",
    metadata,
    Column("version", Integer, primary_key=True, autoincrement=False),
    Column("document", Text, nullable=False),
    Column("created_at", Text, nullable=False),
)

households = Table(
    "households",
    metadata,
    Column("household", Text, primary_key=True),
    Column("quarantined", Integer, nullable=False, server_default="0"),
    Column("quarantine_until", Text),
    Column("updated_at", Text, nullable=False),
    Column("building", Text, nullable=False, server_default=""),
    Column("unit", Text, nullable=False, server_default=""),
    Column("room", Text, nullable=False, server_default=""),
    Column("grid", Text, nullable=False, server_default=""),
    Column("community", Text, nullable=False, server_default=""),
    Column("street", Text, nullable=False, server_default=""),
    Column("district", Text, nullable=False, server_default=""),
    Index("households_place", "building", "unit", "room"),
)

persons = Table(
    "persons",
    metadata,
    Column("person_id", Integer, primary_key=True, autoincrement=True),
    Column("household", Text, ForeignKey("households.household"), nullable=False),
    Column("name", Text, nullable=False),
    Column("phone", Text, nullable=False, server_default=""),
    Column("role", Text, nullable=False, server_default="resident"),
    Column("created_at", Text, nullable=False),
    Column("updated_at", Text, nullable=False),
    UniqueConstraint("household", "name", "phone"),
    Index("persons_name", "name"),
)

passes = Table(
    "passes",
    metadata,
    Column("pass_id", BigInteger, primary_key=True, autoincrement=False),
    Column("household", Text, nullable=False),
    Column("name", Text, nullable=False),
    Column("room", Text, nullable=False, server_default=""),
    Column("role", Text, nullable=False),
    Column("valid_from", BigInteger, nullable=False),  # s since epoch (protocol.passes)
    Column("valid_until", BigInteger, nullable=False),
    Column("key_id", Integer, nullable=False),
    Column("qr", Text, nullable=False),
    Column("issued_at", Text, nullable=False),
    Column("revoked_at", Text),
    Column("revoke_reason", Text),
    Column("person_id", Integer, ForeignKey("persons.person_id")),
)

visitors = Table(
    "visitors",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("at", Text, nullable=False),
    Column("name", Text, nullable=False),
    Column("phone", Text, nullable=False),
    Column("reason", Text, nullable=False),
    Column("host_household", Text, nullable=False),
    Column("temperature_c", Float, nullable=False),
    Column("pass_id", BigInteger),
    Column("valid_until", BigInteger, nullable=False),
    Column("registered_by", Text, nullable=False),
    Column("purged_at", Text),
    Index("visitors_at", "at"),
    Index("visitors_valid_until", "valid_until"),
)

meta = Table(
    "meta",
    metadata,
    Column("key", Text, primary_key=True),
    Column("value", Text, nullable=False),
)

audit = Table(
    "audit",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("at", Text, nullable=False),
    Column("actor", Text, nullable=False),
    Column("action", Text, nullable=False),
    Column("target", Text),
    Column("detail", Text),
)

# --- operators of the dashboard ------------------------------------------------------------

operators = Table(
    "operators",
    metadata,
    Column("name", Text, primary_key=True),
    Column("role", Text, nullable=False),
    Column("password_hash", Text, nullable=False),
    Column("created_at", Text, nullable=False),
    Column("last_login_at", Text),
    Column("disabled", Integer, nullable=False, server_default="0"),
    # TOTP second factor (revision 0004): the base32 secret once switched on, a secret shown
    # for enrolment but not yet confirmed, when it was switched on, and the last time step
    # whose code was accepted (a code is never accepted twice).
    Column("totp_secret", Text),
    Column("totp_pending", Text),
    Column("totp_enabled_at", Text),
    Column("totp_last_step", BigInteger),
)

sessions = Table(
    "sessions",
    metadata,
    Column("token_sha256", Text, primary_key=True),
    Column("operator", Text, ForeignKey("operators.name"), nullable=False),
    Column("csrf", Text, nullable=False),
    Column("created_at", Text, nullable=False),
    Column("expires_at", Text, nullable=False),
    Column("last_seen_at", Text, nullable=False),
    Column("address", Text),
)

# A login attempt is recorded here before its password or code is checked (the limits count
# these rows), and deleted when it succeeds: what stays are the failures.
login_failures = Table(
    "login_failures",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("account", Text, nullable=False),
    Column("address", Text, nullable=False),
    Column("at", Text, nullable=False),
    Index("login_failures_at", "address", "account", "at"),
)

login_challenges = Table(
    # The second step of a login whose password was right: a code (or enrolment) is due.
    "login_challenges",
    metadata,
    Column("token_sha256", Text, primary_key=True),
    Column("operator", Text, ForeignKey("operators.name"), nullable=False),
    Column("address", Text, nullable=False),
    Column("purpose", Text, nullable=False),  # "code" or "enrol"
    Column("expires_at", Text, nullable=False),
    Column("tries", Integer, nullable=False, server_default="0"),
)

recovery_codes = Table(
    # One-time codes for an operator who lost the TOTP device: only their SHA-256 is kept.
    "recovery_codes",
    metadata,
    Column("operator", Text, ForeignKey("operators.name"), nullable=False),
    Column("code_sha256", Text, nullable=False),
    Column("used_at", Text),
    PrimaryKeyConstraint("operator", "code_sha256"),
)

# --- coordination of several collectors ----------------------------------------------------

job_runs = Table(
    "job_runs",
    metadata,
    # Jobs that must run once per period however many collectors run (server/storage/jobs.py).
    Column("job", Text, primary_key=True),
    Column("due_us", BigInteger, nullable=False),  # not to run again before (µs, UTC)
    Column("holder", Text),  # who ran it last
    Column("ran_us", BigInteger),
)
