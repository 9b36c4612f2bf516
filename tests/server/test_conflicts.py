"""Cross-gate conflicts: the store and find_conflicts on events built here, as gates send them.

Each test stores events the way the collector does (one `insert_events` per gate batch, then
`find_conflicts` on what was new) and reads what the store recorded, on SQLite and
PostgreSQL. Times are local times in Asia/Shanghai, March 2026.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta
from zoneinfo import ZoneInfo

from protocol.events import Event
from protocol.policy import Policy
from server.conflicts import Conflict
from server.site import Site
from server.storage import Store
from tests import collected

SH = ZoneInfo("Asia/Shanghai")
HOUSEHOLD = "3-1-301"
A, B, C = 1, 2, 3  # pass ids of the household's members
STAFF, VISITOR = 4, 5
POLICY = Policy(household_max_out=1, household_max_exits_per_day=2)


def local(day: int, hour: int, minute: int = 0) -> datetime:
    return datetime(2026, 3, day, hour, minute, tzinfo=SH)


@dataclass
class Gates:
    """Builds the gates' events with their own sequence numbers and feeds them to the store."""

    store: Store
    policy: Policy = POLICY
    seqs: dict[str, int] = field(default_factory=dict)

    def event(
        self,
        gate: str,
        pass_id: int,
        direction: str,
        at: datetime,
        *,
        role: str = "resident",
        decision: str = "allow",
        household: str = HOUSEHOLD,
    ) -> Event:
        seq = self.seqs[gate] = self.seqs.get(gate, 0) + 1
        return Event(
            site="test-site",
            gate=gate,
            seq=seq,
            uuid=f"{gate}-{seq}-uuid",
            at=at.isoformat(),
            clock_trusted=True,
            kind="decision",
            decision=decision,
            reason="ok" if decision == "allow" else "household_out_limit",
            direction=direction,
            temperature_c=36.5 if direction == "in" else None,
            pass_id=pass_id,
            household=household,
            role=role,
            versions={"config": 1, "register": 1},
        )

    def send(self, gate: str, *events: Event) -> list[Conflict]:
        """One batch of `gate`, stored and checked as the collector does."""
        result = collected.insert_events(self.store, gate, list(events))
        assert result.inserted == len(events)
        return collected.check_conflicts(self.store, self.policy, result.new_events)


def kinds(store: Store) -> list[tuple[str, str, int]]:
    return [(c["kind"], c["gate"], c["seq"]) for c in collected.conflicts(store)]


def test_two_gates_each_letting_a_member_out_is_one_conflict(store: Store) -> None:
    gates = Gates(store)
    a_out = gates.event("east", A, "out", local(3, 9))
    b_out = gates.event("west", B, "out", local(3, 9, 5))

    assert gates.send("east", a_out) == []
    (found,) = gates.send("west", b_out)

    assert (found.kind, found.gate, found.seq, found.uuid) == (
        "household_over_quota",
        "west",
        1,
        b_out.uuid,
    )
    assert HOUSEHOLD in found.detail and "east" in found.detail and "west" in found.detail
    assert kinds(store) == [("household_over_quota", "west", 1)]
    # Checking the same events again records nothing new.
    assert collected.check_conflicts(store, POLICY, [a_out, b_out]) == []
    assert collected.check_conflicts(store, POLICY, [b_out]) == []
    assert kinds(store) == [("household_over_quota", "west", 1)]
    # Nothing decided is rewritten: both passages stay allowed.
    assert [(e["gate"], e["decision"]) for e in collected.events(store)] == [
        ("east", "allow"),
        ("west", "allow"),
    ]


def test_a_member_back_in_before_the_other_leaves_is_no_conflict(store: Store) -> None:
    gates = Gates(store)
    gates.send("east", gates.event("east", A, "out", local(3, 9)))
    assert gates.send("west", gates.event("west", A, "in", local(3, 9, 30))) == []
    assert gates.send("west", gates.event("west", B, "out", local(3, 10))) == []
    assert collected.conflicts(store) == []


