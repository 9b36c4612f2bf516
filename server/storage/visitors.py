"""The visitor register in the store (`visitors`, and the name on a visitor's pass row when it
is purged). The rules (what a registration must pass, retention) are server/visitors.py.

`purge` is one UPDATE … WHERE purged_at IS NULL … RETURNING: of two collectors purging at
once, each visitor is purged by exactly one (on PostgreSQL the second's UPDATE waits for the
first to commit, then finds the rows purged; on SQLite writers are serialised).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from sqlalchemy import insert, select, update

from server.storage.engine import Tx
from server.storage.schema import passes, visitors


@dataclass(frozen=True)
class Visitor:
    """A registered visitor. `at` when registered (UTC ISO text), `valid_until` the end of
    their pass (s since the epoch), `purged_at` when their name and phone were erased."""

    id: int
    at: str
    name: str
    phone: str
    reason: str
    host_household: str
    temperature_c: float
    pass_id: int | None
    valid_until: int
    registered_by: str
    purged_at: str | None

    def to_json(self) -> dict[str, Any]:
        return dict(self.__dict__)


_COLUMNS = [visitors.c[name] for name in Visitor.__dataclass_fields__]


def get(tx: Tx, visitor_id: int) -> Visitor | None:
    row = tx.execute(select(*_COLUMNS).where(visitors.c.id == visitor_id)).first()
    return None if row is None else Visitor(**row._mapping)


def since(tx: Tx, start: str, limit: int = 500) -> list[Visitor]:
    """Visitors registered at or after `start` (UTC ISO text with milliseconds, as
    server.storage.times.utcnow() writes `at`: compared as text), newest first."""
    rows = tx.execute(
        select(*_COLUMNS).where(visitors.c.at >= start).order_by(visitors.c.id.desc()).limit(limit)
    )
    return [Visitor(**r._mapping) for r in rows]


def add(
    tx: Tx,
    *,
    at: str,
    name: str,
    phone: str,
    reason: str,
    host_household: str,
    temperature_c: float,
    pass_id: int | None,
    valid_until: int,
    registered_by: str,
) -> int:
    """Store a registration; returns its id."""
    new_id = tx.scalar(
        insert(visitors)
        .values(
            at=at,
            name=name,
            phone=phone,
            reason=reason,
            host_household=host_household,
            temperature_c=temperature_c,
            pass_id=pass_id,
            valid_until=valid_until,
            registered_by=registered_by,
        )
        .returning(visitors.c.id)
    )
    return int(new_id)


def purge(tx: Tx, *, expired_before: int, at: str, pass_name: str) -> int:
    """Erase the name and phone of every visitor not yet purged whose pass ended before
    `expired_before` (s since the epoch), marking them purged at `at` (UTC ISO text), and
    write `pass_name` over the name on their visitor pass rows. Returns how many visitors
    this call purged (0 for those another transaction purged first)."""
    due = (visitors.c.valid_until < expired_before, visitors.c.purged_at.is_(None))
    tx.execute(
        update(passes)
        .where(
            passes.c.pass_id.in_(select(visitors.c.pass_id).where(*due)),
            passes.c.role == "visitor",
        )
        .values(name=pass_name)
    )
    purged = tx.execute(
        update(visitors)
        .where(*due)
        .values(name="", phone="", purged_at=at)
        .returning(visitors.c.id)
    ).all()
    return len(purged)
