"""The community's rules, scenario by scenario, then properties over random days of traffic.

Everything here goes through the pure core (`decide`, `advance`, `record_passage`): a
small in-test gate keeps the state between scans, exactly as the daemon does. Times are
local times in Asia/Shanghai (converted to UTC as the daemon's clock gives them), in
March 2026: the 2nd is a Monday.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from types import MappingProxyType
from zoneinfo import ZoneInfo

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from edge.decision import (
    Decision,
    GateState,
    Now,
    Outside,
    Scan,
    Temperature,
    advance,
    decide,
    exits_today,
    outside_now,
    record_passage,
    state_from_json,
    state_to_json,
)
from edge.knowledge import Knowledge
from protocol.passes import PassPayload, Role, TrustKey, public_bytes, sign_pass, unix
from protocol.policy import Policy
from protocol.register import PassEntry, Register

SITE = "test-site"
KEY = Ed25519PrivateKey.generate()
TRUST = MappingProxyType({1: TrustKey(1, public_bytes(KEY))})
SH = ZoneInfo("Asia/Shanghai")
NORMAL = Temperature(36.5)
HIGH = Temperature(38.2)
VALID_FROM = datetime(2026, 2, 1, tzinfo=UTC)
VALID_UNTIL = datetime(2026, 5, 1, tzinfo=UTC)

ALL_DAY = ("00:00-24:00",)


def at(day: int, hour: int, minute: int = 0, second: int = 0) -> Now:
    """A trusted clock reading at local (Shanghai) time on `day` March 2026."""
    local = datetime(2026, 3, 1, tzinfo=SH) + timedelta(
        days=day - 1, hours=hour, minutes=minute, seconds=second
    )
    return Now(local.astimezone(UTC), True)


@dataclass(frozen=True)
class Card:
    pass_id: int
    household: str
    role: Role = Role.RESIDENT

    @property
    def qr(self) -> str:
        return _qr(self.pass_id, self.household, self.role)


_QR_CACHE: dict[tuple[int, str, Role], str] = {}


def _qr(pass_id: int, household: str, role: Role) -> str:
    key = (pass_id, household, role)
    if key not in _QR_CACHE:
        payload = PassPayload(
            1, pass_id, SITE, household, role, unix(VALID_FROM), unix(VALID_UNTIL)
        )
        _QR_CACHE[key] = sign_pass(payload, KEY)
    return _QR_CACHE[key]


# Household 3-1-301 (ends odd) and 3-1-302 (ends even).
A = Card(1, "3-1-301")
B = Card(2, "3-1-301")
C = Card(3, "3-1-301")
STAFF = Card(4, "3-1-301", Role.STAFF)  # a property worker living in the household
VISITOR = Card(5, "3-1-301", Role.VISITOR)  # visiting household 3-1-301
D = Card(6, "3-1-302")
E = Card(7, "3-1-302")
REVOKED = Card(9, "3-1-302")


def knowledge(
    policy: Policy | None = None,
    *,
    quarantine: dict[str, datetime | None] | None = None,
    revoked: tuple[int, ...] = (REVOKED.pass_id,),
) -> Knowledge:
    cards = (A, B, C, STAFF, VISITOR, D, E, REVOKED)
    register = Register(
        {
            c.pass_id: PassEntry(c.pass_id, c.household, "张*丰", c.household, c.role.label)
            for c in cards
        },
        {pid: "lost" for pid in revoked},
        quarantine or {},
    )
    # No issue times: the data-age rule is tested in test_decision.py, not here.
    return Knowledge(SITE, TRUST, policy or Policy(), register, 1, 1, None, None)


@dataclass
class Gate:
    """One gate: the pure core plus the state the daemon would persist between scans."""

    know: Knowledge
    name: str = "east"
    state: GateState = field(default_factory=GateState)
    count: int = 0

    @property
    def policy(self) -> Policy:
        return self.know.policy

    def scan(
        self, card: Card, direction: str, now: Now, temperature: Temperature = NORMAL
    ) -> Decision:
        d = decide(
            Scan(card.qr, direction),  # type: ignore[arg-type]
            temperature if direction == "in" else None,
            self.state,
            self.know,
            now,
        )
        self.count += 1
        self.state = advance(
            self.state, d, now, policy=self.policy, uuid=f"{self.name}-{self.count}"
        )
        return d

    def out(self, card: Card, now: Now) -> Decision:
        return self.scan(card, "out", now)

    def come_in(self, card: Card, now: Now, temperature: Temperature = NORMAL) -> Decision:
        return self.scan(card, "in", now, temperature)

    def relay(self, card: Card, direction: str, now: Now, uuid: str) -> None:
        """A passage accepted by another gate, relayed here by the collector."""
        self.state = record_passage(
            self.state,
            self.policy,
            pass_id=card.pass_id,
            household=card.household,
            role=card.role.label,
            direction=direction,
            at=now.utc,
            uuid=uuid,
        )

    def outside(self, now: Now) -> set[int]:
        return set(outside_now(self.state, self.policy, now))

    def exits(self, household: str, now: Now) -> int:
        return exits_today(self.state, self.policy, household, now)


def result(d: Decision) -> tuple[str, str]:
    return (d.outcome, d.reason)


OK = ("allow", "ok")


# --- home quarantine ----------------------------------------------------------------------


def test_quarantined_household_cannot_exit_but_can_come_home():
    gate = Gate(knowledge(quarantine={"3-1-301": None}))
    d = gate.out(A, at(3, 9))
    assert result(d) == ("deny", "quarantined") and d.rule == "quarantine"
    assert result(gate.out(STAFF, at(3, 9, 1))) == ("deny", "quarantined")  # no role escapes it
    assert result(gate.out(D, at(3, 9, 2))) == OK  # the neighbours are not quarantined
    assert result(gate.come_in(B, at(3, 9, 3))) == OK
    assert gate.outside(at(3, 9, 3)) == {D.pass_id}


def test_quarantine_until_a_time_ends_then():
    until = at(5, 12).utc
    gate = Gate(knowledge(quarantine={"3-1-301": until}))
    assert result(gate.out(A, at(5, 11, 59, 59))) == ("deny", "quarantined")
    assert result(gate.out(A, at(5, 12))) == OK  # `until` is exclusive


def test_quarantine_that_ended_in_the_past_no_longer_applies():
    gate = Gate(knowledge(quarantine={"3-1-301": at(1, 8).utc}))
    assert result(gate.out(A, at(3, 9))) == OK


# --- anti-passback -----------------------------------------------------------------------


def test_hard_anti_passback_denies_a_second_exit_until_an_entry():
    gate = Gate(knowledge(Policy(anti_passback="hard")))
    assert result(gate.out(A, at(3, 9))) == OK
    d = gate.out(A, at(3, 9, 10))
    assert result(d) == ("deny", "anti_passback") and d.flags == ()
    assert result(gate.come_in(A, at(3, 10))) == OK
    assert result(gate.out(A, at(3, 10, 30))) == OK


def test_soft_anti_passback_allows_and_flags():
    gate = Gate(knowledge(Policy(anti_passback="soft")))
    first = gate.out(A, at(3, 9))
    second = gate.out(A, at(3, 9, 10))
    assert (result(first), first.flags) == (OK, ())
    assert (result(second), second.flags) == (OK, ("anti_passback",))
    assert gate.exits("3-1-301", at(3, 9, 10)) == 2  # both exits happened
    assert result(gate.out(A, at(3, 9, 20))) == ("deny", "daily_exit_limit")


def test_anti_passback_off_allows_without_a_flag():
    gate = Gate(knowledge(Policy(anti_passback="off")))
    assert result(gate.out(A, at(3, 9))) == OK
    d = gate.out(A, at(3, 9, 10))
    assert (result(d), d.flags) == (OK, ())


def test_anti_passback_holds_staff_too():
    gate = Gate(knowledge())
    assert result(gate.out(STAFF, at(3, 9))) == OK
    assert result(gate.out(STAFF, at(3, 9, 1))) == ("deny", "anti_passback")


# --- outing windows and day schemes ---------------------------------------------------------


@pytest.mark.parametrize(
    ("hour", "minute", "expected"),
    [
        (0, 30, ("deny", "outside_window")),
        (5, 59, ("deny", "outside_window")),
        (6, 0, OK),
        (12, 0, OK),
        (19, 59, OK),
        (20, 0, ("deny", "outside_window")),
        (23, 59, ("deny", "outside_window")),
    ],
)
def test_outing_window_edges(hour, minute, expected):
    gate = Gate(knowledge(Policy(outing_windows=("06:00-20:00",))))
    d = gate.out(A, at(3, hour, minute))
    assert result(d) == expected
    if expected != OK:
        assert d.rule == "window" and gate.outside(at(3, hour, minute)) == set()


def test_window_edge_to_the_second():
    gate = Gate(knowledge())
    assert result(gate.out(A, at(3, 5, 59, 59))) == ("deny", "outside_window")
    assert result(gate.out(A, at(3, 19, 59, 59))) == OK


@pytest.mark.parametrize(
    ("hour", "minute", "allowed"),
    [(6, 59, False), (7, 0, True), (8, 59, True), (9, 0, False), (12, 0, False), (16, 0, True)],
)
def test_several_windows(hour, minute, allowed):
    gate = Gate(knowledge(Policy(outing_windows=("07:00-09:00", "16:00-18:30"))))
    assert gate.out(A, at(3, hour, minute)).outcome == ("allow" if allowed else "deny")


def test_a_window_up_to_midnight_includes_the_last_minute():
    gate = Gate(knowledge(Policy(outing_windows=("18:00-24:00",), anti_passback="off")))
    assert result(gate.out(A, at(3, 23, 59, 59))) == OK
    assert result(gate.out(B, at(4, 0, 0))) == ("deny", "outside_window")


def test_odd_even_scheme_follows_the_local_date():
    policy = Policy(outing_scheme="odd_even", outing_windows=ALL_DAY, household_max_out=0)
    # 07:30 on the 4th in Shanghai is still the 3rd in UTC: the local (even) date decides.
    assert at(4, 7, 30).utc.day == 3
    for when, odd_ok in ((at(3, 9), True), (at(4, 7, 30), False), (at(5, 23, 59), True)):
        gate = Gate(knowledge(policy))
        odd, even = gate.out(A, when), gate.out(D, when)  # 3-1-301 is odd, 3-1-302 even
        assert result(odd) == (OK if odd_ok else ("deny", "outside_window"))
        assert result(even) == (("deny", "outside_window") if odd_ok else OK)


def test_odd_even_still_needs_the_window():
    gate = Gate(knowledge(Policy(outing_scheme="odd_even")))
    assert result(gate.out(A, at(3, 5, 0))) == ("deny", "outside_window")
    assert result(gate.out(A, at(3, 6, 0))) == OK


def test_outing_weekdays_follow_the_local_weekday():
    policy = Policy(outing_weekdays=(1, 3, 5), outing_windows=ALL_DAY)  # Mon, Wed, Fri
    expectations = [
        (at(2, 9), OK),  # Monday
        (at(3, 9), ("deny", "outside_window")),  # Tuesday
        (at(4, 0, 30), OK),  # Wednesday locally, still Tuesday in UTC
        (at(7, 9), ("deny", "outside_window")),  # Saturday
        (at(8, 9), ("deny", "outside_window")),  # Sunday
    ]
    assert at(4, 0, 30).utc.isoweekday() == 2
    for when, expected in expectations:
        assert result(Gate(knowledge(policy)).out(A, when)) == expected, when


def test_staff_and_visitors_are_not_held_to_the_windows():
    policy = Policy(outing_scheme="odd_even", outing_weekdays=(1,))
    gate = Gate(knowledge(policy))
    when = at(3, 23, 0)  # Tuesday night, even household's... any household's wrong day
    assert result(gate.out(A, when)) == ("deny", "outside_window")
    assert result(gate.out(STAFF, when)) == OK
    assert result(gate.out(VISITOR, when)) == OK


# --- household quotas -----------------------------------------------------------------------


def test_one_member_out_per_household():
    gate = Gate(knowledge(Policy(household_max_out=1)))
    assert result(gate.out(A, at(3, 9))) == OK
    d = gate.out(B, at(3, 9, 5))
    assert result(d) == ("deny", "household_out_limit") and d.rule == "household_quota"
    assert result(gate.out(D, at(3, 9, 6))) == OK  # another household has its own quota
    assert result(gate.come_in(A, at(3, 10))) == OK
    assert result(gate.out(B, at(3, 10, 5))) == OK


def test_staff_and_visitors_neither_count_nor_are_held_to_the_household_quota():
    gate = Gate(knowledge(Policy(household_max_out=1, household_max_exits_per_day=1)))
    assert result(gate.out(STAFF, at(3, 8))) == OK
    assert result(gate.out(VISITOR, at(3, 8, 1))) == OK
    assert result(gate.out(A, at(3, 8, 2))) == OK  # staff and visitor outside do not count
    assert gate.exits("3-1-301", at(3, 8, 2)) == 1  # nor do their exits
    assert result(gate.come_in(STAFF, at(3, 9))) == OK
    # A is out and the day's one exit is used: staff still go out
    assert result(gate.out(STAFF, at(3, 9, 30))) == OK
    assert result(gate.out(B, at(3, 9, 31))) == ("deny", "household_out_limit")


def test_household_max_out_two():
    gate = Gate(knowledge(Policy(household_max_out=2, household_max_exits_per_day=0)))
    assert result(gate.out(A, at(3, 9))) == OK
    assert result(gate.out(B, at(3, 9, 1))) == OK
    assert result(gate.out(C, at(3, 9, 2))) == ("deny", "household_out_limit")


def test_daily_exit_limit():
    gate = Gate(knowledge(Policy(household_max_out=1, household_max_exits_per_day=2)))
    assert result(gate.out(A, at(3, 9))) == OK
    assert result(gate.come_in(A, at(3, 10))) == OK
    assert result(gate.out(B, at(3, 11))) == OK
    assert result(gate.come_in(B, at(3, 12))) == OK
    d = gate.out(A, at(3, 13))
    assert result(d) == ("deny", "daily_exit_limit") and d.rule == "daily_quota"
    assert result(gate.out(C, at(3, 13, 1))) == ("deny", "daily_exit_limit")  # per household
    assert result(gate.out(D, at(3, 13, 2))) == OK
    assert result(gate.out(A, at(4, 6))) == OK  # a new day


def test_daily_counter_resets_at_day_starts_at_not_midnight():
    policy = Policy(outing_windows=ALL_DAY, household_max_exits_per_day=2, day_starts_at="04:00")
    gate = Gate(knowledge(policy))
    assert result(gate.out(A, at(3, 23, 50))) == OK
    assert result(gate.come_in(A, at(3, 23, 55))) == OK
    assert result(gate.out(A, at(4, 0, 10))) == OK  # after midnight: the same counting day
    assert result(gate.come_in(A, at(4, 0, 20))) == OK
    assert result(gate.out(A, at(4, 3, 59))) == ("deny", "daily_exit_limit")
    assert result(gate.out(A, at(4, 3, 59, 59))) == ("deny", "daily_exit_limit")
    assert result(gate.out(A, at(4, 4, 0))) == OK
    assert gate.exits("3-1-301", at(4, 4, 0)) == 1


def test_an_exit_at_0359_counts_for_the_previous_day():
    policy = Policy(outing_windows=ALL_DAY, household_max_exits_per_day=2, anti_passback="off")
    gate = Gate(knowledge(policy))
    assert result(gate.out(A, at(3, 10))) == OK
    assert result(gate.out(A, at(4, 3, 59))) == OK  # exit 2 of the 3rd
    assert gate.exits("3-1-301", at(4, 3, 59)) == 2
    assert gate.exits("3-1-301", at(4, 4, 0)) == 0
    assert result(gate.out(A, at(4, 4, 0))) == OK
    assert result(gate.out(A, at(4, 4, 1))) == OK
    assert result(gate.out(A, at(4, 4, 2))) == ("deny", "daily_exit_limit")


def test_day_starts_at_another_hour():
    policy = Policy(outing_windows=ALL_DAY, household_max_exits_per_day=1, day_starts_at="00:00")
    gate = Gate(knowledge(policy, revoked=()))
    assert result(gate.out(A, at(3, 23, 59))) == OK
    assert result(gate.come_in(A, at(3, 23, 59, 30))) == OK
    assert result(gate.out(A, at(4, 0, 0))) == OK


def test_auto_return_heals_a_missed_scan():
    policy = Policy(outing_windows=ALL_DAY, household_max_out=1, auto_return_at="03:00")
    gate = Gate(knowledge(policy))
    assert result(gate.out(A, at(3, 22))) == OK  # A never scans back in
    assert result(gate.out(B, at(4, 2, 59, 59))) == ("deny", "household_out_limit")
    assert gate.outside(at(4, 2, 59, 59)) == {A.pass_id}
    assert gate.outside(at(4, 3, 0)) == set()
    assert result(gate.out(B, at(4, 3, 0))) == OK
    assert result(gate.come_in(B, at(4, 3, 30))) == OK
    assert result(gate.out(A, at(4, 5))) == OK  # no anti-passback for A any more either


# --- entries ---------------------------------------------------------------------------------


def _busy_gate() -> Gate:
    """Household 3-1-301 under quarantine (from the 3rd, 12:00), its member A out and both of
    the day's exits used; windows 06:00-20:00."""
    gate = Gate(knowledge(quarantine={"3-1-301": None}))
    gate.know = knowledge(quarantine={})
    assert result(gate.out(A, at(3, 9))) == OK
    assert result(gate.come_in(A, at(3, 9, 30))) == OK
    assert result(gate.out(A, at(3, 10))) == OK
    gate.know = knowledge(quarantine={"3-1-301": None})
    return gate


