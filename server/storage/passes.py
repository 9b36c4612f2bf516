"""Passes the site signed: who holds them, their validity, their revocation.

Validity bounds are Unix seconds, the end exclusive (protocol.passes); `issued_at` and
`revoked_at` ISO 8601 UTC texts (times.utcnow). Visitor passes (role "visitor") are not
counted against a household's cap, nor are passes signed by a retired key.
"""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import ColumnElement, and_, func, or_, select, update

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
    tx.execute(passes.insert().values(**issued.__dict__))


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


def held_by_household(tx: Tx, household: str, at: int) -> int:
    """How many unrevoked passes of `household`, other than visitors', are valid until after
    `at` (s since epoch): what its cap counts (not yet valid ones too)."""
    return _count(tx, passes.c.household == household, passes.c.role != VISITOR, _current(at))


def held_by_person(tx: Tx, person_id: int, household: str, name: str, at: int) -> int:
    """How many unrevoked passes valid until after `at` a registered person holds: those
    issued to them, and those issued by name in their household before they were registered."""
    return _count(
        tx,
        _current(at),
        or_(
            passes.c.person_id == person_id,
            and_(
                passes.c.person_id.is_(None),
                passes.c.household == household,
                passes.c.name == name,
            ),
        ),
    )


def _current(at: int) -> ColumnElement[bool]:
    """Unrevoked, valid until after `at`, and signed by a key not retired (a retired key's
    passes are refused at every gate that has seen the retirement: they hold no place)."""
    retired = select(keys.c.key_id).where(keys.c.retired_at.is_not(None))
    return and_(
        passes.c.revoked_at.is_(None), passes.c.valid_until > at, passes.c.key_id.not_in(retired)
    )


def _count(tx: Tx, *where: ColumnElement[bool]) -> int:
    return int(tx.execute(select(func.count()).select_from(passes).where(*where)).scalar_one())
