"""What the other gates' view would have refused: conflicts found when events arrive.

Offline decisions are facts (DESIGN.md, principle 4): nothing decided is
rewritten. When a gate's events reach the collector, the household's day is
replayed across all gates in time order, and every accepted passage that a
site-wide view would have refused — a household over `household_max_out` or
its daily exits, a pass out twice, a pass used after its revocation reached
the server — is recorded once as a conflict for operators.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta

from protocol.events import Event
from protocol.policy import Policy, parse_clock
from server.store import ServerStore

QUOTA_EXEMPT_ROLES = frozenset({"staff", "visitor"})


@dataclass(frozen=True)
class Conflict:
    kind: str  # household_over_quota, daily_exits_over_quota, pass_out_twice, revoked_pass_used,
    # quarantined_exit
    gate: str
    seq: int
    uuid: str
    detail: str


@dataclass(frozen=True)
class _Passage:
    gate: str
    seq: int
    uuid: str
    at: datetime
    pass_id: int
    direction: str


def find_conflicts(store: ServerStore, policy: Policy, events: Iterable[Event]) -> list[Conflict]:
    """Conflicts that `events` (just stored) take part in; each is recorded once."""
    found: list[Conflict] = []
    days: set[tuple[str, datetime, datetime]] = set()
    for e in events:
        if e.kind != "decision" or e.decision != "allow" or e.pass_id is None:
            continue
        at = datetime.fromisoformat(e.at)
        revoked = store.revoked_at(e.pass_id)
        if revoked is not None and revoked < at:
            found.append(
                Conflict(
                    "revoked_pass_used",
                    e.gate,
                    e.seq,
                    e.uuid,
                    f"pass {e.pass_id} revoked at {revoked.isoformat()}",
                )
            )
        quarantine = store.quarantine_period(e.household) if e.household else None
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
            days.add((e.household, *_replay_period(policy, at)))
    for household, start, end in sorted(days):
        found += _replay_household(store, policy, household, start, end)
    return [c for c in found if store.add_conflict_once(c.gate, c.seq, c.kind, c.detail, c.uuid)]


def _replay_period(policy: Policy, at: datetime) -> tuple[datetime, datetime]:
    """The passages a passage at `at` can conflict with: those between the same two
    auto-returns (members out) and those of the same counting day (daily exits). The two
    differ (03:00 and 04:00 by default): an exit at 03:30 is out after the auto-return but
    counts for the day before."""
    auto_return = policy.last_auto_return(at)
    clock = parse_clock(policy.day_starts_at, "day_starts_at")
    day_start = datetime.combine(policy.day_of(at), clock, policy.tz)
    return min(auto_return, day_start), max(auto_return, day_start) + timedelta(days=1)


def _replay_household(
    store: ServerStore, policy: Policy, household: str, start: datetime, end: datetime
) -> list[Conflict]:
    """Replay one household over [start, end), in time order, across gates: members out
    between auto-returns, exits per counting day."""
    rows = store.household_passages(household, start, end)
    passages = [_Passage(g, s, u, datetime.fromisoformat(a), p, d) for g, s, u, a, p, d in rows]
    outside: dict[int, _Passage] = {}
    exits: dict[object, list[_Passage]] = {}
    found: list[Conflict] = []
    for p in passages:
        boundary = policy.last_auto_return(p.at)  # everyone counts as inside again
        outside = {k: o for k, o in outside.items() if o.at >= boundary}
        if p.direction == "in":
            outside.pop(p.pass_id, None)
            continue
        earlier = outside.get(p.pass_id)
        if earlier is not None and earlier.gate != p.gate and policy.anti_passback != "off":
            found.append(
                Conflict(
                    "pass_out_twice",
                    p.gate,
                    p.seq,
                    p.uuid,
                    f"pass {p.pass_id} already out through {earlier.gate} at "
                    f"{earlier.at.isoformat()}",
                )
            )
        outside[p.pass_id] = p
        limit = policy.household_max_out
        if limit and len(outside) > limit and len({o.gate for o in outside.values()}) > 1:
            found.append(
                Conflict(
                    "household_over_quota",
                    p.gate,
                    p.seq,
                    p.uuid,
                    f"household {household}: {len(outside)} members out "
                    f"(max {limit}) via {sorted({o.gate for o in outside.values()})}",
                )
            )
        day = exits.setdefault(policy.day_of(p.at), [])
        day.append(p)
        cap = policy.household_max_exits_per_day
        if cap and len(day) > cap and len({x.gate for x in day}) > 1:
            found.append(
                Conflict(
                    "daily_exits_over_quota",
                    p.gate,
                    p.seq,
                    p.uuid,
                    f"household {household}: exit {len(day)} of the day (max {cap})",
                )
            )
    return found