@pytest.mark.parametrize("card", [A, B, STAFF])
def test_entries_are_allowed_outside_windows_over_quota_and_under_quarantine(card):
    gate = _busy_gate()
    now = at(3, 23, 30)
    assert result(gate.out(C, now)) == ("deny", "quarantined")
    d = gate.come_in(card, now)
    assert result(d) == OK and d.temperature_c == NORMAL.body_c


def test_entries_with_fever_are_refused_even_then():
    gate = _busy_gate()
    first = gate.come_in(A, at(3, 23, 30), HIGH)
    second = gate.come_in(A, at(3, 23, 31), HIGH)
    assert result(first) == ("deny", "fever_recheck")
    assert (result(second), second.alert) == (("deny", "fever"), "fever")
    assert gate.outside(at(3, 23, 31)) == {A.pass_id}  # A did not come in


def test_soft_fever_mode_lets_in_with_an_alert():
    gate = Gate(knowledge(Policy(fever_mode="soft")))
    assert result(gate.out(A, at(3, 9))) == OK
    first = gate.come_in(A, at(3, 11), HIGH)
    second = gate.come_in(A, at(3, 11, 1), HIGH)
    assert result(first) == ("deny", "fever_recheck") and first.alert is None
    assert (result(second), second.decision, second.alert) == (
        ("allow", "fever_soft"),
        "allow",
        "fever",
    )
    assert gate.outside(at(3, 11, 1)) == set()  # A is in
    assert result(gate.out(B, at(3, 11, 2))) == OK


