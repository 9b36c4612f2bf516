"""The decision core: a pure function of (scan, temperature, state, knowledge, now).

No I/O, no clock reads, no randomness: the same inputs always give the same
decision, which is what lets `menwei gate replay` try a policy on recorded
traffic and what the property tests check. The imperative shell
(`edge.daemon`) measures, calls `decide`, stores the result and moves the relay.

Order of checks (the first that refuses decides; docs/policy.md explains them):
1. the pass is genuine: parse (malformed), key (unknown_key), signature
   (bad_signature), site (wrong_site);
2. not revoked;
3. the clock can be trusted for time-dependent rules, else the guard confirms;
4. inside its validity window (not_yet_valid, expired);
5. data not older than the policy allows, else the guard confirms;
6. coming in: temperature — none measured yet (pending), no valid reading
   (no_temperature), high (fever_recheck once, then fever, or fever_soft);
   a visitor pass once (visitor_used). Entries are otherwise always allowed;
7. going out: quarantine, anti-passback, a visitor pass once, outing windows and
   day scheme, household members out at once, household exits per day. Staff
   and visitors are exempt from windows and household quotas.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from types import MappingProxyType
from typing import Any, Literal

from edge.knowledge import Knowledge
from protocol.errors import PassError
from protocol.passes import PassPayload, Role, TrustKey, from_unix, verify_pass
from protocol.policy import Policy
from protocol.temperature import plausible_body

DEFAULT_POLICY = Policy()

Direction = Literal["in", "out"]
Outcome = Literal["allow", "deny", "pending"]


@dataclass(frozen=True)
class Scan:
    qr: str
    direction: Direction


@dataclass(frozen=True)
class Temperature:
    """A screening result: `body_c` is None when no valid reading could be had."""

    body_c: float | None
    error: str | None = None


@dataclass(frozen=True)
class Now:
    utc: datetime  # timezone-aware
    trusted: bool  # the clock is known to be synchronised


@dataclass(frozen=True)
class Outside:
    """A pass that is out: its household, since when, and its role."""

    household: str
    since: datetime
    role: str = "resident"


def _empty() -> Mapping[Any, Any]:
    return MappingProxyType({})


@dataclass(frozen=True)
class GateState:
    """What the gate remembers between decisions (persisted by the shell)."""

    fever_pending: Mapping[int, datetime] = field(default_factory=_empty)
    """pass id → time of its first high reading."""
    outside: Mapping[int, Outside] = field(default_factory=_empty)
    """pass id → who is out (this gate's decisions and other gates' relayed passages)."""
    exits: Mapping[str, tuple[str, tuple[str, ...]]] = field(default_factory=_empty)
    """household → (counting day, uuids of its exits that day): idempotent under resends."""
    visitor_uses: Mapping[int, tuple[int, int]] = field(default_factory=_empty)
    """visitor pass id → (entries, exits) used."""
    last_in: Mapping[int, datetime] = field(default_factory=_empty)
    """pass id → its latest entry since the last auto-return, so that an exit relayed late
    (an offline gate syncing, a duplicate) never puts a pass that came back in out again."""


@dataclass(frozen=True)
class Verified:
    """A QR text that `verify_pass` accepted: its pass and the trust key that signed it.

    A decision carries it (`Decision.verified`) so that deciding the same scan again (with
    the temperature measured meanwhile, a re-measure) does not verify the Ed25519 signature
    again: `decide(..., verified=...)` uses it while the key is still trusted for the site.
    """

    qr: str
    pass_: PassPayload
    key: TrustKey

    def holds(self, qr: str, know: Knowledge) -> bool:
        """Still proof for `qr` under `know`: same text, same site, its key still trusted."""
        return (
            qr == self.qr
            and self.pass_.site == know.site
            and know.trust_keys.get(self.key.key_id) == self.key
        )


@dataclass(frozen=True)
class Decision:
    outcome: Outcome
    reason: str
    rule: str  # which rule decided, for the decision trace
    direction: Direction
    pass_: PassPayload | None = None
    temperature_c: float | None = None
    alert: str | None = None  # "fever", "forged", "revoked": raise an operator alert
    guard_required: bool = False  # the guard must look at this person
    flags: tuple[str, ...] = ()  # soft rules that would have refused ("anti_passback")
    verified: Verified | None = field(default=None, compare=False, repr=False)
    """The verified pass, for deciding this scan again without verifying it again (not part
    of what was decided: decisions compare equal without it)."""

    @property
    def decision(self) -> Literal["allow", "deny"]:
        return "allow" if self.outcome == "allow" else "deny"


FORGERY_REASONS = frozenset({"bad_signature", "unknown_key"})


QUOTA_EXEMPT = frozenset({Role.STAFF, Role.VISITOR})
MAX_VISITOR_PASSES = 5000  # remembered visitor passes (a compound's ~100 a day: ~50 days)


def decide(
    scan: Scan,
    temperature: Temperature | None,
    state: GateState,
    know: Knowledge,
    now: Now,
    *,
    verified: Verified | None = None,
) -> Decision:
    """Decide on one scan. `temperature` None means not measured yet.

    `verified`: `Decision.verified` of an earlier decision on the same scan (pending, or a
    fever re-measure); while it `holds`, the signature is not verified again (the rest is
    decided anew: revocation, time, data age, temperature and state may have changed)."""
    try:
        if verified is None or not verified.holds(scan.qr, know):
            verified = verify_scan(scan.qr, know)
    except PassError as exc:
        alert = "forged" if exc.reason in FORGERY_REASONS else None
        return Decision("deny", exc.reason, "pass", scan.direction, alert=alert)
    decision = _decide_verified(scan, verified.pass_, temperature, state, know, now)
    return replace(decision, verified=verified)


def verify_scan(qr: str, know: Knowledge) -> Verified:
    """Verify a QR text as a pass of `know`'s site (`verify_pass`); raises PassError."""
    p = verify_pass(qr, know.site, dict(know.trust_keys))
    return Verified(qr, p, know.trust_keys[p.key_id])


