"""Operator alerts in the store (`alerts`), and what an alert's text reads about the events
it refers to. The rules (which kinds are high priority, what an alert says) are server/alerts.py.

An alert is stored once per `key` (a unique column): `add` is an INSERT … ON CONFLICT DO
NOTHING, so two collectors raising the same alert at once store it once, and exactly one of
them gets it back (the other's insert waits for the first to commit, then does nothing).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from sqlalchemy import func, select, update

from server.storage.engine import Tx, insert
from server.storage.schema import alerts, event_aliases, events


@dataclass(frozen=True)
class Alert:
    """One alert as stored. Times are ISO 8601 texts: `at` when it was raised (UTC),
    `event_at` when its cause happened (the gate's own time and offset), `acked_at` UTC."""

    id: int
    key: str
    at: str
    kind: str
    priority: str
    """"high" or "normal"."""
    gate: str | None
    pass_id: int | None
    household: str | None
    detail: str
    event_at: str | None
    acked_at: str | None
    acked_by: str | None
    ack_note: str | None

    def to_json(self) -> dict[str, Any]:
        return dict(self.__dict__)


_COLUMNS = [alerts.c[name] for name in Alert.__dataclass_fields__]


def add(
    tx: Tx,
    *,
    key: str,
    at: str,
    kind: str,
    priority: str,
    gate: str | None = None,
    pass_id: int | None = None,
    household: str | None = None,
    detail: str = "",
    event_at: str | None = None,
) -> Alert | None:
    """Store the alert unless one with `key` exists (stored before, or by another
    transaction that committed it meanwhile). Returns it when this call stored it."""
    row = tx.execute(
        insert(tx, alerts)
        .values(
            key=key,
            at=at,
            kind=kind,
            priority=priority,
            gate=gate,
            pass_id=pass_id,
            household=household,
            detail=detail,
            event_at=event_at,
        )
        .on_conflict_do_nothing()
        .returning(*_COLUMNS)
    ).first()
    return None if row is None else Alert(**row._mapping)


def get(tx: Tx, alert_id: int) -> Alert | None:
    row = tx.execute(select(*_COLUMNS).where(alerts.c.id == alert_id)).first()
    return None if row is None else Alert(**row._mapping)


def recent(tx: Tx, *, open_only: bool = False, limit: int = 200) -> list[Alert]:
    """The newest `limit` alerts (not yet acknowledged ones only with `open_only`), newest
    first."""
    query = select(*_COLUMNS).order_by(alerts.c.id.desc()).limit(limit)
    if open_only:
        query = query.where(alerts.c.acked_at.is_(None))
    return [Alert(**r._mapping) for r in tx.execute(query)]


def acknowledge(tx: Tx, alert_id: int, *, at: str, operator: str, note: str) -> bool:
    """Mark an open alert acknowledged by `operator` at `at` (UTC ISO text) with `note`.
    False if there is no such alert or it was acknowledged already (by anyone, also by a
    transaction that committed meanwhile)."""
    done = tx.execute(
        update(alerts)
        .where(alerts.c.id == alert_id, alerts.c.acked_at.is_(None))
        .values(acked_at=at, acked_by=operator, ack_note=note)
    )
    return done.rowcount == 1


def open_counts(tx: Tx) -> dict[str, int]:
    """kind → how many alerts of that kind are not yet acknowledged (kinds with none left out)."""
    rows = tx.execute(
        select(alerts.c.kind, func.count())
        .where(alerts.c.acked_at.is_(None))
        .group_by(alerts.c.kind)
    )
    return {str(kind): int(n) for kind, n in rows}


def missing_from_gate(
    tx: Tx, gate: str, epoch: str, confirmed_seq: int, new_epoch: str
) -> list[tuple[int, int]]:
    """After `gate` moved from `epoch` to `new_epoch` (it lost committed history): the seq
    ranges (first, last), ascending, of `epoch` above `confirmed_seq` held here whose events
    the gate did not send again under `new_epoch`, i.e. held by the collector and no longer
    by the gate."""
    resent = select(event_aliases.c.uuid).where(
        event_aliases.c.gate == gate, event_aliases.c.epoch == new_epoch
    )
    seqs = tx.scalars(
        select(events.c.seq)
        .where(
            events.c.gate == gate,
            events.c.epoch == epoch,
            events.c.seq > confirmed_seq,
            events.c.uuid.not_in(resent),
        )
        .order_by(events.c.seq)
    )
    ranges: list[tuple[int, int]] = []
    for seq in map(int, seqs):
        if ranges and ranges[-1][1] == seq - 1:
            ranges[-1] = (ranges[-1][0], seq)
        else:
            ranges.append((seq, seq))
    return ranges


@dataclass(frozen=True)
class Reading:
    """What a gate's pass decision recorded about its holder: the household and the
    temperature in °C (None when the event has none)."""

    household: str | None
    temperature_c: float | None


def last_decision(tx: Tx, pass_id: int, gate: str, at_us: int) -> Reading | None:
    """The latest pass decision for `pass_id` at `gate` at or before the instant `at_us`
    (µs since the epoch, UTC; ties by seq), or None. The temperature is read from the event's
    body (protocol.events.Event as exported)."""
    row = tx.execute(
        select(events.c.household, events.c.body)
        .where(
            events.c.pass_id == pass_id,
            events.c.gate == gate,
            events.c.kind == "decision",
            events.c.at_us <= at_us,
        )
        .order_by(events.c.at_us.desc(), events.c.seq.desc())
        .limit(1)
    ).first()
    if row is None:
        return None
    household, body = row
    try:
        temperature = json.loads(body).get("temperature_c")
    except (ValueError, AttributeError):
        temperature = None
    return Reading(
        None if household is None else str(household),
        float(temperature) if isinstance(temperature, int | float) else None,
    )