def test_member_returning_with_fever_while_another_is_out():
    gate = Gate(knowledge(Policy(household_max_out=1)))
    assert result(gate.out(A, at(3, 9))) == OK
    assert result(gate.come_in(B, at(3, 9, 30), HIGH)) == ("deny", "fever_recheck")
    assert result(gate.come_in(B, at(3, 9, 31), HIGH)) == ("deny", "fever")
    assert gate.outside(at(3, 9, 31)) == {A.pass_id}  # the member outside still counts
    assert result(gate.out(C, at(3, 9, 32))) == ("deny", "household_out_limit")


# --- visitors -------------------------------------------------------------------------------


def test_visitor_pass_allows_one_entry_and_one_exit():
    gate = Gate(knowledge())
    assert result(gate.come_in(VISITOR, at(3, 10))) == OK
    assert result(gate.come_in(VISITOR, at(3, 10, 5))) == ("deny", "visitor_used")
    assert result(gate.out(VISITOR, at(3, 12))) == OK
    assert result(gate.come_in(VISITOR, at(3, 13))) == ("deny", "visitor_used")
    assert result(gate.out(VISITOR, at(3, 13, 1))) == ("deny", "anti_passback")


def test_visitor_second_exit_without_anti_passback():
    gate = Gate(knowledge(Policy(anti_passback="off")))
    assert result(gate.out(VISITOR, at(3, 12))) == OK
    d = gate.out(VISITOR, at(3, 12, 1))
    assert result(d) == ("deny", "visitor_used") and d.rule == "visitor"


