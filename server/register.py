"""The household register on the server: households (with their place in the community)
and the people in them. Full personal data stays here (DESIGN.md, privacy); gates get
pseudonymous ids and masked names only.

Its queries: server/storage/households.py. Importing registers from CSV/XLSX, printing
cards and reports build on it.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from server.storage import households, passes
from server.storage.engine import Store
from server.storage.households import Household, Person
from server.storage.times import utcnow

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


def place_label(building: str, unit: str, room: str) -> str:
    """3, 2, 501 → 3-2-501 (empty parts left out)."""
    return "-".join(p for p in (building, unit, room) if p)


class RegisterStore:
    """Queries and changes of households and persons, each in its own transaction of `store`
    (server/storage/households.py holds the SQL)."""

    def __init__(self, store: Store) -> None:
        self.store = store

    def household(self, household: str) -> Household | None:
        with self.store.read() as tx:
            return households.household(tx, household)

    def search(self, query: str, limit: int = 50) -> list[Household]:
        """By household id, building-unit-room, or a member's name (substring)."""
        with self.store.read() as tx:
            return households.search(tx, query, limit)

    def members(self, household: str) -> list[dict[str, Any]]:
        """{person_id, name, phone, role} of each member, in the order registered."""
        with self.store.read() as tx:
            return households.members(tx, household)

    def passes(self, household: str) -> list[dict[str, Any]]:
        """{pass_id, name, role, valid_from, valid_until, revoked_at, person_id} of every pass
        issued to the household, by id (validity in s since epoch)."""
        keys = ("pass_id", "name", "role", "valid_from", "valid_until", "revoked_at", "person_id")
        with self.store.read() as tx:
            found = passes.find(tx, household=household)
        return [{k: getattr(p, k) for k in keys} for p in found]

    # --- writers ----------------------------------------------------------------------------

    def member_roles(self, household_ids: Iterable[str]) -> dict[str, dict[str, str]]:
        """Household → member name → role, for the households given."""
        with self.store.read() as tx:
            return households.member_roles(tx, household_ids)

    def apply_import(self, rows: Sequence[RegisterRow]) -> tuple[int, int]:
        """Upsert households (by id) and persons (by household and name) in one transaction.
        Returns (inserted, updated) persons."""
        inserted = 0
        now = utcnow()
        with self.store.write() as tx:
            for r in rows:
                households.put_place(
                    tx,
                    r.household,
                    building=r.building,
                    unit=r.unit,
                    room=r.room,
                    grid=r.grid,
                    community=r.community,
                    street=r.street,
                    district=r.district,
                    at=now,
                )
                inserted += households.put_person(tx, r.household, r.name, r.phone, r.role, now)
        return inserted, len(rows) - inserted

    def ensure_household(self, household: str) -> None:
        """Make the household's row exist (a pass issued before the register was imported);
        its place and quarantine are left as they are."""
        with self.store.write() as tx:
            households.ensure(tx, household, utcnow())

    def person(self, household: str, name: str) -> Person | None:
        with self.store.read() as tx:
            return households.person(tx, household, name)
