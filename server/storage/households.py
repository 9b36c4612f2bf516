"""The household register: households (their place in the community, their quarantine) and
the persons in them.

A household's id is the community's (protocol.passes.check_household); a person is one
(household, name) pair, numbered by `person_id`. Times are ISO 8601 UTC texts
(times.utcnow); `quarantined` is 0/1 in the store, a bool here.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from sqlalchemy import RowMapping, select, update

from server.storage.engine import Tx, insert
from server.storage.schema import households, persons


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
    quarantine_until: str | None  # ISO 8601; None: until released

    def to_json(self) -> dict[str, Any]:
        return dict(self.__dict__)


@dataclass(frozen=True)
class Person:
    person_id: int
    household: str
    name: str
    role: str
    building: str  # the household's place
    unit: str
    room: str


_HOUSEHOLD = (
    households.c.household,
    households.c.building,
    households.c.unit,
    households.c.room,
    households.c.grid,
    households.c.community,
    households.c.street,
    households.c.district,
    households.c.quarantined,
    households.c.quarantine_until,
)
_PERSON = select(
    persons.c.person_id,
    persons.c.household,
    persons.c.name,
    persons.c.role,
    households.c.building,
    households.c.unit,
    households.c.room,
).join_from(persons, households, persons.c.household == households.c.household)

# --- households -----------------------------------------------------------------------------


def household(tx: Tx, household_id: str) -> Household | None:
    row = tx.execute(select(*_HOUSEHOLD).where(households.c.household == household_id)).first()
    return None if row is None else _household(row._mapping)


def search(tx: Tx, query: str, limit: int = 50) -> list[Household]:
    """Households whose id, building-unit-room, room or a member's name contains `query`
    (LIKE wildcards % and _ work; case-insensitive), by id, at most `limit`."""
    like = f"%{query.strip()}%"
    h = households.c
    place = h.building + "-" + h.unit + "-" + h.room
    rows = tx.execute(
        select(*_HOUSEHOLD)
        .distinct()
        .select_from(households.outerjoin(persons, persons.c.household == h.household))
        .where(
            h.household.ilike(like)
            | place.ilike(like)
            | h.room.ilike(like)
            | persons.c.name.ilike(like)
        )
        .order_by(h.household)
        .limit(limit)
    )
    return [_household(r._mapping) for r in rows]


def ensure(tx: Tx, household_id: str, at: str) -> None:
    """Make the household's row exist (a pass issued before the register was imported); its
    place and quarantine are left as they are."""
    ins = insert(tx, households).values(household=household_id, updated_at=at)
    tx.execute(ins.on_conflict_do_nothing(index_elements=[households.c.household]))


def put_place(
    tx: Tx,
    household_id: str,
    *,
    building: str,
    unit: str,
    room: str,
    grid: str,
    community: str | None,
    street: str | None,
    district: str | None,
    at: str,
) -> None:
    """Create the household or update its place; `community`, `street`, `district` left as
    they are when None (a register file without those columns)."""
    optional = {"community": community, "street": street, "district": district}
    ins = insert(tx, households).values(
        household=household_id,
        building=building,
        unit=unit,
        room=room,
        grid=grid,
        updated_at=at,
        **{k: v or "" for k, v in optional.items()},
    )
    changed = ["building", "unit", "room", "grid", "updated_at"]
    changed += [k for k, v in optional.items() if v is not None]
    tx.execute(
        ins.on_conflict_do_update(
            index_elements=[households.c.household], set_={c: ins.excluded[c] for c in changed}
        )
    )


def set_quarantine(tx: Tx, household_id: str, on: bool, until: str | None, at: str) -> None:
    """Put the household under home quarantine until `until` (None: until released) or release
    it (`on` False); its row is made to exist. `at` becomes its updated_at, the start of the
    quarantine as conflict detection reads it."""
    ins = insert(tx, households).values(
        household=household_id, quarantined=int(on), quarantine_until=until, updated_at=at
    )
    tx.execute(
        ins.on_conflict_do_update(
            index_elements=[households.c.household],
            set_={
                "quarantined": ins.excluded.quarantined,
                "quarantine_until": ins.excluded.quarantine_until,
                "updated_at": ins.excluded.updated_at,
            },
        )
    )


def quarantined(tx: Tx) -> list[tuple[str, str | None]]:
    """(household, until) of every household under quarantine, by id; until None: until
    released. Quarantines that ran out are in: the caller compares with its clock."""
    rows = tx.execute(
        select(households.c.household, households.c.quarantine_until)
        .where(households.c.quarantined == 1)
        .order_by(households.c.household)
    )
    return [(str(h), None if u is None else str(u)) for h, u in rows]


# --- persons --------------------------------------------------------------------------------


def members(tx: Tx, household_id: str) -> list[dict[str, Any]]:
    """{person_id, name, phone, role} of the household's persons, in the order registered."""
    rows = tx.execute(
        select(persons.c.person_id, persons.c.name, persons.c.phone, persons.c.role)
        .where(persons.c.household == household_id)
        .order_by(persons.c.person_id)
    )
    return [dict(r._asdict()) for r in rows]


def member_roles(tx: Tx, household_ids: Iterable[str]) -> dict[str, dict[str, str]]:
    """Household → member name → role (the first registered under that name), for the
    households given (each one in the result, members or not)."""
    wanted = sorted(set(household_ids))
    out: dict[str, dict[str, str]] = {h: {} for h in wanted}
    for i in range(0, len(wanted), 500):  # bound parameters per statement stay few
        rows = tx.execute(
            select(persons.c.household, persons.c.name, persons.c.role)
            .where(persons.c.household.in_(wanted[i : i + 500]))
            .order_by(persons.c.person_id)
        )
        for h, name, role in rows:
            out[h].setdefault(name, role)
    return out


def put_person(tx: Tx, household_id: str, name: str, phone: str, role: str, at: str) -> bool:
    """Register a person, or update the phone and role of the one registered first under
    (household, name). True if a person was added. The household's row must exist."""
    found = tx.execute(
        select(persons.c.person_id)
        .where(persons.c.household == household_id, persons.c.name == name)
        .order_by(persons.c.person_id)
        .limit(1)
    ).scalar()
    if found is None:
        tx.execute(
            persons.insert().values(
                household=household_id,
                name=name,
                phone=phone,
                role=role,
                created_at=at,
                updated_at=at,
            )
        )
        return True
    tx.execute(
        update(persons)
        .where(persons.c.person_id == found)
        .values(phone=phone, role=role, updated_at=at)
    )
    return False


def person(tx: Tx, household_id: str, name: str) -> Person | None:
    """The person registered first under (household, name), None if there is none."""
    row = tx.execute(
        _PERSON.where(persons.c.household == household_id, persons.c.name == name)
        .order_by(persons.c.person_id)
        .limit(1)
    ).first()
    return None if row is None else Person(**row._asdict())


def persons_in_roles(tx: Tx, roles: Iterable[str]) -> list[Person]:
    """Every person whose role is one of `roles`, by household and person_id."""
    rows = tx.execute(
        _PERSON.where(persons.c.role.in_(sorted(roles))).order_by(
            persons.c.household, persons.c.person_id
        )
    )
    return [Person(**r._asdict()) for r in rows]


def _household(values: RowMapping) -> Household:
    return Household(**{**values, "quarantined": bool(values["quarantined"])})
