"""The gates the collector hears from (`gates`): per gate its current epoch, the contiguous
seq acknowledged to it, when it was last heard from and its retained status.

`contiguous_seq` is the highest seq up to which every event of the gate's current epoch is
held (in `events`, or in `event_aliases` for events sent again under a new number): what
the collector acknowledges. It only moves within an epoch; a batch of another epoch starts
it again from what that epoch holds (server/storage/events.py says when).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from sqlalchemy import bindparam, func, select, union_all

from server.storage.engine import Tx, dialect_insert, insert, prepared
from server.storage.schema import conflicts, event_aliases, events, gates

SEQ_REUSED = "seq_reused"
"""The conflict kind of an event refused because its (gate, epoch, seq) held another."""

RUN_CHUNK = 512
"""Seqs read at first while walking a gate's run of held seqs (one read in the usual case)."""


def gate_epoch(tx: Tx, gate: str) -> str | None:
    """The epoch of `gate`'s newest batch, None for a gate never heard from."""
    return tx.scalar(select(gates.c.epoch).where(gates.c.gate == gate))


def contiguous_seq(tx: Tx, gate: str) -> int:
    """What `gate` is acknowledged up to in its current epoch; 0 for a gate never heard from."""
    return int(tx.scalar(select(gates.c.contiguous_seq).where(gates.c.gate == gate)) or 0)


@dataclass(frozen=True)
class Advance:
    """A gate's position after a batch."""

    contiguous_seq: int  # the end of its run of held seqs in the batch's epoch
    replaced_epoch: str | None  # the epoch the batch's replaced, when it changed
    first_reused: int | None  # the lowest seq of the epoch it sent for two events (conflicts)


def advance_contiguous(tx: Tx, gate: str, epoch: str, now: str) -> Advance:
    """After a batch of `gate` in `epoch` was stored: its contiguous seq in `epoch` (from
    the stored one when the epoch is the same, else from 0), the epoch it replaced, and the
    lowest seq of `epoch` refused as reused (`seq_reused` in conflicts, read with the
    gate's row: one statement). Records the new position, and `now` (UTC ISO text) as last
    seen."""
    held_seq, held_epoch, reused = tx.execute(
        prepared(tx, _position_query), {"gate": gate, "epoch": epoch}
    ).one()
    start = int(held_seq) if held_epoch == epoch and held_seq is not None else 0
    contiguous = _run_end(tx, gate, epoch, start)
    tx.execute(
        prepared(tx, _record_position),
        {"gate": gate, "contiguous_seq": contiguous, "last_seen": now, "epoch": epoch},
    )
    replaced = held_epoch if held_epoch is not None and held_epoch != epoch else None
    return Advance(contiguous, replaced, None if reused is None else int(reused))


def _position_query(_dialect: str) -> Any:
    """The gate's stored (contiguous_seq, epoch) and its epoch's first reused seq: a row
    even for a gate never heard from (NULLs)."""
    gate: Any = bindparam("gate")
    reused = select(func.min(conflicts.c.seq)).where(
        conflicts.c.kind == SEQ_REUSED,
        conflicts.c.uuid.is_not(None),  # every seq_reused row has one: the conflicts_once index
        conflicts.c.gate == gate,
        conflicts.c.epoch == bindparam("epoch"),
    )
    return select(
        select(gates.c.contiguous_seq).where(gates.c.gate == gate).scalar_subquery(),
        select(gates.c.epoch).where(gates.c.gate == gate).scalar_subquery(),
        reused.scalar_subquery(),
    )


def _record_position(dialect: str) -> Any:
    statement = dialect_insert(dialect, gates)
    return statement.on_conflict_do_update(
        index_elements=[gates.c.gate],
        set_={
            "contiguous_seq": statement.excluded.contiguous_seq,
            "last_seen": statement.excluded.last_seen,
            "epoch": statement.excluded.epoch,
        },
    )


def _run_end(tx: Tx, gate: str, epoch: str, start: int) -> int:
    """The end of the run of held seqs start+1, start+2, … of `gate` in `epoch` (`start`
    when start+1 is not held): the events' and the aliases' seqs above it read in order, a
    chunk of each at a time (index ranges, one statement; one chunk in the usual case)."""
    c, chunk = start, RUN_CHUNK
    while True:
        params = {"gate": gate, "epoch": epoch, "above": c, "n": chunk}
        held = set(tx.scalars(prepared(tx, _run_query), params))
        top = c + chunk  # every seq up to here held in either table is in `held`
        while c + 1 in held and c < top:
            c += 1
        if c < top:
            return c
        chunk *= 2


def _run_query(_dialect: str) -> Any:
    def above(table: Any) -> Any:
        """The table's `n` lowest seqs of the gate's epoch above `above`."""
        return (
            select(table.c.seq)
            .where(
                table.c.gate == bindparam("gate"),
                table.c.epoch == bindparam("epoch"),
                table.c.seq > bindparam("above"),
            )
            .order_by(table.c.seq)
            .limit(bindparam("n"))
            .subquery()
        )

    held, aliased = above(events), above(event_aliases)
    return union_all(select(held.c.seq), select(aliased.c.seq))


def set_status(tx: Tx, gate: str, status: dict[str, Any], now: str) -> None:
    """Store a gate's retained status, heard at `now` (UTC ISO text). A Last Will carries
    only {gate, site, state}: the last known figures (backlog, versions, camera) are kept
    beside it, marked offline since `now`."""
    if status.get("state") == "offline":
        stored = tx.scalar(select(gates.c.status).where(gates.c.gate == gate))
        previous = json.loads(stored) if stored else {}
        status = {**previous, **status, "offline_at": now}
    text = json.dumps(status, ensure_ascii=False)
    tx.execute(
        insert(tx, gates)
        .values(gate=gate, status=text, last_seen=now)
        .on_conflict_do_update(
            index_elements=[gates.c.gate], set_={"status": text, "last_seen": now}
        )
    )


def listing(tx: Tx) -> list[dict[str, Any]]:
    """Every gate heard from, by name: {"gate", "contiguous_seq", "last_seen" (UTC ISO text
    or None), "status" (its retained status as a dict, or None)}."""
    rows = tx.execute(
        select(gates.c.gate, gates.c.contiguous_seq, gates.c.last_seen, gates.c.status).order_by(
            gates.c.gate
        )
    )
    return [
        {
            "gate": g,
            "contiguous_seq": int(c),
            "last_seen": seen,
            "status": json.loads(s) if s else None,
        }
        for g, c, seen, s in rows
    ]