def _decide_verified(
    scan: Scan,
    p: PassPayload,
    temperature: Temperature | None,
    state: GateState,
    know: Knowledge,
    now: Now,
) -> Decision:
    def deny(reason: str, rule: str, **kw: Any) -> Decision:
        return Decision("deny", reason, rule, scan.direction, **kw)

    if p.pass_id in know.register.revoked:
        return deny("revoked", "revocation", pass_=p, alert="revoked")
    if not now.trusted:
        return deny("guard_confirm", "clock", pass_=p, guard_required=True)
    if now.utc < from_unix(p.valid_from):
        return deny("not_yet_valid", "validity", pass_=p)
    if now.utc >= from_unix(p.valid_until):
        return deny("expired", "validity", pass_=p)
    if know.missing():
        # No config or register it trusts (withdrawn when the trust root dropped the key that
        # signed it): no policy, no revocations to decide alone with.
        return deny("guard_confirm", "documents", pass_=p, guard_required=True)
    if data_too_old(know, now):
        return deny("guard_confirm", "data_age", pass_=p, guard_required=True)
    if scan.direction == "in":
        return _entry(p, temperature, state, know.policy, now, deny)
    return _exit(p, state, know, now, deny)


def _entry(
    p: PassPayload,
    temperature: Temperature | None,
    state: GateState,
    policy: Policy,
    now: Now,
    deny: Callable[..., Decision],
) -> Decision:
    if temperature is None:
        return Decision("pending", "measure_temperature", "temperature", "in", p)
    t = temperature.body_c
    if t is None or not plausible_body(t):
        # No reading, or one no living person has (the sensor saw a wall or a hot drink):
        # never a silent pass, the guard decides.
        return deny("no_temperature", "temperature", pass_=p, guard_required=True)
    fever = None
    if t >= policy.fever_threshold_c:
        first = state.fever_pending.get(p.pass_id)
        window = timedelta(seconds=policy.fever_recheck_window_s)
        if first is None or not timedelta(0) <= now.utc - first <= window:
            return deny("fever_recheck", "fever", pass_=p, temperature_c=t)
        if policy.fever_mode == "hard":
            return deny("fever", "fever", pass_=p, temperature_c=t, alert="fever")
        fever = "fever"
    if p.role == Role.VISITOR and state.visitor_uses.get(p.pass_id, (0, 0))[0] >= 1:
        return deny("visitor_used", "visitor", pass_=p, temperature_c=t)
    if fever is not None:
        return Decision("allow", "fever_soft", "fever", "in", p, temperature_c=t, alert=fever)
    return Decision("allow", "ok", "all", "in", p, temperature_c=t)


