"""The schema history before the storage layer: sqlite-utils migration sets, SQLite only.

Site databases made before server/storage/ existed carry these sets in
`_sqlite_migrations` (each feature module used to own its tables). Opening
such a database applies whichever of them it lacks, in the order below, which
brings it to the schema of migration 0001 (server/storage/migrations); from
there Alembic takes over. Kept verbatim: history is never edited.
"""

from __future__ import annotations

from sqlite_utils import Database
from sqlite_utils.migrations import Migrations

server_migrations = Migrations("menwei-server")


@server_migrations()
def m001_initial(db: Database) -> None:
    db.execute(
        """CREATE TABLE events (
            gate TEXT NOT NULL, seq INTEGER NOT NULL, uuid TEXT NOT NULL, at TEXT NOT NULL,
            kind TEXT NOT NULL, decision TEXT, reason TEXT NOT NULL, household TEXT,
            pass_id INTEGER, body TEXT NOT NULL, received_at TEXT NOT NULL,
            PRIMARY KEY (gate, seq)
        )"""
    )
    db.execute("CREATE INDEX events_at ON events(at)")
    db.execute(
        "CREATE TABLE gates (gate TEXT PRIMARY KEY, contiguous_seq INTEGER NOT NULL DEFAULT 0,"
        " last_seen TEXT, status TEXT)"
    )
    db.execute(
        "CREATE TABLE conflicts (id INTEGER PRIMARY KEY, gate TEXT NOT NULL, seq INTEGER NOT NULL,"
        " kind TEXT NOT NULL, detail TEXT NOT NULL, body TEXT, at TEXT NOT NULL)"
    )
    db.execute(
        "CREATE TABLE rejected_messages (id INTEGER PRIMARY KEY, topic TEXT NOT NULL,"
        " reason TEXT NOT NULL, excerpt TEXT, at TEXT NOT NULL)"
    )
    db.execute(
        """CREATE TABLE passes (
            pass_id INTEGER PRIMARY KEY, household TEXT NOT NULL, name TEXT NOT NULL,
            room TEXT NOT NULL DEFAULT '', role TEXT NOT NULL, valid_from INTEGER NOT NULL,
            valid_until INTEGER NOT NULL, key_id INTEGER NOT NULL, qr TEXT NOT NULL,
            issued_at TEXT NOT NULL, revoked_at TEXT, revoke_reason TEXT
        )"""
    )
    db.execute(
        "CREATE TABLE keys (key_id INTEGER PRIMARY KEY, public_key BLOB NOT NULL,"
        " created_at TEXT NOT NULL, retired_at TEXT)"
    )
    db.execute("CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)")


@server_migrations()
def m002_households_and_audit(db: Database) -> None:
    db.execute(
        "CREATE TABLE households (household TEXT PRIMARY KEY, quarantined INTEGER NOT NULL"
        " DEFAULT 0, quarantine_until TEXT, updated_at TEXT NOT NULL)"
    )
    db.execute(
        "CREATE TABLE audit (id INTEGER PRIMARY KEY, at TEXT NOT NULL, actor TEXT NOT NULL,"
        " action TEXT NOT NULL, target TEXT, detail TEXT)"
    )
    db.execute("ALTER TABLE events ADD COLUMN direction TEXT")
    db.execute("UPDATE events SET direction = json_extract(body, '$.direction')")
    db.execute("CREATE INDEX events_household ON events(household, at)")
    db.execute("CREATE INDEX events_pass ON events(pass_id, at)")


@server_migrations()
def m003_conflict_keys(db: Database) -> None:
    db.execute("ALTER TABLE conflicts ADD COLUMN uuid TEXT")
    db.execute("CREATE UNIQUE INDEX conflicts_once ON conflicts(kind, uuid) WHERE uuid IS NOT NULL")


@server_migrations()
def m004_epochs(db: Database) -> None:
    """Events are keyed on (gate, epoch, seq): a gate whose database was replaced numbers
    from 1 again under a new epoch. Existing rows are the legacy epoch ''."""
    db.execute(
        """CREATE TABLE events_keyed (
            gate TEXT NOT NULL, epoch TEXT NOT NULL DEFAULT '', seq INTEGER NOT NULL,
            uuid TEXT NOT NULL, at TEXT NOT NULL, kind TEXT NOT NULL, decision TEXT,
            reason TEXT NOT NULL, household TEXT, pass_id INTEGER, body TEXT NOT NULL,
            received_at TEXT NOT NULL, direction TEXT,
            PRIMARY KEY (gate, epoch, seq)
        )"""
    )
    db.execute(
        "INSERT INTO events_keyed (gate, epoch, seq, uuid, at, kind, decision, reason, household,"
        " pass_id, body, received_at, direction) SELECT gate, '', seq, uuid, at, kind, decision,"
        " reason, household, pass_id, body, received_at, direction FROM events"
    )
    db.execute("DROP TABLE events")
    db.execute("ALTER TABLE events_keyed RENAME TO events")
    db.execute("CREATE INDEX events_at ON events(at)")
    db.execute("CREATE INDEX events_household ON events(household, at)")
    db.execute("CREATE INDEX events_pass ON events(pass_id, at)")
    db.execute("ALTER TABLE gates ADD COLUMN epoch TEXT")
    db.execute("UPDATE gates SET epoch = ''")


