"""The site's trust roots as the store keeps them: each root document as it was signed.

Root n+1 is signed by a key of root n (protocol.roots); the rows are never changed, and
every document the server signs carries them all (its chain).
"""

from __future__ import annotations

from sqlalchemy import func, select

from server.storage.engine import Tx
from server.storage.schema import roots


def add(tx: Tx, version: int, document: str, created_at: str) -> None:
    """Store root `version` (the signed root document's JSON). Raises IntegrityError when
    that version exists."""
    tx.execute(roots.insert().values(version=version, document=document, created_at=created_at))


def chain(tx: Tx) -> list[str]:
    """Every root document, oldest first ([] when the site has none yet)."""
    return [str(d) for (d,) in tx.execute(select(roots.c.document).order_by(roots.c.version))]


def latest_version(tx: Tx) -> int:
    """The newest root's version, 0 when there is none."""
    return int(tx.execute(select(func.coalesce(func.max(roots.c.version), 0))).scalar_one())
