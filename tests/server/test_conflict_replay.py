"""The conflict replay keeps its state per household window (server/conflicts.py): for any
passages, arriving in any order and batches, under policies that change between batches,
it records exactly what a full replay of each window finds, as the collector did before
the state was kept (the reference below is that replay, as it was written then)."""

from __future__ import annotations

import itertools
import os
from dataclasses import dataclass
from datetime import datetime, timedelta
from zoneinfo import ZoneInfo

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import select

from menwei.postgres import PostgresServer
from protocol.events import Event
from protocol.policy import Policy, parse_clock
from server.storage import Store
from server.storage.schema import household_days
from server.storage.times import instant_us
from tests import collected

SH = ZoneInfo("Asia/Shanghai")
T0 = datetime(2026, 3, 3, 0, 0, tzinfo=SH)
POLICIES = [
    Policy(outing_windows=("00:00-24:00",)),
    Policy(outing_windows=("00:00-24:00",), household_max_out=2, household_max_exits_per_day=3),
    Policy(outing_windows=("00:00-24:00",), anti_passback="off", household_max_exits_per_day=1),
    Policy(outing_windows=("00:00-24:00",), auto_return_at="04:00", day_starts_at="03:30"),
]
_examples = itertools.count()


# --- the reference: the whole window replayed for every batch -----------------------------


@dataclass(frozen=True)
class _Seen:
    gate: str
    seq: int
    uuid: str
    at: datetime
    pass_id: int
    direction: str | None


def reference_period(policy: Policy, at: datetime) -> tuple[datetime, datetime]:
    auto_return = policy.last_auto_return(at)
    day_start = datetime.combine(
        policy.day_of(at), parse_clock(policy.day_starts_at, "day_starts_at"), policy.tz
    )
    return min(auto_return, day_start), max(auto_return, day_start) + timedelta(days=1)