@server_migrations()
def m005_event_aliases(db: Database) -> None:
    db.execute(
        "CREATE TABLE event_aliases (gate TEXT NOT NULL, epoch TEXT NOT NULL, seq INTEGER NOT"
        " NULL, uuid TEXT NOT NULL, PRIMARY KEY (gate, epoch, seq))"
    )
    db.execute("CREATE INDEX events_uuid ON events(gate, uuid)")


register_migrations = Migrations("menwei-register")


@register_migrations()
def m001_register(db: Database) -> None:
    for column in ("building", "unit", "room", "grid", "community", "street", "district"):
        db.execute(f"ALTER TABLE households ADD COLUMN {column} TEXT NOT NULL DEFAULT ''")
    db.execute(
        """CREATE TABLE persons (
            person_id INTEGER PRIMARY KEY,
            household TEXT NOT NULL REFERENCES households(household),
            name TEXT NOT NULL,
            phone TEXT NOT NULL DEFAULT '',
            role TEXT NOT NULL DEFAULT 'resident',
            created_at TEXT NOT NULL,
            updated_at TEXT NOT NULL,
            UNIQUE (household, name, phone)
        )"""
    )
    db.execute("CREATE INDEX persons_name ON persons(name)")
    db.execute("ALTER TABLE passes ADD COLUMN person_id INTEGER REFERENCES persons(person_id)")
    db.execute("CREATE INDEX households_place ON households(building, unit, room)")


alerts_migrations = Migrations("menwei-alerts")


@alerts_migrations()
def m001_alerts(db: Database) -> None:
    db.execute(
        """CREATE TABLE alerts (
            id INTEGER PRIMARY KEY, key TEXT NOT NULL UNIQUE, at TEXT NOT NULL,
            kind TEXT NOT NULL, priority TEXT NOT NULL, gate TEXT, pass_id INTEGER,
            household TEXT, detail TEXT NOT NULL DEFAULT '', event_at TEXT,
            acked_at TEXT, acked_by TEXT, ack_note TEXT
        )"""
    )
    db.execute("CREATE INDEX alerts_open ON alerts(acked_at, at)")


gate_health_migrations = Migrations("menwei-gate-health")


@gate_health_migrations()
def m001_gate_outages(db: Database) -> None:
    db.execute(
        "CREATE TABLE gate_outages (id INTEGER PRIMARY KEY, gate TEXT NOT NULL,"
        " since TEXT NOT NULL, cause TEXT NOT NULL, alert_key TEXT NOT NULL,"
        " opened_at TEXT NOT NULL, ended_at TEXT)"
    )
    db.execute("CREATE UNIQUE INDEX gate_outages_open ON gate_outages(gate) WHERE ended_at IS NULL")


visitors_migrations = Migrations("menwei-visitors")


@visitors_migrations()
def m001_visitors(db: Database) -> None:
    db.execute(
        """CREATE TABLE visitors (
            id INTEGER PRIMARY KEY, at TEXT NOT NULL, name TEXT NOT NULL,
            phone TEXT NOT NULL, reason TEXT NOT NULL, host_household TEXT NOT NULL,
            temperature_c REAL NOT NULL, pass_id INTEGER, valid_until INTEGER NOT NULL,
            registered_by TEXT NOT NULL, purged_at TEXT
        )"""
    )
    db.execute("CREATE INDEX visitors_at ON visitors(at)")
    db.execute("CREATE INDEX visitors_valid_until ON visitors(valid_until)")


accounts_migrations = Migrations("menwei-accounts")


@accounts_migrations()
def m001_accounts(db: Database) -> None:
    db.execute(
        "CREATE TABLE operators (name TEXT PRIMARY KEY, role TEXT NOT NULL,"
        " password_hash TEXT NOT NULL, created_at TEXT NOT NULL, last_login_at TEXT,"
        " disabled INTEGER NOT NULL DEFAULT 0)"
    )
    db.execute(
        "CREATE TABLE sessions (token_sha256 TEXT PRIMARY KEY, operator TEXT NOT NULL"
        " REFERENCES operators(name), csrf TEXT NOT NULL, created_at TEXT NOT NULL,"
        " expires_at TEXT NOT NULL, last_seen_at TEXT NOT NULL, address TEXT)"
    )
    db.execute(
        "CREATE TABLE login_failures (id INTEGER PRIMARY KEY, account TEXT NOT NULL,"
        " address TEXT NOT NULL, at TEXT NOT NULL)"
    )
    db.execute("CREATE INDEX login_failures_at ON login_failures(address, account, at)")


SETS = (
    server_migrations,
    register_migrations,
    alerts_migrations,
    gate_health_migrations,
    visitors_migrations,
    accounts_migrations,
)
"""In the order a site database applied them (server first: the others alter its tables)."""