def _exit(
    p: PassPayload, state: GateState, know: Knowledge, now: Now, deny: Callable[..., Decision]
) -> Decision:
    policy = know.policy
    if know.register.quarantined(p.household, now.utc):
        return deny("quarantined", "quarantine", pass_=p)
    flags: list[str] = []
    outside = outside_now(state, policy, now)
    if p.pass_id in outside and policy.anti_passback != "off":
        if policy.anti_passback == "hard":
            return deny("anti_passback", "anti_passback", pass_=p)
        flags.append("anti_passback")
    if p.role == Role.VISITOR and state.visitor_uses.get(p.pass_id, (0, 0))[1] >= 1:
        return deny("visitor_used", "visitor", pass_=p)
    if p.role not in QUOTA_EXEMPT:
        if not policy.may_go_out(now.utc, p.household):
            return deny("outside_window", "window", pass_=p)
        members_out = sum(
            1
            for pid, o in outside.items()
            if o.household == p.household and pid != p.pass_id and o.role == "resident"
        )
        if policy.household_max_out and members_out >= policy.household_max_out:
            return deny("household_out_limit", "household_quota", pass_=p)
        if policy.household_max_exits_per_day and (
            exits_today(state, policy, p.household, now) >= policy.household_max_exits_per_day
        ):
            return deny("daily_exit_limit", "daily_quota", pass_=p)
    return Decision("allow", "ok", "all", "out", p, flags=tuple(flags))


def outside_now(state: GateState, policy: Policy, now: Now) -> dict[int, Outside]:
    """Who is out at `now`: nobody stays out across an auto-return (missed scans heal)."""
    boundary = policy.last_auto_return(now.utc)
    return {k: o for k, o in state.outside.items() if o.since >= boundary}


def exits_today(state: GateState, policy: Policy, household: str, now: Now) -> int:
    day, uuids = state.exits.get(household, ("", ()))
    return len(uuids) if day == policy.day_of(now.utc).isoformat() else 0


def data_too_old(know: Knowledge, now: Now) -> bool:
    """Was what the gate decides with last proven current longer ago than max_data_age_h?
    (Knowledge.fresh_as_of: the newest freshness statement, else the documents' issue.)"""
    as_of = know.fresh_as_of()
    return as_of is not None and now.utc - as_of > timedelta(hours=know.policy.max_data_age_h)


def advance(
    state: GateState,
    decision: Decision,
    now: Now,
    *,
    policy: Policy = DEFAULT_POLICY,
    uuid: str = "",
) -> GateState:
    """The state after `decision` has been carried out (pure). `uuid` identifies the event
    (daily exits are counted by event, so a passage relayed back is never counted twice)."""
    p = decision.pass_
    if p is None or decision.outcome == "pending":
        return state
    pending = dict(state.fever_pending)
    if decision.reason == "fever_recheck":
        pending[p.pass_id] = now.utc
    elif decision.reason in ("fever", "fever_soft", "ok"):
        pending.pop(p.pass_id, None)
    window = timedelta(hours=1)  # forget stale first readings so the state stays small
    pending = {k: v for k, v in pending.items() if now.utc - v <= window}
    state = replace(state, fever_pending=MappingProxyType(pending))
    return count_passage(state, decision, now, policy=policy, uuid=uuid)