def reference_replay(
    policy: Policy, household: str, stored: list[Event], start: datetime, end: datetime
) -> list[tuple[str, str, int, str, str]]:
    passages = sorted(
        (
            _Seen(e.gate, e.seq, e.uuid, datetime.fromisoformat(e.at), e.pass_id, e.direction)
            for e in stored
            if e.household == household
            and e.kind == "decision"
            and e.decision == "allow"
            and e.pass_id is not None
            and (e.role or "resident") not in ("staff", "visitor")
            and start <= datetime.fromisoformat(e.at) < end
        ),
        key=lambda p: (instant_us(p.at), p.gate, p.seq),
    )
    outside: dict[int, _Seen] = {}
    exits: dict[object, list[_Seen]] = {}
    found: list[tuple[str, str, int, str, str]] = []
    for p in passages:
        boundary = policy.last_auto_return(p.at)
        outside = {k: o for k, o in outside.items() if o.at >= boundary}
        if p.direction == "in":
            outside.pop(p.pass_id, None)
            continue
        earlier = outside.get(p.pass_id)
        if earlier is not None and earlier.gate != p.gate and policy.anti_passback != "off":
            found.append(
                (
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
                (
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
                (
                    "daily_exits_over_quota",
                    p.gate,
                    p.seq,
                    p.uuid,
                    f"household {household}: exit {len(day)} of the day (max {cap})",
                )
            )
    return found


# --- random traffic ---------------------------------------------------------------------

passage = st.tuples(
    st.integers(0, 1),  # household
    st.integers(0, 3),  # pass
    st.integers(0, 2),  # gate
    st.sampled_from(["out", "out", "in", None]),
    st.integers(0, 48 * 6),  # ten-minute steps over two days: ties between gates happen
    st.sampled_from(["resident"] * 6 + ["staff", None]),
    st.sampled_from(["allow"] * 5 + ["deny"]),
)


@settings(
    max_examples=40,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(
    traffic=st.lists(passage, min_size=1, max_size=40),
    cuts=st.lists(st.integers(1, 39), max_size=12),
    order=st.randoms(use_true_random=False),
    late=st.integers(0, 4),
    policies=st.lists(st.integers(0, len(POLICIES) - 1), min_size=1, max_size=12),
)
def test_incremental_replay_records_what_a_full_replay_finds(
    store: Store, traffic, cuts, order, late, policies
) -> None:
    n = next(_examples)
    gates = [f"x{n}-g{i}" for i in range(3)]
    seqs = dict.fromkeys(gates, 0)
    made: list[Event] = []
    for h, p, g, direction, step, role, decision in traffic:
        gate = gates[g]
        seqs[gate] += 1
        made.append(
            Event(
                site="test-site",
                gate=gate,
                seq=seqs[gate],
                uuid=f"x{n}-{gate}-{seqs[gate]}",
                at=(T0 + timedelta(minutes=10 * step)).isoformat(),
                clock_trusted=True,
                kind="decision",
                decision=decision,
                reason="ok",
                direction=direction,
                temperature_c=None,
                pass_id=p,
                household=f"x{n}-h{h}",
                role=role,
            )
        )
    # Arrival mostly in time order (the one-step path), some events late (offline gates),
    # cut in batches of one gate each.
    arrival = sorted(made, key=lambda e: (e.at, e.gate, e.seq))
    for _ in range(late):
        arrival.append(arrival.pop(order.randrange(len(arrival))))
    batches: list[list[Event]] = []
    for i, e in enumerate(arrival):
        if batches and batches[-1][-1].gate == e.gate and i not in cuts:
            batches[-1].append(e)
        else:
            batches.append([e])
    stored: list[Event] = []
    recorded: set[tuple[str, str]] = set()
    for i, batch in enumerate(batches):
        policy = POLICIES[policies[i % len(policies)]]
        result = collected.insert_events(store, batch[0].gate, batch)
        stored += result.new_events
        found = collected.check_conflicts(store, policy, result.new_events)
        expected = []
        windows = {
            (e.household, *reference_period(policy, datetime.fromisoformat(e.at)))
            for e in result.new_events
            if e.household is not None
            and e.kind == "decision"
            and e.decision == "allow"
            and e.pass_id is not None
            and e.role not in ("staff", "visitor")
        }
        for household, start, end in sorted(windows):
            for c in reference_replay(policy, household, stored, start, end):
                if (c[0], c[3]) not in recorded:
                    recorded.add((c[0], c[3]))
                    expected.append(c)
        assert [(c.kind, c.gate, c.seq, c.uuid, c.detail) for c in found] == expected


# --- the paths of the incremental replay, one by one ---------------------------------------

ONE_OUT = Policy(outing_windows=("00:00-24:00",))
TWO_OUT = Policy(outing_windows=("00:00-24:00",), household_max_out=2)


def passage_event(gate: str, seq: int, pass_id: int, direction: str, minutes: int) -> Event:
    return Event(
        site="test-site",
        gate=gate,
        seq=seq,
        uuid=f"{gate}-{seq}",
        at=(T0 + timedelta(hours=9, minutes=minutes)).isoformat(),
        clock_trusted=True,
        kind="decision",
        decision="allow",
        reason="ok",
        direction=direction,
        temperature_c=None,
        pass_id=pass_id,
        household="3-1-301",
        role="resident",
    )


def send(store: Store, policy: Policy, *events: Event) -> list[tuple[str, str]]:
    result = collected.insert_events(store, events[0].gate, list(events))
    return [(c.kind, c.uuid) for c in collected.check_conflicts(store, policy, result.new_events)]


def test_new_rules_replay_the_window_whole(store: Store) -> None:
    """Two members out through two gates break one-out but not two-out: published after
    them, one-out finds the conflict at the next passage of that day."""
    assert send(store, TWO_OUT, passage_event("east", 1, 1, "out", 0)) == []
    assert send(store, TWO_OUT, passage_event("west", 1, 2, "out", 5)) == []
    assert send(store, ONE_OUT, passage_event("west", 2, 2, "in", 30)) == [
        ("household_over_quota", "west-1")
    ]


def test_an_earlier_passage_replays_the_window_whole(store: Store) -> None:
    """An offline gate's exit, earlier than the last passage taken, makes a later exit
    through another gate the second member out and the third exit of the day."""
    assert send(store, ONE_OUT, passage_event("east", 1, 1, "out", 0)) == []
    assert send(store, ONE_OUT, passage_event("east", 2, 1, "in", 20)) == []
    assert send(store, ONE_OUT, passage_event("west", 1, 2, "out", 30)) == []
    late = passage_event("north", 1, 3, "out", 25)
    assert send(store, ONE_OUT, late) == [
        ("household_over_quota", "west-1"),
        ("daily_exits_over_quota", "west-1"),
    ]


def test_passages_stored_without_a_check_are_taken_at_the_next_one(store: Store) -> None:
    assert send(store, ONE_OUT, passage_event("east", 1, 1, "out", 0)) == []
    collected.insert_events(store, "west", [passage_event("west", 1, 2, "out", 5)])
    assert send(store, ONE_OUT, passage_event("east", 2, 3, "in", 10)) == [
        ("household_over_quota", "west-1")
    ]


def saved_lasts(store: Store) -> list[tuple[int, str, int]]:
    """The last key of each saved household window."""
    d = household_days.c
    with store.read() as tx:
        return sorted(
            (int(t), str(g), int(s))
            for t, g, s in tx.execute(select(d.last_at_us, d.last_gate, d.last_seq))
        )


def test_a_passage_of_the_same_instant_later_in_key_order_is_a_step(store: Store) -> None:
    """A gate whose clock stands still numbers passages of one instant: each is one step on
    the saved state (not a replay of the window, whose cost grows with its passages); one of
    that instant earlier in key order (another gate's, a lower seq) still replays it."""
    send(store, ONE_OUT, passage_event("east", 1, 1, "out", 0))
    t = saved_lasts(store)[0][0]
    assert saved_lasts(store) == [(t, "east", 1)]
    collected.insert_events(store, "east", [passage_event("east", 2, 1, "in", 0)])
    assert saved_lasts(store) == [(t, "east", 1)], "kept: the next step takes east 2"
    assert send(store, ONE_OUT, passage_event("east", 3, 2, "out", 0)) == []
    assert saved_lasts(store) == [(t, "east", 3)]
    collected.insert_events(store, "center", [passage_event("center", 1, 3, "out", 0)])
    assert saved_lasts(store) == [], "center 1 comes before east 3: the window is replayed"


def test_passages_of_one_instant_keep_their_order_whatever_the_collation(
    postgres: PostgresServer,
) -> None:
    """On a PostgreSQL database whose collation ignores '-' (as glibc's en_US.UTF-8 does;
    ICU's 'shifted' here), "north1" sorts before "north-2", Python the other way round: the
    replay still takes each passage of one instant once. (Read in the database's order, the
    saved state's last key (north-2) made north1's exit count twice: a third exit of the day
    where there were two.)"""
    name = f"collation_{next(_examples)}_{os.getpid()}"
    postgres.psql(
        f"CREATE DATABASE {name} LOCALE_PROVIDER icu ICU_LOCALE 'en-US-u-ka-shifted'"
        " LOCALE 'C.UTF-8' TEMPLATE template0"
    )
    assert postgres.psql("SELECT 'north1' < 'north-2'", database=name).strip() == "t"
    cap = Policy(outing_windows=("00:00-24:00",), household_max_exits_per_day=2)
    found = []
    with Store(postgres.database_url(name)) as store:
        for gate, seq, pass_id, minutes in (("north-2", 1, 1, 0), ("north1", 1, 2, 0)):
            found += send(store, cap, passage_event(gate, seq, pass_id, "out", minutes))
        found += send(store, cap, passage_event("north1", 2, 3, "out", 1))
    assert [f for f in found if f[0] == "daily_exits_over_quota"] == [
        ("daily_exits_over_quota", "north1-2")
    ]
