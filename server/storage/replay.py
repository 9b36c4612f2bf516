"""What the conflict replay (server/conflicts.py) reads, and the state it keeps between
batches (`household_days`).

The replay walks a household's counted passages (accepted pass decisions of members who
are not staff or visitors) of one window in time order, across gates. Its state after the
last passage it took is kept per (household, window start) with that passage's key
(at_us, gate, seq), so a later passage costs one step instead of a replay of the window.

Invariant: a `household_days` row is the replay of every stored counted passage of its
household in its window up to and including its last key. `insert_events` keeps it: a
passage stored before a row's last key deletes that row (`forget_overtaken`), and the next
replay of that window reads it whole again. The caller holds the household's lock
(`household:{h}`, server/storage/engine.py `lock_all`) for both.
"""

from __future__ import annotations

import json
from collections.abc import Collection, Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from functools import lru_cache
from typing import Any

from sqlalchemy import Select, and_, bindparam, delete, or_, select

from protocol.events import Event
from server.storage.engine import Tx, dialect_insert, prepared
from server.storage.schema import events, household_days, households, passes
from server.storage.times import instant_us

QUOTA_EXEMPT_ROLES = frozenset({"staff", "visitor"})
"""Roles whose passages no household limit counts."""


def counted(e: Event) -> bool:
    """Whether `e` is a passage the household replay counts."""
    return (
        e.kind == "decision"
        and e.decision == "allow"
        and e.pass_id is not None
        and e.household is not None
        and e.role not in QUOTA_EXEMPT_ROLES
    )


def households_of(batch: Iterable[Event]) -> set[str]:
    """The households whose counted passages are in `batch`."""
    return {e.household for e in batch if e.household is not None and counted(e)}


@dataclass(frozen=True)
class Passage:
    """A counted passage as the replay takes it."""

    at_us: int  # the instant, µs since the epoch, UTC
    gate: str
    seq: int
    uuid: str
    at: str  # as the gate wrote it (ISO 8601 with its offset)
    pass_id: int
    direction: str | None

    @property
    def key(self) -> tuple[int, str, int]:
        """The replay's order: instant, then gate and seq."""
        return (self.at_us, self.gate, self.seq)


def passages(tx: Tx, spans: Sequence[tuple[str, int, int]]) -> dict[str, list[Passage]]:
    """household → its counted passages with at_us in any of its spans [from_us, to_us)
    of `spans` (household, from_us, to_us), in replay order: one statement, served by the
    index on (household, at_us) for each span (what counts is sorted out here: a condition
    on kind would lead SQLite to the index on (kind, at_us), every household's decisions)."""
    if not spans:
        return {}
    params: dict[str, Any] = {}
    for i, (h, lo, hi) in enumerate(spans):
        params.update({f"h{i}": h, f"lo{i}": lo, f"hi{i}": hi})
    found: dict[str, list[Passage]] = {}
    for row in tx.execute(_passages_query(len(spans)), params):
        h, at_us, gate, seq, uuid, at, pass_id, direction, kind, decision, role = row
        if (
            kind == "decision"
            and decision == "allow"
            and pass_id is not None
            and (role or "resident") not in QUOTA_EXEMPT_ROLES
        ):
            found.setdefault(str(h), []).append(
                Passage(
                    int(at_us), str(gate), int(seq), str(uuid), str(at), int(pass_id), direction
                )
            )
    return found


@lru_cache(maxsize=64)
def _passages_query(n: int) -> Select[Any]:
    """The query of `passages` for `n` spans (built once: SQLAlchemy then reuses its
    compiled form)."""
    within = or_(
        *(
            and_(
                events.c.household == bindparam(f"h{i}"),
                events.c.at_us >= bindparam(f"lo{i}"),
                events.c.at_us < bindparam(f"hi{i}"),
            )
            for i in range(n)
        )
    )
    return (
        select(
            events.c.household,
            events.c.at_us,
            events.c.gate,
            events.c.seq,
            events.c.uuid,
            events.c.at,
            events.c.pass_id,
            events.c.direction,
            events.c.kind,
            events.c.decision,
            events.c.role,
        )
        .where(within)
        .order_by(events.c.at_us, events.c.gate, events.c.seq)
    )


@dataclass(frozen=True)
class SavedState:
    """The replay's state of one household's window after its `last` passage (key)."""

    household: str
    period_start_us: int
    last: tuple[int, str, int]
    state: dict[str, Any]  # server/conflicts.py's, as JSON


