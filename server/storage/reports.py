"""The queries behind the daily report (server/reports.py) and the store's Prometheus figures
(server/metrics.py): read-only, set-based, over indexed columns (events by `at_us`)."""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import func, select

from server.storage import alerts as alerts_db
from server.storage.engine import Tx
from server.storage.events import rejected_count
from server.storage.schema import conflicts, events, households, passes


@dataclass(frozen=True)
class PlacedEvent:
    """An event with the household it concerns (its own, else its pass's) and that
    household's place in the register ("" where the register names none; all None when the
    event has no household or the household is not in the register)."""

    kind: str
    decision: str | None
    reason: str
    direction: str | None
    pass_id: int | None
    household: str | None
    district: str | None
    street: str | None
    community: str | None
    grid: str | None


def placed_events(tx: Tx, start_us: int, end_us: int) -> list[PlacedEvent]:
    """Every event at an instant in [start_us, end_us) (µs since the epoch, UTC), in the
    order they happened (ties by gate, then seq)."""
    household = func.coalesce(events.c.household, passes.c.household).label("household")
    rows = tx.execute(
        select(
            events.c.kind,
            events.c.decision,
            events.c.reason,
            events.c.direction,
            events.c.pass_id,
            household,
            households.c.district,
            households.c.street,
            households.c.community,
            households.c.grid,
        )
        .select_from(events)
        .outerjoin(passes, passes.c.pass_id == events.c.pass_id)
        .outerjoin(households, households.c.household == household)
        .where(events.c.at_us >= start_us, events.c.at_us < end_us)
        .order_by(events.c.at_us, events.c.gate, events.c.seq)
    )
    return [PlacedEvent(**row._mapping) for row in rows]


@dataclass(frozen=True)
class StoreFigures:
    """What the store holds, counted: events per gate, refused messages and events (the days
    still counted, sampled or not), conflicts by kind,
    open (unacknowledged) alerts by kind. Keys with a count of 0 are absent."""

    events_by_gate: dict[str, int]
    rejected_messages: int
    conflicts_by_kind: dict[str, int]
    open_alerts_by_kind: dict[str, int]


def store_figures(tx: Tx) -> StoreFigures:
    """The counts of StoreFigures, read in `tx` (one state of the store)."""
    by_gate = tx.execute(select(events.c.gate, func.count()).group_by(events.c.gate))
    by_kind = tx.execute(select(conflicts.c.kind, func.count()).group_by(conflicts.c.kind))
    return StoreFigures(
        {str(g): int(n) for g, n in by_gate},
        rejected_count(tx),
        {str(k): int(n) for k, n in by_kind},
        alerts_db.open_counts(tx),
    )