def count_passage(
    state: GateState, decision: Decision, now: Now, *, policy: Policy, uuid: str = ""
) -> GateState:
    """Count `decision` if it let a pass through (pure; any other decision changes nothing):
    at the gate that decided (`advance`), and where a relayed passage is replayed."""
    p = decision.pass_
    if p is None or decision.outcome != "allow":
        return state
    return record_passage(
        state,
        policy,
        pass_id=p.pass_id,
        household=p.household,
        role=p.role.label,
        direction=decision.direction,
        at=now.utc,
        uuid=uuid or f"{p.pass_id}@{now.utc.isoformat()}",
    )


def record_passage(
    state: GateState,
    policy: Policy,
    *,
    pass_id: int,
    household: str,
    role: str,
    direction: str,
    at: datetime,
    uuid: str,
) -> GateState:
    """Count an accepted passage, of this gate or relayed from another (pure, idempotent)."""
    boundary = policy.last_auto_return(at)
    outside = {k: o for k, o in state.outside.items() if o.since >= boundary}
    last_in = {k: t for k, t in state.last_in.items() if t >= boundary}
    exits = dict(state.exits)
    visitors = dict(state.visitor_uses)
    current = outside.get(pass_id)
    came_in = last_in.get(pass_id)
    if direction == "out":
        # Passages may arrive out of time order (relayed late): only a newer exit than what
        # is known about the pass puts it out.
        if (current is None or current.since <= at) and (came_in is None or came_in <= at):
            outside[pass_id] = Outside(household, at, role)
        if role == "resident":
            day = policy.day_of(at).isoformat()
            held_day, uuids = exits.get(household, (day, ()))
            if day > held_day:
                held_day, uuids = day, ()
            if day == held_day and uuid not in uuids:  # an older day's exit is not today's
                exits[household] = (day, (*uuids, uuid))
    else:
        if current is not None and current.since <= at:
            del outside[pass_id]
        if came_in is None or came_in < at:
            last_in[pass_id] = at
    if role == "visitor":
        ins, outs = visitors.get(pass_id, (0, 0))
        visitors[pass_id] = (ins + (direction == "in"), outs + (direction == "out"))
        # Bounded over months: the oldest visitor passes (hours-long, expired long ago) go.
        for old in list(visitors)[: max(0, len(visitors) - MAX_VISITOR_PASSES)]:
            del visitors[old]
    today = policy.day_of(at).isoformat()
    exits = {h: v for h, v in exits.items() if v[0] >= today}
    return replace(
        state,
        outside=MappingProxyType(outside),
        exits=MappingProxyType(exits),
        visitor_uses=MappingProxyType(visitors),
        last_in=MappingProxyType(last_in),
    )


def state_to_json(state: GateState) -> dict[str, Any]:
    return {
        "fever_pending": {str(k): v.isoformat() for k, v in state.fever_pending.items()},
        "outside": {
            str(k): [o.household, o.since.isoformat(), o.role] for k, o in state.outside.items()
        },
        "exits": {h: [day, list(uuids)] for h, (day, uuids) in state.exits.items()},
        "visitor_uses": {str(k): list(v) for k, v in state.visitor_uses.items()},
        "last_in": {str(k): v.isoformat() for k, v in state.last_in.items()},
    }


def state_from_json(data: Mapping[str, Any] | None) -> GateState:
    if not data:
        return GateState()
    return GateState(
        MappingProxyType(
            {int(k): datetime.fromisoformat(v) for k, v in data.get("fever_pending", {}).items()}
        ),
        MappingProxyType(
            {
                int(k): Outside(h, datetime.fromisoformat(t), role)
                for k, (h, t, role) in data.get("outside", {}).items()
            }
        ),
        MappingProxyType(
            {h: (str(day), tuple(uuids)) for h, (day, uuids) in data.get("exits", {}).items()}
        ),
        MappingProxyType(
            {int(k): (int(a), int(b)) for k, (a, b) in data.get("visitor_uses", {}).items()}
        ),
        MappingProxyType(
            {int(k): datetime.fromisoformat(v) for k, v in data.get("last_in", {}).items()}
        ),
    )
