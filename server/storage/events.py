"""Stored events read back by their keys: what a reconciliation with the gates' logs needs."""

from __future__ import annotations

from sqlalchemy import select

from server.storage.engine import Tx
from server.storage.schema import event_aliases, events

EventKey = tuple[str, str, int, str]
"""(gate, epoch, seq, uuid): an event as a gate numbered it."""


def event_keys(tx: Tx) -> list[EventKey]:
    """The key of every stored event, in no particular order."""
    rows = tx.execute(select(events.c.gate, events.c.epoch, events.c.seq, events.c.uuid))
    return [(str(g), str(e), int(s), str(u)) for g, e, s, u in rows]


def alias_keys(tx: Tx) -> list[EventKey]:
    """The keys under which gates sent again events stored under another number (a gate
    that moved to a new epoch after losing history), in no particular order."""
    rows = tx.execute(
        select(
            event_aliases.c.gate, event_aliases.c.epoch, event_aliases.c.seq, event_aliases.c.uuid
        )
    )
    return [(str(g), str(e), int(s), str(u)) for g, e, s, u in rows]