def test_refusals_take_no_part(store: Store) -> None:
    gates = Gates(store)
    gates.send("east", gates.event("east", A, "out", local(3, 9)))
    refused = gates.event("west", B, "out", local(3, 9, 5), decision="deny")
    assert gates.send("west", refused) == []
    assert collected.conflicts(store) == []


def test_same_pass_out_through_two_gates(store: Store) -> None:
    gates = Gates(store)
    gates.send("east", gates.event("east", A, "out", local(3, 9)))
    (found,) = gates.send("west", gates.event("west", A, "out", local(3, 9, 30)))
    assert (found.kind, found.gate) == ("pass_out_twice", "west")
    assert "east" in found.detail
    assert kinds(store) == [("pass_out_twice", "west", 1)]


def test_same_pass_out_twice_with_an_entry_between_is_fine(store: Store) -> None:
    gates = Gates(store)
    gates.send("east", gates.event("east", A, "out", local(3, 9)))
    gates.send("east", gates.event("east", A, "in", local(3, 9, 20)))
    assert gates.send("west", gates.event("west", A, "out", local(3, 9, 30))) == []
    assert collected.conflicts(store) == []


def test_three_exits_across_gates_in_one_day(store: Store) -> None:
    gates = Gates(store)
    gates.send(
        "east",
        gates.event("east", A, "out", local(3, 8)),
        gates.event("east", A, "in", local(3, 9)),
    )
    gates.send(
        "west",
        gates.event("west", B, "out", local(3, 10)),
        gates.event("west", B, "in", local(3, 11)),
    )
    third = gates.event("east", C, "out", local(3, 12))
    (found,) = gates.send("east", third)
    assert (found.kind, found.gate, found.seq, found.uuid) == (
        "daily_exits_over_quota",
        "east",
        3,
        third.uuid,
    )
    assert kinds(store) == [("daily_exits_over_quota", "east", 3)]


def test_exits_of_two_days_are_counted_apart(store: Store) -> None:
    gates = Gates(store)
    gates.send(
        "east",
        gates.event("east", A, "out", local(3, 8)),
        gates.event("east", A, "in", local(3, 9)),
        gates.event("east", A, "out", local(3, 10)),
        gates.event("east", A, "in", local(3, 11)),
    )
    assert gates.send("west", gates.event("west", B, "out", local(4, 8))) == []
    assert collected.conflicts(store) == []


def test_daily_exits_across_the_gap_between_auto_return_and_day_start(
    store: Store,
) -> None:
    """Counting days start at 04:00 (day_starts_at) while everyone counts as inside again at
    03:00 (auto_return_at): an exit at 03:30 is the previous day's, so with that day's two
    exits used it is one too many."""
    gates = Gates(store, Policy(outing_windows=("00:00-24:00",)))
    gates.send(
        "east",
        gates.event("east", A, "out", local(3, 10)),
        gates.event("east", A, "in", local(3, 11)),
        gates.event("east", A, "out", local(3, 20)),
        gates.event("east", A, "in", local(3, 21)),
    )
    late = gates.event("west", B, "out", local(4, 3, 30))  # still the 3rd's counting day
    (found,) = gates.send("west", late)
    assert (found.kind, found.uuid) == ("daily_exits_over_quota", late.uuid)
    gates.send("west", gates.event("west", B, "in", local(4, 3, 45)))
    assert gates.send("west", gates.event("west", B, "out", local(4, 4, 0))) == []  # a new day
    assert kinds(store) == [("daily_exits_over_quota", "west", 1)]