def test_visitor_used_does_not_heal_overnight():
    gate = Gate(knowledge())
    assert result(gate.come_in(VISITOR, at(3, 10))) == OK
    assert result(gate.out(VISITOR, at(3, 12))) == OK
    assert result(gate.come_in(VISITOR, at(5, 10))) == ("deny", "visitor_used")


# --- passages relayed from other gates -------------------------------------------------------


def test_a_relayed_exit_counts_for_members_out_and_daily_exits():
    gate = Gate(knowledge(Policy(household_max_out=1, household_max_exits_per_day=2)))
    gate.relay(A, "out", at(3, 9), "west-1")
    assert gate.outside(at(3, 9, 1)) == {A.pass_id}
    assert result(gate.out(B, at(3, 9, 1))) == ("deny", "household_out_limit")
    assert result(gate.out(A, at(3, 9, 2))) == ("deny", "anti_passback")
    gate.relay(A, "in", at(3, 10), "west-2")
    assert result(gate.out(B, at(3, 10, 1))) == OK  # exit 2 of the day
    assert result(gate.come_in(B, at(3, 11))) == OK
    assert result(gate.out(C, at(3, 11, 1))) == ("deny", "daily_exit_limit")


def test_relaying_the_same_passage_twice_counts_once():
    gate = Gate(knowledge(Policy(household_max_out=1, household_max_exits_per_day=2)))
    gate.relay(A, "out", at(3, 9), "west-1")
    gate.relay(A, "out", at(3, 9), "west-1")
    assert gate.exits("3-1-301", at(3, 9, 1)) == 1
    gate.relay(A, "in", at(3, 10), "west-2")
    gate.relay(A, "out", at(3, 9), "west-1")  # a late duplicate does not put A out again
    assert gate.outside(at(3, 10, 1)) == set()
    assert gate.exits("3-1-301", at(3, 10, 1)) == 1
    assert result(gate.out(B, at(3, 10, 1))) == OK


