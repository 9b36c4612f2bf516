"""Passes the site signed: who holds them, their validity, their revocation.

Validity bounds are Unix seconds, the end exclusive (protocol.passes); `issued_at` and
`revoked_at` ISO 8601 UTC texts (times.utcnow). Visitor passes (role "visitor") are not
counted against a household's cap, nor are passes signed by a retired key.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import NamedTuple

from sqlalchemy import ColumnElement, and_, func, select, update

from server.storage.engine import Tx
from server.storage.schema import keys, passes

VISITOR = "visitor"


@dataclass(frozen=True)
class StoredPass:
    pass_id: int
    household: str
    name: str  # in full: gates get it masked (protocol.register.mask_name)
    room: str
    role: str
    valid_from: int  # s since epoch
    valid_until: int  # s since epoch, exclusive
    key_id: int
    qr: str
    issued_at: str
    person_id: int | None = None  # the registered person it was issued to
    revoked_at: str | None = None
    revoke_reason: str | None = None


def add(tx: Tx, issued: StoredPass) -> None:
    """Store a newly signed pass. Raises IntegrityError if its id is taken."""
    add_all(tx, [issued])


def add_all(tx: Tx, issued: Sequence[StoredPass]) -> None:
    """Store newly signed passes in one statement (`pass issue-all`: tens of thousands).
    Raises IntegrityError if an id is taken."""
    if issued:
        tx.execute(passes.insert(), [p.__dict__ for p in issued])


def revoke(tx: Tx, pass_id: int, reason: str, at: str) -> bool:
    """Revoke a pass at `at`; False when it does not exist or is already revoked."""
    result = tx.execute(
        update(passes)
        .where(passes.c.pass_id == pass_id, passes.c.revoked_at.is_(None))
        .values(revoked_at=at, revoke_reason=reason)
    )
    return result.rowcount == 1


def find(
    tx: Tx,
    *,
    household: str | None = None,
    ending_after: int | None = None,
    unrevoked: bool = False,
    visitors: bool = True,
) -> list[StoredPass]:
    """Passes by household and id: only `household`'s if given, only those valid until after
    `ending_after` (s since epoch) if given, only unrevoked ones with `unrevoked`, without
    visitor passes unless `visitors`."""
    query = select(passes).order_by(passes.c.household, passes.c.pass_id)
    if household is not None:
        query = query.where(passes.c.household == household)
    if ending_after is not None:
        query = query.where(passes.c.valid_until > ending_after)
    if unrevoked:
        query = query.where(passes.c.revoked_at.is_(None))
    if not visitors:
        query = query.where(passes.c.role != VISITOR)
    return [StoredPass(**row._asdict()) for row in tx.execute(query)]


class Listed(NamedTuple):
    """What the gates' register shows of a pass (protocol.register.PassEntry, the name in
    full: masked by the caller) and its revocation."""

    pass_id: int
    household: str
    name: str
    room: str
    role: str
    revoked_at: str | None
    revoke_reason: str | None


def listed(tx: Tx, *, ending_after: int) -> list[Listed]:
    """The passes valid until after `ending_after` (s since epoch), by id: what the register
    lists, read without the columns it does not show (100,000 rows in well under a second)."""
    c = passes.c
    query = (
        select(c.pass_id, c.household, c.name, c.room, c.role, c.revoked_at, c.revoke_reason)
        .where(c.valid_until > ending_after)
        .order_by(c.pass_id)
    )
    return [Listed._make(row) for row in tx.execute(query)]


def current(tx: Tx, at: int) -> list[StoredPass]:
    """The passes that hold a place at `at` (s since epoch), by household and id: unrevoked,
    valid until after it, signed by a key not retired (what a household's cap and `pass
    issue-all`'s "already holds one" count)."""
    query = select(passes).where(_current(at)).order_by(passes.c.household, passes.c.pass_id)
    return [StoredPass(**row._asdict()) for row in tx.execute(query)]


def held_by_household(tx: Tx, household: str, at: int) -> int:
    """How many unrevoked passes of `household`, other than visitors', are valid until after
    `at` (s since epoch): what its cap counts (not yet valid ones too)."""
    return _count(tx, passes.c.household == household, passes.c.role != VISITOR, _current(at))


def _current(at: int) -> ColumnElement[bool]:
    """Unrevoked, valid until after `at`, and signed by a key not retired (a retired key's
    passes are refused at every gate that has seen the retirement: they hold no place)."""
    retired = select(keys.c.key_id).where(keys.c.retired_at.is_not(None))
    return and_(
        passes.c.revoked_at.is_(None), passes.c.valid_until > at, passes.c.key_id.not_in(retired)
    )


def _count(tx: Tx, *where: ColumnElement[bool]) -> int:
    return int(tx.execute(select(func.count()).select_from(passes).where(*where)).scalar_one())
