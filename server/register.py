"""The household register on the server: households (with their place in the community)
and the people in them. Full personal data stays here (DESIGN.md, privacy); gates get
pseudonymous ids and masked names only.

Its tables: server/storage/schema.py. Importing registers
from CSV/XLSX, printing cards and reports build on it.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from server.store import ServerStore, utcnow


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


# Roles that hold a pass counted against `passes_per_household_max`.
CAPPED_ROLES = frozenset({"resident", "staff"})


@dataclass(frozen=True)
class RegisterRow:
    """One valid line of a register file. `community`, `street`, `district` are None when the
    file has no such column: an import then keeps what the household already has."""

    row: int
    household: str
    building: str
    unit: str
    room: str
    grid: str
    name: str
    phone: str
    role: str
    community: str | None = None
    street: str | None = None
    district: str | None = None


@dataclass(frozen=True)
class Person:
    person_id: int
    household: str
    name: str
    role: str
    place: str
    """building-unit-room, as shown to the guard."""


def place_label(building: str, unit: str, room: str) -> str:
    """3, 2, 501 → 3-2-501 (empty parts left out)."""
    return "-".join(p for p in (building, unit, room) if p)


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

    # --- writers ----------------------------------------------------------------------------

    def member_roles(self, households: Iterable[str]) -> dict[str, dict[str, str]]:
        """Household → member name → role, for the households given."""
        wanted = sorted(set(households))
        out: dict[str, dict[str, str]] = {h: {} for h in wanted}
        with self.store._lock:
            for i in range(0, len(wanted), 500):  # SQLite's bound-parameter limit
                chunk = wanted[i : i + 500]
                rows = self.store.db.execute(
                    "SELECT household, name, role FROM persons WHERE household IN"
                    f" ({','.join('?' * len(chunk))}) ORDER BY person_id",
                    chunk,
                ).fetchall()
                for household, name, role in rows:
                    out[household].setdefault(name, role)
        return out

    def apply_import(self, rows: Sequence[RegisterRow]) -> tuple[int, int]:
        """Upsert households (by id) and persons (by household and name) in one transaction.
        Returns (inserted, updated) persons."""
        inserted = updated = 0
        now = utcnow()
        with self.store.atomic() as db:
            for r in rows:
                db.execute(
                    "INSERT INTO households (household, building, unit, room, grid, community,"
                    " street, district, updated_at) VALUES (:hh, :building, :unit, :room, :grid,"
                    " COALESCE(:community, ''), COALESCE(:street, ''), COALESCE(:district, ''),"
                    " :now) ON CONFLICT(household) DO UPDATE SET building = excluded.building,"
                    " unit = excluded.unit, room = excluded.room, grid = excluded.grid,"
                    " community = COALESCE(:community, households.community),"
                    " street = COALESCE(:street, households.street),"
                    " district = COALESCE(:district, households.district),"
                    " updated_at = excluded.updated_at",
                    {
                        "hh": r.household,
                        "building": r.building,
                        "unit": r.unit,
                        "room": r.room,
                        "grid": r.grid,
                        "community": r.community,
                        "street": r.street,
                        "district": r.district,
                        "now": now,
                    },
                )
                found = db.execute(
                    "SELECT person_id FROM persons WHERE household = ? AND name = ?"
                    " ORDER BY person_id LIMIT 1",
                    [r.household, r.name],
                ).fetchone()
                if found is None:
                    db.execute(
                        "INSERT INTO persons (household, name, phone, role, created_at,"
                        " updated_at) VALUES (?,?,?,?,?,?)",
                        [r.household, r.name, r.phone, r.role, now, now],
                    )
                    inserted += 1
                else:
                    db.execute(
                        "UPDATE persons SET phone = ?, role = ?, updated_at = ?"
                        " WHERE person_id = ?",
                        [r.phone, r.role, now, found[0]],
                    )
                    updated += 1
        return inserted, updated

    def ensure_household(self, household: str) -> None:
        """Make the household's row exist (a pass issued before the register was imported);
        its place and quarantine are left as they are."""
        with self.store.atomic() as db:
            db.execute(
                "INSERT OR IGNORE INTO households (household, updated_at) VALUES (?, ?)",
                [household, utcnow()],
            )

    def person(self, household: str, name: str) -> Person | None:
        with self.store._lock:
            row = self.store.db.execute(
                "SELECT p.person_id, p.household, p.name, p.role, h.building, h.unit, h.room"
                " FROM persons p JOIN households h ON h.household = p.household"
                " WHERE p.household = ? AND p.name = ? ORDER BY p.person_id LIMIT 1",
                [household, name],
            ).fetchone()
        return None if row is None else _person(row)

    def capped_persons(self) -> list[Person]:
        """Every registered person whose role holds a counted pass, by household and id."""
        with self.store._lock:
            rows = self.store.db.execute(
                "SELECT p.person_id, p.household, p.name, p.role, h.building, h.unit, h.room"
                " FROM persons p JOIN households h ON h.household = p.household"
                f" WHERE p.role IN ({','.join('?' * len(CAPPED_ROLES))})"
                " ORDER BY p.household, p.person_id",
                sorted(CAPPED_ROLES),
            ).fetchall()
        return [_person(r) for r in rows]


def _person(row: tuple[Any, ...]) -> Person:
    pid, household, name, role, building, unit, room = row
    return Person(int(pid), household, name, role, place_label(building, unit, room))


def _household(row: tuple[Any, ...]) -> Household:
    values = list(row)
    values[8] = bool(values[8])
    return Household(*values)