def test_own_passage_echoed_back_counts_once():
    gate = Gate(knowledge())
    d = decide(Scan(A.qr, "out"), None, gate.state, gate.know, at(3, 9))
    gate.state = advance(gate.state, d, at(3, 9), policy=gate.policy, uuid="east-77")
    gate.relay(A, "out", at(3, 9), "east-77")
    assert gate.exits("3-1-301", at(3, 9)) == 1


def test_a_relayed_relayed_staff_or_visitor_exit_does_not_count():
    gate = Gate(knowledge(Policy(household_max_out=1, household_max_exits_per_day=1)))
    gate.relay(STAFF, "out", at(3, 9), "west-1")
    gate.relay(VISITOR, "out", at(3, 9, 1), "west-2")
    assert gate.exits("3-1-301", at(3, 9, 2)) == 0
    assert result(gate.out(A, at(3, 9, 2))) == OK
    assert result(gate.out(VISITOR, at(3, 9, 3))) == ("deny", "anti_passback")
    assert result(gate.come_in(VISITOR, at(3, 9, 4))) == OK
    assert result(gate.out(VISITOR, at(3, 9, 5))) == ("deny", "visitor_used")


def test_a_late_relayed_passage_of_yesterday_does_not_reset_todays_counters():
    """A gate that was offline overnight syncs in the morning: its passages of yesterday
    arrive after today's. Yesterday's exit belongs to yesterday's counter; today's exits
    and who is out now must stay as they were."""
    gate = Gate(knowledge(Policy(household_max_out=1, household_max_exits_per_day=2)))
    assert result(gate.out(A, at(4, 8))) == OK
    assert result(gate.come_in(A, at(4, 9))) == OK
    assert result(gate.out(B, at(4, 10))) == OK
    assert gate.exits("3-1-301", at(4, 10, 30)) == 2
    gate.relay(C, "out", at(3, 19), "west-1")  # yesterday, through the offline gate
    gate.relay(B, "out", at(3, 19, 30), "west-2")  # and B went out yesterday too
    assert gate.exits("3-1-301", at(4, 10, 30)) == 2
    assert gate.outside(at(4, 10, 30)) == {B.pass_id}
    assert result(gate.out(C, at(4, 10, 31))) == ("deny", "household_out_limit")
    assert result(gate.come_in(B, at(4, 11))) == OK
    assert result(gate.out(C, at(4, 11, 1))) == ("deny", "daily_exit_limit")