def test_an_exit_before_midnight_and_one_after_share_the_day(store: Store) -> None:
    gates = Gates(store, Policy(outing_windows=("00:00-24:00",)))
    gates.send(
        "east",
        gates.event("east", A, "out", local(3, 23, 0)),
        gates.event("east", A, "in", local(3, 23, 30)),
        gates.event("east", A, "out", local(4, 0, 10)),
        gates.event("east", A, "in", local(4, 0, 40)),
    )
    (found,) = gates.send("west", gates.event("west", B, "out", local(4, 1, 0)))
    assert found.kind == "daily_exits_over_quota"


def test_auto_return_ends_a_missed_scan(store: Store) -> None:
    gates = Gates(store, Policy(outing_windows=("00:00-24:00",), household_max_exits_per_day=0))
    gates.send("east", gates.event("east", A, "out", local(3, 22)))  # never scans back in
    (found,) = gates.send("west", gates.event("west", B, "out", local(4, 2, 50)))
    assert found.kind == "household_over_quota"
    gates.send("west", gates.event("west", B, "in", local(4, 2, 55)))
    assert gates.send("west", gates.event("west", C, "out", local(4, 3, 10))) == []
    assert kinds(store) == [("household_over_quota", "west", 1)]


def test_a_pass_used_after_its_revocation(site: Site) -> None:
    issued = site.issue_pass(HOUSEHOLD, "张三丰")
    before = collected.revoked_at(site.store, issued.pass_id)
    site.revoke_pass(issued.pass_id, "lost")
    revoked = collected.revoked_at(site.store, issued.pass_id)
    assert before is None and revoked is not None
    gates = Gates(site.store)

    earlier = gates.event("east", issued.pass_id, "out", revoked - timedelta(minutes=5))
    assert gates.send("east", earlier) == []  # used before the revocation: no conflict
    later = gates.event("west", issued.pass_id, "in", revoked + timedelta(minutes=1))
    (found,) = gates.send("west", later)

    assert (found.kind, found.gate, found.seq, found.uuid) == (
        "revoked_pass_used",
        "west",
        1,
        later.uuid,
    )
    assert str(issued.pass_id) in found.detail
    assert collected.check_conflicts(site.store, POLICY, [later]) == []  # recorded once
    assert kinds(site.store) == [("revoked_pass_used", "west", 1)]


def test_a_refusal_of_a_revoked_pass_is_no_conflict(site: Site) -> None:
    issued = site.issue_pass(HOUSEHOLD, "张三丰")
    site.revoke_pass(issued.pass_id, "lost")
    revoked = collected.revoked_at(site.store, issued.pass_id)
    assert revoked is not None
    gates = Gates(site.store)
    refused = gates.event(
        "east", issued.pass_id, "out", revoked + timedelta(minutes=1), decision="deny"
    )
    assert gates.send("east", refused) == []
    assert collected.conflicts(site.store) == []


def test_one_gate_keeping_the_rules_has_no_conflict(store: Store) -> None:
    gates = Gates(store)
    sequence = [
        gates.event("east", A, "out", local(3, 8)),
        gates.event("east", STAFF, "out", local(3, 8, 5), role="staff"),
        gates.event("east", VISITOR, "in", local(3, 8, 10), role="visitor"),
        gates.event("east", B, "out", local(3, 8, 20), decision="deny"),  # refused: A is out
        gates.event("east", A, "in", local(3, 9)),
        gates.event("east", B, "out", local(3, 9, 30)),
        gates.event("east", VISITOR, "out", local(3, 9, 40), role="visitor"),
        gates.event("east", B, "in", local(3, 10)),
        gates.event("east", STAFF, "in", local(3, 18), role="staff"),
        gates.event("east", A, "out", local(4, 8)),  # the next day
    ]
    for event in sequence:  # one event per batch, then all of them at once
        assert gates.send("east", event) == []
    assert collected.check_conflicts(store, POLICY, sequence) == []
    assert collected.conflicts(store) == []


