"""The decision core: each reason in its order, then properties over random scan sequences."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from types import MappingProxyType

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from hypothesis import given, settings
from hypothesis import strategies as st

from edge.decision import (
    Decision,
    GateState,
    Now,
    Scan,
    Temperature,
    Verified,
    advance,
    decide,
    state_from_json,
    state_to_json,
)
from edge.knowledge import Knowledge
from protocol.passes import PassPayload, Role, TrustKey, public_bytes, sign_pass, unix
from protocol.policy import Policy
from protocol.register import PassEntry, Register

SITE = "test-site"
KEY = Ed25519PrivateKey.generate()
FORGER = Ed25519PrivateKey.generate()
STRANGER = Ed25519PrivateKey.generate()  # a key another site trusts, id 9 here
TRUST = MappingProxyType({1: TrustKey(1, public_bytes(KEY))})
T0 = datetime(2026, 11, 29, 8, 0, tzinfo=UTC)
POLICY = Policy(fever_threshold_c=37.3, fever_recheck_window_s=300, max_data_age_h=24.0)
REVOKED_ID = 7
TRUSTED = Now(T0, True)
NORMAL = Temperature(36.6)
HIGH = Temperature(38.0)


def qr(
    pass_id: int = 1,
    *,
    key: Ed25519PrivateKey = KEY,
    key_id: int = 1,
    site: str = SITE,
    start: datetime = T0 - timedelta(days=10),
    end: datetime = T0 + timedelta(days=30),
) -> str:
    payload = PassPayload(
        key_id, pass_id, site, f"hh-{pass_id}", Role.RESIDENT, unix(start), unix(end)
    )
    return sign_pass(payload, key)


def knowledge(
    policy: Policy = POLICY, issued: datetime | None = T0 - timedelta(hours=1)
) -> Knowledge:
    register = Register(
        {i: PassEntry(i, f"hh-{i}", "张*丰", "1-1-101", "resident") for i in range(1, 6)},
        {REVOKED_ID: "lost", 8: "moved out"},
    )
    return Knowledge(SITE, TRUST, policy, register, 3, 9, issued, issued)


KNOW = knowledge()
VALID = qr(1)


def decide_in(
    text: str,
    temperature: Temperature | None = NORMAL,
    *,
    state: GateState = GateState(),  # noqa: B008 - frozen value
    now: Now = TRUSTED,
    know: Knowledge = KNOW,
    direction: str = "in",
) -> Decision:
    return decide(Scan(text, direction), temperature, state, know, now)  # type: ignore[arg-type]


def pass_of(d: Decision) -> PassPayload:
    assert d.pass_ is not None, f"{d.reason} decision without its pass"
    return d.pass_


# --- each reason, in the order the core checks them --------------------------------------


def test_valid_pass_with_normal_temperature_is_allowed():
    d = decide_in(VALID)
    assert (d.outcome, d.reason, d.decision, d.direction) == ("allow", "ok", "allow", "in")
    assert (pass_of(d).pass_id, pass_of(d).household, d.temperature_c) == (1, "hh-1", 36.6)
    assert (d.alert, d.guard_required) == (None, False)


@pytest.mark.parametrize("text", ["", "hello", "MW1:", "MW1:%%%", VALID[:-1], VALID + "0"])
def test_malformed(text):
    d = decide_in(text, now=Now(T0, False))  # malformed wins over everything after it
    assert (d.outcome, d.reason, d.rule, d.pass_, d.alert) == (
        "deny",
        "malformed",
        "pass",
        None,
        None,
    )


def test_unknown_key_is_a_forgery_alert():
    d = decide_in(qr(REVOKED_ID, key=STRANGER, key_id=9), now=Now(T0, False))
    assert (d.outcome, d.reason, d.alert, d.pass_) == ("deny", "unknown_key", "forged", None)


def test_bad_signature_is_a_forgery_alert():
    # Forges a revoked, expired pass for another site: the forgery is what gets reported.
    text = qr(REVOKED_ID, key=FORGER, site="other-site", end=T0 - timedelta(days=1))
    d = decide_in(text, now=Now(T0, False))
    assert (d.outcome, d.reason, d.alert, d.pass_) == ("deny", "bad_signature", "forged", None)


def test_wrong_site():
    d = decide_in(qr(REVOKED_ID, site="other-site"), now=Now(T0, False))
    assert (d.outcome, d.reason, d.alert) == ("deny", "wrong_site", None)


def test_revoked_wins_over_clock_and_validity():
    text = qr(REVOKED_ID, end=T0 - timedelta(days=1))
    d = decide_in(text, now=Now(T0, False), know=knowledge(issued=T0 - timedelta(days=9)))
    assert (d.outcome, d.reason, d.rule, d.alert) == ("deny", "revoked", "revocation", "revoked")
    assert pass_of(d).pass_id == REVOKED_ID


@pytest.mark.parametrize("direction", ["in", "out"])
def test_untrusted_clock_means_the_guard_confirms(direction):
    text = qr(1, end=T0 - timedelta(days=1))  # expired, but the clock cannot tell
    d = decide_in(text, now=Now(T0, False), direction=direction)
    assert (d.outcome, d.reason, d.rule, d.guard_required) == (
        "deny",
        "guard_confirm",
        "clock",
        True,
    )


def test_not_yet_valid():
    d = decide_in(qr(1, start=T0 + timedelta(seconds=1)), know=knowledge(issued=None))
    assert (d.outcome, d.reason, d.rule) == ("deny", "not_yet_valid", "validity")
    assert decide_in(qr(1, start=T0)).reason == "ok"  # valid_from is inclusive


def test_expired():
    d = decide_in(qr(1, end=T0), know=knowledge(issued=T0 - timedelta(days=9)))
    assert (d.outcome, d.reason, d.rule) == ("deny", "expired", "validity")
    assert decide_in(qr(1, end=T0 + timedelta(seconds=1))).reason == "ok"  # until is exclusive


def test_data_too_old_means_the_guard_confirms():
    old = knowledge(issued=T0 - timedelta(hours=24, seconds=1))
    d = decide_in(VALID, None, know=old, direction="out")
    assert (d.outcome, d.reason, d.rule, d.guard_required) == (
        "deny",
        "guard_confirm",
        "data_age",
        True,
    )
    assert decide_in(VALID, know=knowledge(issued=T0 - timedelta(hours=24))).reason == "ok"
    # Each document's age counts: an old register with a fresh config is still old.
    mixed = Knowledge(SITE, TRUST, POLICY, KNOW.register, 3, 9, T0, T0 - timedelta(days=2))
    assert decide_in(VALID, know=mixed).reason == "guard_confirm"


def test_entry_without_a_measurement_yet_is_pending():
    d = decide_in(VALID, None)
    assert (d.outcome, d.reason, d.decision, pass_of(d).pass_id) == (
        "pending",
        "measure_temperature",
        "deny",
        1,
    )


def test_the_pending_decision_carries_the_verified_pass_for_the_second_decide():
    pending = decide_in(VALID, None)
    assert pending.verified == Verified(VALID, pass_of(pending), TRUST[1])
    again = decide(Scan(VALID, "in"), NORMAL, GateState(), KNOW, TRUSTED, verified=pending.verified)
    assert again == decide_in(VALID) and again.reason == "ok"
    assert again.verified == pending.verified  # a fever re-measure reuses it too


def test_a_verified_pass_is_not_verified_again_while_it_holds():
    # Proof that the signature is not checked again: a Verified made up for a forged text
    # is taken as it is (the shell only passes what decide itself returned).
    forged = qr(1, key=FORGER)
    assert decide_in(forged).reason == "bad_signature"
    made_up = Verified(forged, pass_of(decide_in(VALID)), TRUST[1])
    assert (
        decide(Scan(forged, "in"), NORMAL, GateState(), KNOW, TRUSTED, verified=made_up).reason
        == "ok"
    )


def test_a_verified_pass_is_checked_again_when_it_no_longer_holds():
    pending = decide_in(VALID, None)
    assert pending.verified is not None

    def again(text: str, know: Knowledge) -> str:
        scan = Scan(text, "in")
        return decide(scan, NORMAL, GateState(), know, TRUSTED, verified=pending.verified).reason

    other_key = TrustKey(1, public_bytes(STRANGER))  # key 1 replaced meanwhile
    replaced = Knowledge(SITE, {1: other_key}, POLICY, KNOW.register, 3, 9, T0, T0)
    assert again(VALID, replaced) == "bad_signature"
    retired = Knowledge(SITE, {}, POLICY, KNOW.register, 3, 9, T0, T0)
    assert again(VALID, retired) == "unknown_key"
    assert again(qr(2, key=FORGER), KNOW) == "bad_signature"  # another text: its own check
    # The rest is decided anew: a revocation that arrived during the measurement counts.
    register = Register(KNOW.register.passes, {1: "lost"})
    revoked = Knowledge(SITE, TRUST, POLICY, register, 3, 9, T0, T0)
    assert again(VALID, revoked) == "revoked"


@pytest.mark.parametrize(
    "temperature",
    [
        Temperature(None, "no steady reading"),
        Temperature(None),
        Temperature(math.nan),
        Temperature(math.inf),
        Temperature(-math.inf),
    ],
)
def test_no_valid_temperature_goes_to_the_guard(temperature):
    d = decide_in(VALID, temperature)
    assert (d.outcome, d.reason, d.guard_required) == ("deny", "no_temperature", True)


def test_fever_recheck_then_fever_within_the_window():
    first = decide_in(VALID, HIGH)
    assert (first.outcome, first.reason, first.alert, first.temperature_c) == (
        "deny",
        "fever_recheck",
        None,
        38.0,
    )
    state = advance(GateState(), first, TRUSTED)
    assert dict(state.fever_pending) == {1: T0}

    for later in (timedelta(seconds=1), timedelta(seconds=300)):  # the window is inclusive
        second = decide_in(VALID, Temperature(37.3), state=state, now=Now(T0 + later, True))
        assert (second.outcome, second.reason, second.alert) == ("deny", "fever", "fever")
        assert dict(advance(state, second, Now(T0 + later, True)).fever_pending) == {}


def test_fever_recheck_again_after_the_window_has_passed():
    state = advance(GateState(), decide_in(VALID, HIGH), TRUSTED)
    later = Now(T0 + timedelta(seconds=301), True)

    d = decide_in(VALID, HIGH, state=state, now=later)

    assert d.reason == "fever_recheck"
    assert dict(advance(state, d, later).fever_pending) == {1: later.utc}  # a new first reading


def test_a_high_reading_of_another_pass_does_not_count():
    state = advance(GateState(), decide_in(qr(2), HIGH), TRUSTED)
    assert decide_in(VALID, HIGH, state=state).reason == "fever_recheck"


def test_normal_temperature_allows_and_clears_the_pending_reading():
    state = advance(GateState(), decide_in(VALID, HIGH), TRUSTED)
    later = Now(T0 + timedelta(seconds=30), True)

    d = decide_in(VALID, Temperature(37.2), state=state, now=later)
    after = advance(state, d, later)

    assert (d.outcome, d.reason) == ("allow", "ok")
    assert dict(after.fever_pending) == {}
    assert decide_in(VALID, HIGH, state=after, now=later).reason == "fever_recheck"


@pytest.mark.parametrize("temperature", [None, Temperature(None), HIGH, Temperature(math.nan)])
def test_exit_needs_no_temperature(temperature):
    d = decide_in(VALID, temperature, direction="out")
    assert (d.outcome, d.reason, d.direction, d.temperature_c) == ("allow", "ok", "out", None)


def test_pending_and_passless_decisions_leave_the_state_alone():
    state = advance(GateState(), decide_in(VALID, HIGH), TRUSTED)
    for d in (decide_in(qr(2), None), decide_in("garbage")):
        assert advance(state, d, Now(T0 + timedelta(seconds=5), True)) is state


def test_advance_forgets_first_readings_older_than_an_hour():
    state = GateState()
    for pass_id in range(10, 110):
        state = advance(state, decide_in(qr(pass_id), HIGH), TRUSTED)
    assert len(state.fever_pending) == 100

    later = Now(T0 + timedelta(hours=1, seconds=1), True)
    state = advance(state, decide_in(VALID, HIGH, state=state, now=later), later)

    assert dict(state.fever_pending) == {1: later.utc}


# --- state persistence ------------------------------------------------------------------

AWARE_TIMES = st.datetimes(
    min_value=datetime(2020, 1, 1), max_value=datetime(2100, 1, 1), timezones=st.just(UTC)
)


@given(st.dictionaries(st.integers(0, 2**32 - 1), AWARE_TIMES, max_size=20))
def test_state_json_round_trip(pending):
    state = GateState(MappingProxyType(pending))
    stored = json.loads(json.dumps(state_to_json(state)))
    assert dict(state_from_json(stored).fever_pending) == pending


@pytest.mark.parametrize("data", [None, {}, {"fever_pending": {}}])
def test_empty_state_from_json(data):
    assert dict(state_from_json(data).fever_pending) == {}


# --- properties over random sequences of scans --------------------------------------------


@dataclass(frozen=True)
class Card:
    kind: str
    text: str


CARDS = (
    Card("valid", qr(1)),
    Card("valid", qr(2)),
    Card("valid", qr(3)),
    Card("revoked", qr(REVOKED_ID)),
    Card("revoked", qr(8, end=T0 + timedelta(hours=2))),  # revoked and soon expired
    Card("expires", qr(4, end=T0 + timedelta(hours=3))),
    Card("starts", qr(5, start=T0 + timedelta(hours=1))),
    Card("forged", qr(1, key=FORGER)),  # a copy of a valid pass id, signed by someone else
    Card("forged", qr(9, key=STRANGER, key_id=9)),
    Card("forged", qr(2, site="other-site")),
    Card("forged", VALID[:-3] + "000"),
    Card("forged", "MW1:not a pass"),
)
FORGED_REASONS = {"malformed", "bad_signature", "unknown_key", "wrong_site"}

TEMPERATURES = st.one_of(
    st.none(),
    st.just(Temperature(None, "no steady reading")),
    st.builds(Temperature, st.floats(35.0, 39.5)),
    st.builds(Temperature, st.sampled_from([37.3, math.nan, math.inf, -math.inf, 0.0])),
)

STEP = st.tuples(
    st.integers(0, len(CARDS) - 1),
    st.sampled_from(["in", "out"]),
    TEMPERATURES,
    st.integers(0, 900),  # seconds since the previous scan: times never go back
    st.booleans() | st.just(True),  # the clock is trusted (mostly)
)


@dataclass(frozen=True)
class Step:
    card: Card
    scan: Scan
    temperature: Temperature | None
    state: GateState
    now: Now
    decision: Decision


def run(steps: list[tuple[int, str, Temperature | None, int, bool]], know: Knowledge) -> list[Step]:
    state, t, out = GateState(), T0, []
    for card_index, direction, temperature, dt, trusted in steps:
        t += timedelta(seconds=dt)
        now, card = Now(t, trusted), CARDS[card_index]
        scan = Scan(card.text, direction)  # type: ignore[arg-type]
        d = decide(scan, temperature, state, know, now)
        out.append(Step(card, scan, temperature, state, now, d))
        state = advance(state, d, now)
    return out


SEQUENCES = st.lists(STEP, min_size=1, max_size=40)
KNOWLEDGES = st.sampled_from(
    [
        KNOW,
        knowledge(Policy(fever_threshold_c=37.5, fever_recheck_window_s=60, max_data_age_h=1.0)),
        knowledge(Policy(fever_threshold_c=37.0, fever_recheck_window_s=3600), issued=None),
    ]
)


@settings(max_examples=150)
@given(SEQUENCES, KNOWLEDGES)
def test_decide_is_deterministic_and_keeps_no_hidden_state(steps, know):
    history = run(steps, know)

    assert [s.decision for s in run(steps, know)] == [s.decision for s in history]
    # Asking again, in reverse order and out of the sequence, gives the same answers.
    for s in reversed(history):
        assert decide(s.scan, s.temperature, s.state, know, s.now) == s.decision


@settings(max_examples=300)
@given(SEQUENCES, KNOWLEDGES)
def test_safety_properties(steps, know):
    threshold = know.policy.fever_threshold_c
    window = timedelta(seconds=know.policy.fever_recheck_window_s)
    last_recheck: dict[int, datetime] = {}  # pass id → its open first high reading
    for s in run(steps, know):
        d = s.decision
        if s.card.kind == "revoked":
            assert (d.outcome, d.reason) == ("deny", "revoked")
        if s.card.kind == "forged":
            assert d.outcome == "deny" and d.reason in FORGED_REASONS and d.pass_ is None
        if not s.now.trusted:
            assert d.outcome == "deny"
        if d.outcome == "allow" and s.scan.direction == "in":
            assert s.temperature is not None and s.temperature.body_c is not None
            assert math.isfinite(s.temperature.body_c) and s.temperature.body_c < threshold
            assert d.temperature_c == s.temperature.body_c
        if d.outcome == "allow":
            assert d.pass_ is not None and s.now.trusted
            assert unix(s.now.utc) in range(d.pass_.valid_from, d.pass_.valid_until)
        if d.reason == "fever":
            first = last_recheck.get(pass_of(d).pass_id)
            assert first is not None, "fever without an earlier fever_recheck"
            assert timedelta(0) <= s.now.utc - first <= window
        if d.pass_ is not None and d.reason == "fever_recheck":
            last_recheck[d.pass_.pass_id] = s.now.utc
        elif d.pass_ is not None and d.reason in ("fever", "ok"):
            last_recheck.pop(d.pass_.pass_id, None)


@given(SEQUENCES)
def test_state_stays_small(steps):
    rechecked: set[int] = set()
    for s in run(steps, KNOW):
        after = advance(s.state, s.decision, s.now)
        d = s.decision
        if d.reason == "fever_recheck":
            rechecked.add(pass_of(d).pass_id)
        if d.pass_ is None or d.outcome == "pending":
            assert after is s.state
        else:  # every carried-out pass decision forgets first readings older than an hour
            assert all(s.now.utc - t <= timedelta(hours=1) for t in after.fever_pending.values())
        assert set(after.fever_pending) <= rechecked
        assert state_from_json(json.loads(json.dumps(state_to_json(after)))) == after