def test_revoked_pass_is_refused_both_ways():
    gate = Gate(knowledge())
    for direction in ("in", "out"):
        d = gate.scan(REVOKED, direction, at(3, 9))
        assert (result(d), d.alert) == (("deny", "revoked"), "revoked")


# --- properties over random days of traffic at two gates -------------------------------------

PEOPLE = (A, B, C, STAFF, VISITOR, D, E, REVOKED, Card(11, "7-2-707"), Card(12, "7-2-707"))
QUARANTINED = "7-2-707"
START = at(2, 5, 0)  # Monday 05:00 local

POLICIES = (
    Policy(),
    Policy(
        outing_windows=("07:00-09:00", "16:00-21:30"),
        outing_scheme="odd_even",
        household_max_exits_per_day=3,
    ),
    Policy(
        outing_windows=ALL_DAY,
        outing_weekdays=(1, 3, 5),
        household_max_out=2,
        household_max_exits_per_day=2,
        day_starts_at="05:00",
        auto_return_at="02:30",
    ),
    Policy(outing_windows=("05:30-23:00",), household_max_out=1, household_max_exits_per_day=0),
)


def _minutes(clock: str) -> int:
    h, m = clock.split(":")
    return int(h) * 60 + int(m)


def may_go_out(policy: Policy, now: Now, household: str) -> bool:
    """The outing rules, written again independently of `Policy.may_go_out`."""
    local = now.utc.astimezone(SH)
    if policy.outing_weekdays and local.isoweekday() not in policy.outing_weekdays:
        return False
    if policy.outing_scheme == "odd_even" and int(household[-1]) % 2 != local.day % 2:
        return False
    minute = local.hour * 60 + local.minute
    windows = [w.split("-") for w in policy.outing_windows]
    return any(_minutes(s) <= minute < _minutes(e) for s, e in windows)


def counting_day(policy: Policy, now: Now) -> date:
    return (now.utc.astimezone(SH) - timedelta(minutes=_minutes(policy.day_starts_at))).date()


def last_auto_return(policy: Policy, now: Now) -> datetime:
    local = now.utc.astimezone(SH)
    back = timedelta(minutes=_minutes(policy.auto_return_at))
    day = (local - back).date()
    return datetime(day.year, day.month, day.day, tzinfo=SH) + back


