"""The household register on the server: households (with their place in the community)
and the people in them. Full personal data stays here (DESIGN.md, privacy); gates get
pseudonymous ids and masked names only.

This module owns its tables (migration set "menwei-register"). Importing registers
from CSV/XLSX, printing cards and reports build on it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from sqlite_utils import Database
from sqlite_utils.migrations import Migrations

from server.store import ServerStore

migrations = Migrations("menwei-register")


@migrations()
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


@dataclass(frozen=True)
class Household:
    household: str
    building: str
    unit: str
    room: str
    grid: str
    community: str
    street: str
    district: str
    quarantined: bool
    quarantine_until: str | None

    def to_json(self) -> dict[str, Any]:
        return dict(self.__dict__)


_HH_COLUMNS = (
    "household",
    "building",
    "unit",
    "room",
    "grid",
    "community",
    "street",
    "district",
    "quarantined",
    "quarantine_until",
)


class RegisterStore:
    """Queries over households and persons. Writers (import, issuing) use the same tables."""

    def __init__(self, store: ServerStore) -> None:
        self.store = store
        with store._lock:
            migrations.apply(store.db)

    def household(self, household: str) -> Household | None:
        with self.store._lock:
            row = self.store.db.execute(
                f"SELECT {', '.join(_HH_COLUMNS)} FROM households WHERE household = ?",
                [household],
            ).fetchone()
        return None if row is None else _household(row)

    def search(self, query: str, limit: int = 50) -> list[Household]:
        """By household id, building-unit-room, or a member's name (substring)."""
        like = f"%{query.strip()}%"
        with self.store._lock:
            rows = self.store.db.execute(
                f"SELECT DISTINCT {', '.join('h.' + c for c in _HH_COLUMNS)} FROM households h"
                " LEFT JOIN persons p ON p.household = h.household"
                " WHERE h.household LIKE ? OR (h.building || '-' || h.unit || '-' || h.room)"
                " LIKE ? OR h.room LIKE ? OR p.name LIKE ? ORDER BY h.household LIMIT ?",
                [like, like, like, like, limit],
            ).fetchall()
        return [_household(r) for r in rows]

    def members(self, household: str) -> list[dict[str, Any]]:
        with self.store._lock:
            rows = self.store.db.execute(
                "SELECT person_id, name, phone, role FROM persons WHERE household = ?"
                " ORDER BY person_id",
                [household],
            ).fetchall()
        return [dict(zip(("person_id", "name", "phone", "role"), r, strict=True)) for r in rows]

    def passes(self, household: str) -> list[dict[str, Any]]:
        with self.store._lock:
            rows = self.store.db.execute(
                "SELECT pass_id, name, role, valid_from, valid_until, revoked_at, person_id"
                " FROM passes WHERE household = ? ORDER BY pass_id",
                [household],
            ).fetchall()
        keys = ("pass_id", "name", "role", "valid_from", "valid_until", "revoked_at", "person_id")
        return [dict(zip(keys, r, strict=True)) for r in rows]


def _household(row: tuple[Any, ...]) -> Household:
    values = list(row)
    values[8] = bool(values[8])
    return Household(*values)
