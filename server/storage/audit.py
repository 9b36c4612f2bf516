"""The audit log: who did which administrative action, to what, when.

Rows are only added. `actor` is an operator's name or the OS user of a command; `target`
what the action was on (a pass id, a household, a file name); `detail` free text.
"""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import select

from server.storage.engine import Tx
from server.storage.schema import audit
from server.storage.times import utcnow


@dataclass(frozen=True)
class Entry:
    id: int
    at: str  # ISO 8601 UTC (times.utcnow)
    actor: str
    action: str
    target: str | None
    detail: str | None


def record(
    tx: Tx, actor: str, action: str, target: str, detail: str = "", *, at: str | None = None
) -> None:
    """Add one entry, at `at` (default now)."""
    tx.execute(
        audit.insert().values(
            at=at or utcnow(), actor=actor, action=action, target=target, detail=detail
        )
    )


def entries(tx: Tx, *, action: str | None = None, limit: int | None = None) -> list[Entry]:
    """The entries (only those of `action` if given), newest first, at most `limit`."""
    query = select(audit).order_by(audit.c.id.desc()).limit(limit)
    if action is not None:
        query = query.where(audit.c.action == action)
    return [Entry(**row._asdict()) for row in tx.execute(query)]