STEPS = st.lists(
    st.tuples(
        st.integers(0, len(PEOPLE) - 1),
        st.sampled_from(["in", "out"]),
        st.integers(0, 240),  # minutes since the previous scan, anywhere on the site
        st.sampled_from(["east", "west"]),
        st.sampled_from([NORMAL, NORMAL, NORMAL, HIGH]),
        st.booleans(),  # the collector relays the passage twice (a QoS 1 duplicate)
    ),
    min_size=1,
    max_size=45,
)


@dataclass(frozen=True)
class Seen:
    gate: str
    card: Card
    direction: str
    temperature: Temperature
    now: Now
    decision: Decision
    before: GateState


def simulate(
    steps: list[tuple[int, str, int, str, Temperature, bool]], know: Knowledge
) -> tuple[list[Seen], dict[str, Gate], list[Now]]:
    """Two online gates of one site: every accepted passage of one is relayed to the other at
    once (sometimes twice)."""
    gates = {"east": Gate(know, "east"), "west": Gate(know, "west")}
    seen: list[Seen] = []
    times: list[Now] = []
    t = START.utc
    for index, direction, minutes, name, temperature, twice in steps:
        t += timedelta(minutes=minutes)
        now, card, gate = Now(t, True), PEOPLE[index], gates[name]
        before = gate.state
        d = gate.scan(card, direction, now, temperature)
        seen.append(Seen(name, card, direction, temperature, now, d, before))
        times.append(now)
        if d.outcome == "allow":
            other = gates["west" if name == "east" else "east"]
            for _ in range(1 + twice):
                other.relay(card, direction, now, f"{name}-{gate.count}")
    return seen, gates, times


def knowledges() -> st.SearchStrategy[Knowledge]:
    return st.sampled_from(POLICIES).map(lambda p: knowledge(p, quarantine={QUARANTINED: None}))


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(STEPS, knowledges())
def test_hard_rules_hold_over_random_days(steps, know):
    policy = know.policy
    seen, _, _ = simulate(steps, know)
    model_out: dict[int, datetime] = {}  # pass id → when it went out (site-wide)
    exits: dict[tuple[str, date], int] = {}
    for s in seen:
        d, card = s.decision, s.card
        if card is REVOKED:
            assert result(d) == ("deny", "revoked")
        if d.outcome != "allow":
            continue
        assert s.now.utc < VALID_UNTIL
        if s.direction == "in":
            model_out.pop(card.pass_id, None)
            assert d.temperature_c is not None and d.temperature_c < policy.fever_threshold_c
            continue
        assert card.household != QUARANTINED, f"quarantined household exited: {s}"
        boundary = last_auto_return(policy, s.now)
        assert not (card.pass_id in model_out and model_out[card.pass_id] >= boundary), (
            "hard anti-passback: out twice"
        )
        model_out[card.pass_id] = s.now.utc
        if card.role is not Role.RESIDENT:
            continue
        assert may_go_out(policy, s.now, card.household), f"exit outside the windows: {s}"
        members = sum(
            1
            for c in PEOPLE
            if c.household == card.household
            and c.role is Role.RESIDENT
            and model_out.get(c.pass_id, boundary - timedelta(1)) >= boundary
        )
        if policy.household_max_out:
            assert members <= policy.household_max_out, f"household over its quota: {s}"
        key = (card.household, counting_day(policy, s.now))
        exits[key] = exits.get(key, 0) + 1
        if policy.household_max_exits_per_day:
            assert exits[key] <= policy.household_max_exits_per_day, f"too many exits: {s}"


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(STEPS, knowledges())
def test_every_gate_sees_who_is_out_as_the_site_does(steps, know):
    """From each gate's view (outside_now), the passes out are exactly the site-wide truth,
    and a household never has more residents out than its quota."""
    policy = know.policy
    seen, gates, _ = simulate(steps, know)
    model_out: dict[int, datetime] = {}
    households = {c.household for c in PEOPLE}

    def check(view: dict[int, Outside], now: Now) -> None:
        boundary = last_auto_return(policy, now)
        assert set(view) == {pid for pid, since in model_out.items() if since >= boundary}
        for household in households:
            residents = [
                pid for pid, o in view.items() if o.household == household and o.role == "resident"
            ]
            if policy.household_max_out:
                assert len(residents) <= policy.household_max_out, (household, view)

    for s in seen:
        check(outside_now(s.before, policy, s.now), s.now)  # what the deciding gate knew
        if s.decision.outcome == "allow":
            if s.direction == "out":
                model_out[s.card.pass_id] = s.now.utc
            else:
                model_out.pop(s.card.pass_id, None)
    end = seen[-1].now
    for gate in gates.values():  # after the run, both gates agree with the site
        check(outside_now(gate.state, policy, end), end)


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(STEPS, knowledges())
def test_decisions_are_deterministic_and_the_state_round_trips(steps, know):
    first, gates, _ = simulate(steps, know)
    second, _, _ = simulate(steps, know)
    assert [s.decision for s in first] == [s.decision for s in second]
    for s in reversed(first):  # asked again, out of order, from the state it had then
        scan = Scan(s.card.qr, s.direction)  # type: ignore[arg-type]
        temperature = s.temperature if s.direction == "in" else None
        assert decide(scan, temperature, s.before, know, s.now) == s.decision
        assert state_from_json(json.loads(json.dumps(state_to_json(s.before)))) == s.before
    for gate in gates.values():
        assert state_from_json(json.loads(json.dumps(state_to_json(gate.state)))) == gate.state


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(STEPS, knowledges())
def test_entries_with_a_normal_temperature_are_always_allowed(steps, know):
    """Whatever the windows, quotas and quarantine: a resident or staff member with a normal
    reading gets in; a visitor once (its entry counted at every gate)."""
    seen, _, _ = simulate(steps, know)
    visitor_in = False
    for s in seen:
        if s.direction != "in" or s.card is REVOKED:
            continue
        if s.temperature == NORMAL:
            if s.card.role is not Role.VISITOR or not visitor_in:
                assert result(s.decision) == OK, s
            else:
                assert result(s.decision) == ("deny", "visitor_used"), s
        else:
            assert s.decision.outcome == "deny" and s.decision.reason in ("fever_recheck", "fever")
        if s.card.role is Role.VISITOR and s.decision.outcome == "allow":
            visitor_in = True


