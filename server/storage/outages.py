"""Gate outages (`gate_outages`): one open row per gate that is down, ended when it is heard
from again. The gates' liveness they are judged on is `gates.listing` (last_seen, retained
status); the decision is server/gate_health.py.

A gate has at most one open outage (the partial unique index `gate_outages_open`): `open_`
is an INSERT … ON CONFLICT DO NOTHING, so of two collectors opening the same outage at once
exactly one does, and the other is told it did not (no error).
"""

from __future__ import annotations

from collections.abc import Iterable

from sqlalchemy import select, update

from server.storage.engine import Tx, insert
from server.storage.schema import gate_outages


def open_outages(tx: Tx) -> dict[str, str]:
    """gate → since (UTC ISO text) of each outage not yet ended."""
    rows = tx.execute(
        select(gate_outages.c.gate, gate_outages.c.since).where(gate_outages.c.ended_at.is_(None))
    )
    return {str(g): str(since) for g, since in rows}


def open_(tx: Tx, gate: str, *, since: str, cause: str, alert_key: str, opened_at: str) -> bool:
    """Open an outage of `gate`. False, changing nothing, when the gate already has an open
    one (also one another transaction committed meanwhile)."""
    opened = tx.execute(
        insert(tx, gate_outages)
        .values(gate=gate, since=since, cause=cause, alert_key=alert_key, opened_at=opened_at)
        .on_conflict_do_nothing()
        .returning(gate_outages.c.id)  # rowcount is not told when a row comes back
    ).first()
    return opened is not None


def end(tx: Tx, gates_: Iterable[str], at: str) -> int:
    """End the open outages of `gates_` at `at` (UTC ISO text); returns how many ended."""
    names = list(gates_)
    if not names:
        return 0
    done = tx.execute(
        update(gate_outages)
        .where(gate_outages.c.gate.in_(names), gate_outages.c.ended_at.is_(None))
        .values(ended_at=at)
    )
    return int(done.rowcount)
