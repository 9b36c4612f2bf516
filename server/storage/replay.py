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


def passages(
    tx: Tx, spans: Sequence[tuple[str, tuple[int, str, int], int]]
) -> dict[str, list[Passage]]:
    """household → its counted passages in any of its spans of `spans` (household, after,
    to_us): those whose key is above `after` (at_us, gate, seq) and whose at_us is below
    to_us (`(from_us, "", 0)` takes every passage from the instant from_us), in replay
    order (`Passage.key`, as Python orders it): one statement, served by the index on
    (household, at_us) for each span (what counts is sorted out here: a condition on kind
    would lead SQLite to the index on (kind, at_us), every household's decisions).
    Gate names are compared and passages of one instant put in order by code point, not
    by the database's collation (PostgreSQL's en_US.UTF-8 ignores '-': "north1" before
    "north-2"), since the replay compares a saved state's last key in Python."""
    if not spans:
        return {}
    params: dict[str, Any] = {}
    for i, (h, (lo, gate, seq), hi) in enumerate(spans):
        params.update({f"h{i}": h, f"lo{i}": lo, f"g{i}": gate, f"s{i}": seq, f"hi{i}": hi})
    found: dict[str, list[Passage]] = {}
    for row in tx.execute(_passages_query(len(spans), tx.dialect.name), params):
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
    for walk in found.values():
        walk.sort(key=lambda p: p.key)  # in order but for ties of one instant: linear
    return found


@lru_cache(maxsize=64)
def _passages_query(n: int, dialect: str) -> Select[Any]:
    """The query of `passages` for `n` spans on `dialect` (built once: SQLAlchemy then
    reuses its compiled form)."""
    gate = _code_point_order(events.c.gate, dialect)
    within = or_(
        *(
            and_(
                events.c.household == bindparam(f"h{i}"),
                events.c.at_us >= bindparam(f"lo{i}"),
                events.c.at_us < bindparam(f"hi{i}"),
                or_(
                    events.c.at_us > bindparam(f"lo{i}"),
                    gate > bindparam(f"g{i}"),
                    and_(events.c.gate == bindparam(f"g{i}"), events.c.seq > bindparam(f"s{i}")),
                ),
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
    key of) the last passage of: their windows are replayed whole next time. Per household,
    a state goes when its window starts before its newest new passage and its last key is
    at or after the key of its first (more than needed when they straddle it, never fewer).
    A passage of the same instant as a state's last one but later in key order (the next
    seq of a gate whose clock stands still, a second in which a household passes several
    times) is stepped on like any later one, not replayed with the whole window."""
    spans: dict[str, tuple[tuple[int, str, int], int]] = {}
    for e in stored:
        if e.household is not None and counted(e):
            key = (instant_us(e.at), e.gate, e.seq)
            first, hi = spans.get(e.household, (key, key[0]))
            spans[e.household] = (min(first, key), max(hi, key[0]))
    if spans:
        tx.execute(
            prepared(tx, _forget_query),
            [{"h": h, "hi": hi, "t": t, "g": g, "s": s} for h, ((t, g, s), hi) in spans.items()],
        )


def _forget_query(dialect: str) -> Any:
    d = household_days.c
    last_gate = _code_point_order(d.last_gate, dialect)
    return delete(household_days).where(
        d.household == bindparam("h"),
        d.period_start_us <= bindparam("hi"),
        or_(
            d.last_at_us > bindparam("t"),
            and_(
                d.last_at_us == bindparam("t"),
                or_(
                    last_gate > bindparam("g"),
                    and_(d.last_gate == bindparam("g"), d.last_seq >= bindparam("s")),
                ),
            ),
        ),
    )


def _code_point_order(column: Any, dialect: str) -> Any:
    """`column` (text) compared as Python compares strings, by code point: PostgreSQL's "C"
    collation (the database's own may be en_US.UTF-8, which ignores '-'); SQLite's default
    BINARY one already is."""
    return column.collate("C") if dialect == "postgresql" else column


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
