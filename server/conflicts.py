"""What the other gates' view would have refused: conflicts found when events arrive.

Offline decisions are facts (DESIGN.md, principle 4): nothing decided is
rewritten. When a gate's events reach the collector, the household's day is
replayed across all gates in time order, and every accepted passage that a
site-wide view would have refused — a household over `household_max_out` or
its daily exits, a pass out twice, a pass used after its revocation reached
the server — is recorded once as a conflict for operators.

The replay's state after the last passage it took (members outside, exits per
counting day) is kept per household and window (server/storage/replay.py): a
passage later than that one costs one step, whatever the household's history
that day; an earlier one (an offline gate syncing late) replays the window from
the database. Either way the conflicts found are those of a replay of the whole
window, the same kinds about the same events, each recorded once.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from protocol.events import Event
from protocol.policy import Policy, parse_clock
from server.storage import replay
from server.storage.engine import Tx, lock_all
from server.storage.events import Conflict, add_conflicts_once
from server.storage.replay import QUOTA_EXEMPT_ROLES, Passage, SavedState
from server.storage.times import instant_us, utcnow

__all__ = ["QUOTA_EXEMPT_ROLES", "Conflict", "find_conflicts"]

STATE_VERSION = 1


def find_conflicts(tx: Tx, policy: Policy, events: Iterable[Event]) -> list[Conflict]:
    """Conflicts that `events` (stored in `tx`) take part in, under the published `policy`;
    each is recorded once, and only those recorded now are returned, in the order found:
    revocations and quarantines event by event, then each household window's replay."""
    allowed = [
        e
        for e in events
        if e.kind == "decision" and e.decision == "allow" and e.pass_id is not None
    ]
    if not allowed:
        return []
    revoked = replay.revocations(tx, {e.pass_id for e in allowed if e.pass_id is not None})
    exits = {e.household for e in allowed if e.household and e.direction == "out"}
    quarantined = replay.quarantines(tx, exits)  # only exits break a quarantine
    found: list[Conflict] = []
    windows: set[tuple[str, datetime, datetime]] = set()
    for e in allowed:
        at = datetime.fromisoformat(e.at)
        revoked_at = revoked.get(e.pass_id) if e.pass_id is not None else None
        if revoked_at is not None and revoked_at < at:
            found.append(
                Conflict(
                    "revoked_pass_used",
                    e.gate,
                    e.seq,
                    e.uuid,
                    f"pass {e.pass_id} revoked at {revoked_at.isoformat()}",
                )
            )
        quarantine = quarantined.get(e.household) if e.household else None
        if (
            e.direction == "out"
            and quarantine is not None
            and quarantine[0] < at
            and (quarantine[1] is None or at < quarantine[1])
        ):
            found.append(
                Conflict(
                    "quarantined_exit",
                    e.gate,
                    e.seq,
                    e.uuid,
                    f"household {e.household} in home quarantine since {quarantine[0].isoformat()}",
                )
            )
        if e.household is not None and e.role not in QUOTA_EXEMPT_ROLES:
            windows.add((e.household, *_replay_period(policy, at)))
    found += _replay_windows(tx, policy, sorted(windows))
    recorded = add_conflicts_once(tx, found, now=utcnow())
    return [c for c, new in zip(found, recorded, strict=True) if new]


def _replay_period(policy: Policy, at: datetime) -> tuple[datetime, datetime]:
    """The passages a passage at `at` can conflict with: those between the same two
    auto-returns (members out) and those of the same counting day (daily exits). The two
    differ (03:00 and 04:00 by default): an exit at 03:30 is out after the auto-return but
    counts for the day before."""
    auto_return = policy.last_auto_return(at)
    clock = parse_clock(policy.day_starts_at, "day_starts_at")
    day_start = datetime.combine(policy.day_of(at), clock, policy.tz)
    return min(auto_return, day_start), max(auto_return, day_start) + timedelta(days=1)


