"""What the dashboard's pages read: figures, the feed, households, visitors, the audit log.

Read-only queries, each in the caller's transaction (`Store.read()`). Instants are µs
since the epoch, UTC (server/storage/times.py); ranges and orders over events use the
indexed `events.at_us`, half-open `[start_us, end_us)`. Fields kept only in an event's
JSON body are read here in Python, never with a database's JSON functions.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import ColumnElement, and_, case, func, literal_column, select, union_all

from server.storage.engine import Tx
from server.storage.schema import audit, events, gates, households, passes, persons, visitors

PASSAGE_KINDS = ("decision", "exit_request", "override")
"""Kinds of event that open the door: a pass decision, an exit button, a guard override."""
HOUR_US = 3_600_000_000


def _passage() -> ColumnElement[bool]:
    """An accepted passage: allowed, in or out, by a pass, the exit button or a guard."""
    return and_(
        events.c.decision == "allow",
        events.c.direction.in_(("in", "out")),
        events.c.kind.in_(PASSAGE_KINDS),
    )


def _denial() -> ColumnElement[bool]:
    return and_(events.c.kind == "decision", events.c.decision == "deny")


def _within(start_us: int, end_us: int) -> ColumnElement[bool]:
    return and_(events.c.at_us >= start_us, events.c.at_us < end_us)


def _dicts(rows: Iterable[Any]) -> list[dict[str, Any]]:
    return [dict(r._mapping) for r in rows]


# --- figures -----------------------------------------------------------------------------


def passages(tx: Tx, start_us: int, end_us: int) -> dict[str, int]:
    """Accepted passages in `[start_us, end_us)`: {"in": n, "out": n}."""
    counts = {"in": 0, "out": 0}
    rows = tx.execute(
        select(events.c.direction, func.count())
        .where(_passage(), _within(start_us, end_us))
        .group_by(events.c.direction)
    )
    counts.update({str(d): int(n) for d, n in rows})
    return counts


def denials(tx: Tx, start_us: int, end_us: int) -> list[tuple[str, int]]:
    """Pass decisions denied in `[start_us, end_us)`, per reason code: most frequent first."""
    n = func.count().label("n")
    rows = tx.execute(
        select(events.c.reason, n)
        .where(_denial(), _within(start_us, end_us))
        .group_by(events.c.reason)
        .order_by(n.desc(), events.c.reason)
    )
    return [(str(r), int(k)) for r, k in rows]


def passages_per_hour(tx: Tx, start_us: int, end_us: int) -> list[tuple[int, str, int]]:
    """Accepted passages in `[start_us, end_us)` per whole hour after `start_us` (0, 1, …)
    and direction: `(hour, direction, count)`. Integer µs: an event at exactly one hour
    after the start is in hour 1."""
    inner = (
        select(
            ((events.c.at_us - start_us) // HOUR_US).label("h"),
            events.c.direction,
        )
        .where(_passage(), _within(start_us, end_us))
        .subquery()
    )
    rows = tx.execute(
        select(inner.c.h, inner.c.direction, func.count()).group_by(inner.c.h, inner.c.direction)
    )
    return [(int(h), str(d), int(n)) for h, d, n in rows]


def per_gate(tx: Tx, start_us: int, end_us: int) -> list[dict[str, Any]]:
    """Per gate with any event in `[start_us, end_us)`, by gate: {"gate", "in", "out", "deny"}
    (accepted passages in and out, denied pass decisions)."""

    def count(condition: ColumnElement[bool]) -> Any:
        return func.coalesce(func.sum(case((condition, 1), else_=0)), 0)

    rows = tx.execute(
        select(
            events.c.gate,
            count(and_(_passage(), events.c.direction == "in")),
            count(and_(_passage(), events.c.direction == "out")),
            count(_denial()),
        )
        .where(_within(start_us, end_us))
        .group_by(events.c.gate)
        .order_by(events.c.gate)
    )
    return [{"gate": g, "in": int(i), "out": int(o), "deny": int(d)} for g, i, o, d in rows]


def outside(tx: Tx, since_us: int) -> list[dict[str, Any]]:
    """Passes whose last accepted passage at or after `since_us` was out, by household and
    pass: {"pass_id", "household", "at"} (`at` as the gate wrote it)."""
    latest = func.row_number().over(
        partition_by=events.c.pass_id, order_by=(events.c.at_us.desc(), events.c.seq.desc())
    )
    inner = (
        select(
            events.c.pass_id,
            events.c.household,
            events.c.direction,
            events.c.at,
            latest.label("k"),
        )
        .where(_passage(), events.c.pass_id.is_not(None), events.c.at_us >= since_us)
        .subquery()
    )
    rows = tx.execute(
        select(inner.c.pass_id, inner.c.household, inner.c.at)
        .where(inner.c.k == 1, inner.c.direction == "out")
        .order_by(inner.c.household, inner.c.pass_id)
    )
    return _dicts(rows)


def household_exits(tx: Tx, household: str, start_us: int, end_us: int) -> int:
    """Accepted exits of `household`'s residents in `[start_us, end_us)` (staff and visitors
    do not count against its quota; an event without a role is a resident's)."""
    n = tx.execute(
        select(func.count()).where(
            _passage(),
            events.c.direction == "out",
            events.c.household == household,
            func.coalesce(events.c.role, "resident").not_in(("staff", "visitor")),
            _within(start_us, end_us),
        )
    ).scalar()
    return int(n or 0)