def test_staff_and_visitors_are_not_counted_across_gates(store: Store) -> None:
    gates = Gates(store)
    gates.send("east", gates.event("east", A, "out", local(3, 9)))
    assert gates.send("west", gates.event("west", STAFF, "out", local(3, 9, 5), role="staff")) == []
    assert (
        gates.send("west", gates.event("west", VISITOR, "out", local(3, 9, 6), role="visitor"))
        == []
    )
    assert collected.conflicts(store) == []


def test_other_households_are_apart(store: Store) -> None:
    gates = Gates(store)
    gates.send("east", gates.event("east", A, "out", local(3, 9)))
    other = gates.event("west", 7, "out", local(3, 9, 5), household="3-1-302")
    assert gates.send("west", other) == []
    assert collected.conflicts(store) == []


def test_events_arriving_out_of_time_order_are_still_checked(store: Store) -> None:
    """The offline gate's exit (earlier) arrives after the online gate's (later): the later
    passage is the one over quota, and it is found when the earlier one arrives."""
    gates = Gates(store)
    offline = gates.event("west", B, "out", local(3, 9))
    online = gates.event("east", A, "out", local(3, 9, 30))
    assert gates.send("east", online) == []
    (found,) = gates.send("west", offline)
    assert (found.kind, found.gate, found.uuid) == ("household_over_quota", "east", online.uuid)
    assert kinds(store) == [("household_over_quota", "east", 1)]


def test_daily_exits_out_of_time_order(store: Store) -> None:
    gates = Gates(store)
    online = [
        gates.event("east", A, "out", local(3, 12)),
        gates.event("east", A, "in", local(3, 13)),
        gates.event("east", A, "out", local(3, 16)),
        gates.event("east", A, "in", local(3, 17)),
    ]
    offline = [
        gates.event("west", B, "out", local(3, 8)),
        gates.event("west", B, "in", local(3, 9)),
    ]
    assert gates.send("east", *online) == []
    (found,) = gates.send("west", *offline)  # arrives last, happened first
    assert (found.kind, found.uuid) == ("daily_exits_over_quota", online[2].uuid)


def test_a_gate_resending_its_batch_adds_nothing(store: Store) -> None:
    gates = Gates(store)
    gates.send("east", gates.event("east", A, "out", local(3, 9)))
    b_out = gates.event("west", B, "out", local(3, 9, 5))
    assert len(gates.send("west", b_out)) == 1
    again = collected.insert_events(store, "west", [b_out])
    assert (again.inserted, again.duplicates, again.new_events) == (0, 1, ())
    assert collected.check_conflicts(store, POLICY, again.new_events) == []
    assert len(collected.conflicts(store)) == 1


def test_an_exit_after_the_household_was_quarantined_is_a_conflict(site):
    """An offline gate that did not know of the quarantine yet let a member out."""
    from datetime import UTC, datetime, timedelta

    from protocol.events import Event

    site.set_quarantine("3-1-301", None)
    later = (datetime.now(UTC) + timedelta(minutes=5)).isoformat()
    earlier = (datetime.now(UTC) - timedelta(days=1)).isoformat()

    def exit_at(seq: int, at: str) -> Event:
        return Event(
            site=site.site,
            gate="g2",
            seq=seq,
            uuid=f"u-{seq}",
            at=at,
            clock_trusted=True,
            kind="decision",
            decision="allow",
            reason="ok",
            direction="out",
            temperature_c=None,
            pass_id=40 + seq,
            household="3-1-301",
            role="resident",
        )

    events = [exit_at(1, earlier), exit_at(2, later)]
    collected.insert_events(site.store, "g2", events)
    found = collected.check_conflicts(site.store, site.config.policy, events)
    assert [(c.kind, c.seq) for c in found] == [("quarantined_exit", 2)]
    assert collected.check_conflicts(site.store, site.config.policy, events) == []
    site.set_quarantine("3-1-301", None, on=False)
    assert collected.quarantine_period(site.store, "3-1-301") is None