def states(
    tx: Tx, households_: Collection[str], starts: Collection[int]
) -> dict[tuple[str, int], SavedState]:
    """(household, period_start_us) → saved state, for the windows of `households_` that
    start at one of `starts`: one statement."""
    if not households_ or not starts:
        return {}
    rows = tx.execute(
        prepared(tx, _states_query), {"households": list(households_), "starts": list(starts)}
    )
    return {
        (r.household, int(r.period_start_us)): SavedState(
            r.household,
            int(r.period_start_us),
            (int(r.last_at_us), r.last_gate, int(r.last_seq)),
            json.loads(r.state),
        )
        for r in rows
    }


def _states_query(_dialect: str) -> Any:
    return select(household_days).where(
        household_days.c.household.in_(bindparam("households", expanding=True)),
        household_days.c.period_start_us.in_(bindparam("starts", expanding=True)),
    )


def save_states(tx: Tx, saved: Sequence[SavedState]) -> None:
    """Keep each state (replacing the window's previous one)."""
    if not saved:
        return
    tx.execute(
        prepared(tx, _save_query),
        [
            {
                "household": s.household,
                "period_start_us": s.period_start_us,
                "last_at_us": s.last[0],
                "last_gate": s.last[1],
                "last_seq": s.last[2],
                "state": json.dumps(s.state, separators=(",", ":")),
            }
            for s in saved
        ],
    )


def _save_query(dialect: str) -> Any:
    statement = dialect_insert(dialect, household_days)
    return statement.on_conflict_do_update(
        index_elements=[household_days.c.household, household_days.c.period_start_us],
        set_={
            "last_at_us": statement.excluded.last_at_us,
            "last_gate": statement.excluded.last_gate,
            "last_seq": statement.excluded.last_seq,
            "state": statement.excluded.state,
        },
    )


def forget_overtaken(tx: Tx, stored: Iterable[Event]) -> None:
    """Delete the saved states that counted passages just `stored` come before (or at the
    instant of) the last passage of: their windows are replayed whole next time. Per
    household, a state whose [start, last] meets the span of its new passages goes (more
    than needed when they straddle it, never fewer)."""
    spans: dict[str, tuple[int, int]] = {}
    for e in stored:
        if e.household is not None and counted(e):
            t = instant_us(e.at)
            lo, hi = spans.get(e.household, (t, t))
            spans[e.household] = (min(lo, t), max(hi, t))
    if spans:
        tx.execute(
            prepared(tx, _forget_query),
            [{"h": h, "lo": lo, "hi": hi} for h, (lo, hi) in spans.items()],
        )


def _forget_query(_dialect: str) -> Any:
    return delete(household_days).where(
        household_days.c.household == bindparam("h"),
        household_days.c.period_start_us <= bindparam("hi"),
        household_days.c.last_at_us >= bindparam("lo"),
    )


def revocations(tx: Tx, pass_ids: Collection[int]) -> dict[int, datetime]:
    """pass id → when it was revoked, for those of `pass_ids` that are."""
    if not pass_ids:
        return {}
    rows = tx.execute(prepared(tx, _revocations_query), {"ids": list(pass_ids)})
    return {int(p): datetime.fromisoformat(at) for p, at in rows}


def _revocations_query(_dialect: str) -> Any:
    return select(passes.c.pass_id, passes.c.revoked_at).where(
        passes.c.pass_id.in_(bindparam("ids", expanding=True)), passes.c.revoked_at.is_not(None)
    )


def quarantines(
    tx: Tx, households_: Collection[str]
) -> dict[str, tuple[datetime, datetime | None]]:
    """household → (since, until) of its current home quarantine, for those of
    `households_` in one. `since` is the row's last change: an update can only make it
    later, so a conflict is never claimed that was not one."""
    if not households_:
        return {}
    rows = tx.execute(
        select(
            households.c.household, households.c.updated_at, households.c.quarantine_until
        ).where(households.c.household.in_(households_), households.c.quarantined == 1)
    )
    return {
        str(h): (
            datetime.fromisoformat(since),
            None if until is None else datetime.fromisoformat(until),
        )
        for h, since, until in rows
    }


def _quarantines_query(_dialect: str) -> Any:
    return select(
        households.c.household, households.c.updated_at, households.c.quarantine_until
    ).where(
        households.c.household.in_(bindparam("households", expanding=True)),
        households.c.quarantined == 1,
    )