PASSAGES = st.lists(
    st.tuples(
        st.integers(0, len(PEOPLE) - 1),
        st.sampled_from(["in", "out"]),
        st.integers(1, 300),  # minutes after the previous passage
    ),
    min_size=1,
    max_size=40,
)


@settings(max_examples=150, deadline=None)
@given(PASSAGES, st.sampled_from(POLICIES), st.data())
def test_passages_relayed_in_any_order_give_the_same_view(passages, policy, data):
    """A gate that was offline syncs late, the broker redelivers: whatever the order and the
    duplicates, once every passage has arrived the gate knows who is out and the day's exits
    exactly as if it had seen them in time order."""
    t = START.utc
    timeline: list[tuple[Card, str, datetime, str]] = []
    for index, direction, minutes in passages:
        t += timedelta(minutes=minutes)
        timeline.append((PEOPLE[index], direction, t, f"west-{len(timeline) + 1}"))
    delivered = data.draw(st.permutations(timeline))
    delivered += data.draw(st.lists(st.sampled_from(timeline), max_size=5))  # duplicates
    gate = Gate(knowledge(policy), "east")
    for card, direction, when, uuid in delivered:
        gate.relay(card, direction, Now(when, True), uuid)

    end = Now(t + timedelta(minutes=data.draw(st.integers(0, 600))), True)
    latest: dict[int, tuple[str, datetime]] = {}
    for card, direction, when, _ in timeline:
        latest[card.pass_id] = (direction, when)
    boundary = last_auto_return(policy, end)
    assert gate.outside(end) == {
        pid for pid, (direction, when) in latest.items() if direction == "out" and when >= boundary
    }
    for household in {c.household for c in PEOPLE}:
        exits = sum(
            1
            for card, direction, when, _ in timeline
            if direction == "out"
            and card.household == household
            and card.role is Role.RESIDENT
            and counting_day(policy, Now(when, True)) == counting_day(policy, end)
        )
        assert gate.exits(household, end) == exits, household


def test_remembered_visitor_passes_are_bounded_oldest_first(monkeypatch):
    from datetime import UTC, datetime

    import edge.decision
    from edge.decision import GateState, record_passage
    from protocol.policy import Policy

    assert edge.decision.MAX_VISITOR_PASSES == 5000
    MAX_VISITOR_PASSES = 50  # the same code path, a smaller bound: the test stays fast
    monkeypatch.setattr(edge.decision, "MAX_VISITOR_PASSES", MAX_VISITOR_PASSES)
    state = GateState()
    at = datetime(2026, 11, 29, 2, 0, tzinfo=UTC)
    for pass_id in range(1, MAX_VISITOR_PASSES + 11):
        state = record_passage(
            state,
            Policy(),
            pass_id=pass_id,
            household="1-1-101",
            role="visitor",
            direction="in",
            at=at,
            uuid=f"u{pass_id}",
        )
    assert len(state.visitor_uses) == MAX_VISITOR_PASSES
    assert 10 not in state.visitor_uses and 11 in state.visitor_uses
    assert state.visitor_uses[MAX_VISITOR_PASSES + 10] == (1, 0)