# --- the feed and the gates --------------------------------------------------------------


def recent_events(
    tx: Tx, kinds: Iterable[str], limit: int, *, gate: str = "", decision: str = ""
) -> list[dict[str, Any]]:
    """The newest `limit` events of `kinds` (of `gate`, with `decision`, when given), newest
    first, as stored bodies (protocol.events.Event JSON)."""
    query = select(events.c.body).where(events.c.kind.in_(tuple(kinds)))
    if gate:
        query = query.where(events.c.gate == gate)
    if decision:
        query = query.where(events.c.decision == decision)
    rows = tx.execute(
        query.order_by(events.c.at_us.desc(), events.c.gate, events.c.seq.desc()).limit(limit)
    )
    return [json.loads(body) for (body,) in rows]


def pass_holders(tx: Tx, pass_ids: Iterable[int]) -> dict[int, tuple[str, str]]:
    """pass id → (holder's name, room) as issued; pass ids not stored are left out."""
    wanted = sorted(set(pass_ids))
    if not wanted:
        return {}
    rows = tx.execute(
        select(passes.c.pass_id, passes.c.name, passes.c.room).where(passes.c.pass_id.in_(wanted))
    )
    return {int(p): (str(n), r or "") for p, n, r in rows}


@dataclass(frozen=True)
class GateSeen:
    """A gate as the collector last heard it: `status` the retained status JSON as stored
    (None before the first), `last_seen` ISO 8601 UTC."""

    gate: str
    last_seen: str | None
    status: str | None


def gate_names(tx: Tx) -> list[str]:
    return [str(g) for g in tx.execute(select(gates.c.gate).order_by(gates.c.gate)).scalars()]


def gates_seen(tx: Tx) -> list[GateSeen]:
    """Every gate, by name."""
    rows = tx.execute(
        select(gates.c.gate, gates.c.last_seen, gates.c.status).order_by(gates.c.gate)
    )
    return [GateSeen(str(g), seen, status) for g, seen, status in rows]


# --- households --------------------------------------------------------------------------


def search_households(tx: Tx, query: str, limit: int) -> list[dict[str, Any]]:
    """Households whose id, place (building-unit-room) or a member's name contains `query`
    (from the register), or whose id, room or a holder's name does (from issued passes),
    by id: {"household", "room", "quarantined" (0/1), "passes" (issued)}. `%` and `_` in
    `query` are wildcards; ASCII letters match either case."""
    like = f"%{query.strip()}%"
    place = households.c.building + "-" + households.c.unit + "-" + households.c.room
    registered = (
        select(
            households.c.household.label("household"),
            place.label("room"),
            households.c.quarantined.label("quarantined"),
            literal_column("0").label("passes"),
        )
        .join_from(households, persons, persons.c.household == households.c.household, isouter=True)
        .where(households.c.household.ilike(like) | place.ilike(like) | persons.c.name.ilike(like))
    )
    issued = (
        select(
            passes.c.household,
            passes.c.room,
            literal_column("0"),
            func.count(),
        )
        .where(
            passes.c.household.ilike(like) | passes.c.room.ilike(like) | passes.c.name.ilike(like)
        )
        .group_by(passes.c.household, passes.c.room)
    )
    both = union_all(registered, issued).subquery()
    rows = tx.execute(
        select(
            both.c.household,
            func.max(both.c.room).label("room"),
            func.max(both.c.quarantined).label("quarantined"),
            func.sum(both.c.passes).label("passes"),
        )
        .group_by(both.c.household)
        .order_by(both.c.household)
        .limit(limit)
    )
    return [{**r, "passes": int(r["passes"] or 0)} for r in _dicts(rows)]


def household_place(tx: Tx, household: str) -> dict[str, Any] | None:
    """The register's place and quarantine of a household: {"building", "unit", "room",
    "grid", "community", "quarantined" (0/1), "quarantine_until"}; None if not registered."""
    h = households.c
    row = tx.execute(
        select(
            h.building, h.unit, h.room, h.grid, h.community, h.quarantined, h.quarantine_until
        ).where(h.household == household)
    ).first()
    return None if row is None else dict(row._mapping)