def _replay_windows(
    tx: Tx, policy: Policy, windows: Sequence[tuple[str, datetime, datetime]]
) -> list[Conflict]:
    """Each household window [start, end), in the order given: its saved state stepped over
    the passages after its last one, or (no usable state) a replay of the whole window."""
    if not windows:
        return []
    rules = _rules(policy)
    keyed = [(h, instant_us(start), instant_us(end)) for h, start, end in windows]
    lock_all(tx, sorted({f"household:{h}" for h, _, _ in keyed}))
    saved = replay.states(tx, {h for h, _, _ in keyed}, {s for _, s, _ in keyed})
    plans: list[tuple[str, int, int, SavedState | None]] = []
    for h, start_us, end_us in keyed:
        state = saved.get((h, start_us))
        plans.append((h, start_us, end_us, state if _usable(state, rules, end_us) else None))
    spans = [(h, s.last if s else (start, "", 0), end) for h, start, end, s in plans]
    by_household = replay.passages(tx, spans)
    found: list[Conflict] = []
    kept: list[SavedState] = []
    for household, start_us, end_us, state in plans:
        run = _Run.load(state.state) if state else _Run()
        lo = state.last[0] if state else start_us
        taken = [
            p
            for p in by_household.get(household, [])
            if lo <= p.at_us < end_us and (state is None or p.key > state.last)
        ]
        for p in taken:
            found += run.step(policy, household, p)
        if taken:
            kept.append(SavedState(household, start_us, taken[-1].key, run.dump(rules, end_us)))
    replay.save_states(tx, kept)
    return found


def _usable(state: SavedState | None, rules: list[Any], end_us: int) -> bool:
    """Whether a saved state may be stepped on: saved by this version of the replay, under
    the same rules, for the same window."""
    if state is None:
        return False
    data = state.state
    return (
        data.get("v") == STATE_VERSION
        and data.get("rules") == rules
        and data.get("end_us") == end_us
    )


def _rules(policy: Policy) -> list[Any]:
    """What of the policy a replay's result depends on: a state saved under other rules is
    not stepped on (the window is replayed whole under the new ones)."""
    return [
        policy.household_max_out,
        policy.household_max_exits_per_day,
        policy.anti_passback,
        policy.auto_return_at,
        policy.day_starts_at,
        policy.timezone,
    ]


@dataclass
class _Run:
    """A household window's replay after some of its passages, in time order."""

    outside: dict[int, tuple[str, str, int]] = field(default_factory=dict)
    """pass id → (gate, at, at_us) of the exit of each member out, since the auto-return."""
    exits: dict[str, tuple[int, set[str]]] = field(default_factory=dict)
    """counting day (ISO date) → (exits, their gates)."""

    def step(self, policy: Policy, household: str, p: Passage) -> list[Conflict]:
        """Take the next passage; the conflicts it makes."""
        at = datetime.fromisoformat(p.at)
        boundary = instant_us(policy.last_auto_return(at))  # everyone counts as inside again
        self.outside = {k: o for k, o in self.outside.items() if o[2] >= boundary}
        if p.direction == "in":
            self.outside.pop(p.pass_id, None)
            return []
        found: list[Conflict] = []
        earlier = self.outside.get(p.pass_id)
        if earlier is not None and earlier[0] != p.gate and policy.anti_passback != "off":
            found.append(
                Conflict(
                    "pass_out_twice",
                    p.gate,
                    p.seq,
                    p.uuid,
                    f"pass {p.pass_id} already out through {earlier[0]} at "
                    f"{datetime.fromisoformat(earlier[1]).isoformat()}",
                )
            )
        self.outside[p.pass_id] = (p.gate, p.at, p.at_us)
        limit = policy.household_max_out
        if limit and len(self.outside) > limit:
            gates = {o[0] for o in self.outside.values()}
            if len(gates) > 1:
                found.append(
                    Conflict(
                        "household_over_quota",
                        p.gate,
                        p.seq,
                        p.uuid,
                        f"household {household}: {len(self.outside)} members out "
                        f"(max {limit}) via {sorted(gates)}",
                    )
                )
        day = policy.day_of(at).isoformat()
        n, day_gates = self.exits.get(day, (0, set()))
        n, day_gates = n + 1, day_gates | {p.gate}
        self.exits[day] = (n, day_gates)
        cap = policy.household_max_exits_per_day
        if cap and n > cap and len(day_gates) > 1:
            found.append(
                Conflict(
                    "daily_exits_over_quota",
                    p.gate,
                    p.seq,
                    p.uuid,
                    f"household {household}: exit {n} of the day (max {cap})",
                )
            )
        return found

    def dump(self, rules: list[Any], end_us: int) -> dict[str, Any]:
        return {
            "v": STATE_VERSION,
            "rules": rules,
            "end_us": end_us,
            "outside": {str(k): list(o) for k, o in self.outside.items()},
            "exits": {d: [n, sorted(g)] for d, (n, g) in self.exits.items()},
        }

    @classmethod
    def load(cls, data: dict[str, Any]) -> _Run:
        return cls(
            {int(k): (str(g), str(a), int(u)) for k, (g, a, u) in data["outside"].items()},
            {str(d): (int(n), set(g)) for d, (n, g) in data["exits"].items()},
        )
