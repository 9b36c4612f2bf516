"""What tests read of the collector's store (events, gates, conflicts) and how they store a
batch as the collector does: each a transaction of its own around a function of
server/storage/events.py or gates.py, on SQLite or PostgreSQL alike."""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime
from typing import Any

from sqlalchemy import select

from protocol.events import Event
from protocol.policy import Policy
from server.conflicts import Conflict, find_conflicts
from server.storage import Store, replay, schema
from server.storage import events as events_db
from server.storage import gates as gates_db
from server.storage.events import InsertResult
from server.storage.times import utcnow


def insert_events(store: Store, gate: str, batch: list[Event]) -> InsertResult:
    """One batch of `gate`, stored in one transaction (without the conflict check)."""
    with store.write() as tx:
        return events_db.insert_events(tx, gate, batch, now=utcnow())


def check_conflicts(store: Store, policy: Policy, events: Iterable[Event]) -> list[Conflict]:
    """find_conflicts in a transaction of its own: the conflicts recorded now."""
    with store.write() as tx:
        return find_conflicts(tx, policy, events)


def event_keys(store: Store) -> list[tuple[str, str, int, str]]:
    with store.read() as tx:
        return events_db.event_keys(tx)


def alias_keys(store: Store) -> list[tuple[str, str, int, str]]:
    with store.read() as tx:
        return events_db.alias_keys(tx)


def count_events(store: Store) -> int:
    with store.read() as tx:
        return events_db.count_events(tx)


def events(store: Store) -> list[dict[str, Any]]:
    """Every event as exported, by instant."""
    with store.read() as tx:
        return list(events_db.bodies(tx))


def conflicts(store: Store) -> list[dict[str, Any]]:
    with store.read() as tx:
        return events_db.conflicts(tx)


def rejected(store: Store) -> list[tuple[str, str, str]]:
    """(topic, reason, excerpt) of each rejected message, oldest first."""
    with store.read() as tx:
        return events_db.rejected(tx)


def rejected_count(store: Store) -> int:
    """Refused messages and events counted (sampled or not)."""
    with store.read() as tx:
        return events_db.rejected_count(tx)


def rejection_counts(store: Store) -> list[tuple[str, str, int, int]]:
    """(day, topic, refused, sampled) of each row of `rejection_counts`."""
    with store.read() as tx:
        rows = tx.execute(select(schema.rejection_counts)).all()
    return sorted((str(d), str(t), int(r), int(s)) for d, t, r, s in rows)


def gates(store: Store) -> list[dict[str, Any]]:
    with store.read() as tx:
        return gates_db.listing(tx)


def contiguous_seq(store: Store, gate: str) -> int:
    with store.read() as tx:
        return gates_db.contiguous_seq(tx, gate)


def set_gate_status(store: Store, gate: str, status: dict[str, Any]) -> None:
    with store.write() as tx:
        gates_db.set_status(tx, gate, status, utcnow())


def revoked_at(store: Store, pass_id: int) -> datetime | None:
    with store.read() as tx:
        return replay.revocations(tx, [pass_id]).get(pass_id)


def quarantine_period(store: Store, household: str) -> tuple[datetime, datetime | None] | None:
    with store.read() as tx:
        return replay.quarantines(tx, [household]).get(household)
