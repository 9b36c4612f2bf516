"""The site's signing keys as the store knows them: id, public key, retirement.

Private keys are files (server/keys.py), never in the store. Ids are never reused: a new
key's id is above every key's, retired ones included. The signing key is the newest active
(not retired) one.
"""

from __future__ import annotations

from sqlalchemy import func, select, update

from protocol.passes import TrustKey
from server.storage.engine import Tx
from server.storage.schema import keys


def add(tx: Tx, key_id: int, public_key: bytes, created_at: str) -> None:
    """Store a new key (Ed25519 public key, 32 bytes). Raises IntegrityError if the id exists."""
    tx.execute(keys.insert().values(key_id=key_id, public_key=public_key, created_at=created_at))


def trust_keys(tx: Tx, *, retired: bool = False) -> list[TrustKey]:
    """The active keys by id; with `retired`, every key ever made (to verify old documents)."""
    query = select(keys.c.key_id, keys.c.public_key).order_by(keys.c.key_id)
    if not retired:
        query = query.where(keys.c.retired_at.is_(None))
    return [TrustKey(int(k), bytes(p)) for k, p in tx.execute(query)]


def signing_id(tx: Tx) -> int | None:
    """The id of the newest active key, None when there is none."""
    value = tx.execute(select(func.max(keys.c.key_id)).where(keys.c.retired_at.is_(None))).scalar()
    return None if value is None else int(value)


def newest_id(tx: Tx) -> int:
    """The highest id ever given (retired keys too), 0 when there is no key."""
    return int(tx.execute(select(func.coalesce(func.max(keys.c.key_id), 0))).scalar_one())


def retire(tx: Tx, key_id: int, at: str) -> bool:
    """Mark an active key retired at `at`; False when it does not exist or is retired."""
    result = tx.execute(
        update(keys)
        .where(keys.c.key_id == key_id, keys.c.retired_at.is_(None))
        .values(retired_at=at)
    )
    return result.rowcount == 1