def household_passes(tx: Tx, household: str) -> list[dict[str, Any]]:
    """Passes issued to a household, by id: {"pass_id", "name", "room", "role", "valid_from",
    "valid_until" (Unix s), "revoked_at"}."""
    p = passes.c
    rows = tx.execute(
        select(p.pass_id, p.name, p.room, p.role, p.valid_from, p.valid_until, p.revoked_at)
        .where(p.household == household)
        .order_by(p.pass_id)
    )
    return _dicts(rows)


def household_members(tx: Tx, household: str) -> list[dict[str, Any]]:
    """The register's members of a household, in the order added: {"name", "phone", "role"}."""
    rows = tx.execute(
        select(persons.c.name, persons.c.phone, persons.c.role)
        .where(persons.c.household == household)
        .order_by(persons.c.person_id)
    )
    return _dicts(rows)


def household_events(
    tx: Tx, household: str, kinds: Iterable[str], limit: int
) -> list[dict[str, Any]]:
    """A household's newest `limit` events of `kinds`, newest first: {"gate", "at",
    "decision", "reason", "direction", "pass_id"}."""
    e = events.c
    rows = tx.execute(
        select(e.gate, e.at, e.decision, e.reason, e.direction, e.pass_id)
        .where(e.household == household, e.kind.in_(tuple(kinds)))
        .order_by(e.at_us.desc())
        .limit(limit)
    )
    return _dicts(rows)


# --- visitors ----------------------------------------------------------------------------


def visitors_since(tx: Tx, since: datetime, limit: int) -> list[dict[str, Any]]:
    """Visitors registered at or after `since` (aware), newest first, with their pass's
    `revoked_at`: {"id", "at", "name", "phone", "reason", "host_household", "temperature_c",
    "pass_id", "valid_until" (Unix s), "registered_by", "purged_at", "revoked_at"}."""
    # `visitors.at` is the server's own UTC text (server/storage/times.utcnow): one format, so text
    # order is time order.
    after = since.astimezone(UTC).isoformat(timespec="milliseconds")
    v = visitors.c
    rows = tx.execute(
        select(
            v.id,
            v.at,
            v.name,
            v.phone,
            v.reason,
            v.host_household,
            v.temperature_c,
            v.pass_id,
            v.valid_until,
            v.registered_by,
            v.purged_at,
            passes.c.revoked_at,
        )
        .join_from(visitors, passes, passes.c.pass_id == v.pass_id, isouter=True)
        .where(v.at >= after)
        .order_by(v.id.desc())
        .limit(limit)
    )
    return _dicts(rows)


def pass_card(tx: Tx, pass_id: int | None) -> dict[str, Any] | None:
    """What a printed pass shows: {"qr", "valid_from", "valid_until" (Unix s), "revoked_at"};
    None if there is no such pass."""
    if pass_id is None:
        return None
    p = passes.c
    row = tx.execute(
        select(p.qr, p.valid_from, p.valid_until, p.revoked_at).where(p.pass_id == pass_id)
    ).first()
    return None if row is None else dict(row._mapping)


# --- the audit log -----------------------------------------------------------------------


def audit_entries(tx: Tx, limit: int) -> list[dict[str, Any]]:
    """The newest `limit` audit entries, newest first: {"id", "at", "actor", "action",
    "target", "detail"}."""
    a = audit.c
    rows = tx.execute(
        select(a.id, a.at, a.actor, a.action, a.target, a.detail).order_by(a.id.desc()).limit(limit)
    )
    return _dicts(rows)


def overrides(tx: Tx, limit: int) -> list[dict[str, Any]]:
    """The newest `limit` guard overrides at gates, newest first: {"gate", "seq", "at",
    "reason", "direction", "detail"}; `detail` is the event's `detail` as compact JSON (an
    object: who and why), None when it has none."""
    e = events.c
    rows = tx.execute(
        select(e.gate, e.seq, e.at, e.reason, e.direction, e.body)
        .where(e.kind == "override")
        .order_by(e.at_us.desc())
        .limit(limit)
    )
    found = []
    for row in rows:
        entry = dict(row._mapping)
        entry["detail"] = _json_field(entry.pop("body"), "detail")
        found.append(entry)
    return found


def _json_field(body: str, name: str) -> Any:
    """A field of a JSON object as SQLite's json_extract gave it: objects and arrays as
    compact JSON text, other values as they are; None if absent or not an object."""
    try:
        value = json.loads(body).get(name)
    except (ValueError, AttributeError):
        return None
    if isinstance(value, dict | list):
        return json.dumps(value, ensure_ascii=False, separators=(",", ":"))
    return value
