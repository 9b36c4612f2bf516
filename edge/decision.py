"""The decision core: a pure function of (scan, temperature, state, knowledge, now).

No I/O, no clock reads, no randomness: the same inputs always give the same
decision, which is what lets `menwei gate replay` try a policy on recorded
traffic and what the property tests check. The imperative shell
(`edge.daemon`) measures, calls `decide`, stores the result and moves the relay.

Order of checks (the first that refuses decides):
1. the pass is genuine: parse (malformed), key (unknown_key), signature
   (bad_signature), site (wrong_site);
2. not revoked;
3. the clock can be trusted to check validity, else the guard confirms;
4. inside its validity window (not_yet_valid, expired);
5. data not older than the policy allows, else the guard confirms;
6. on the way in: temperature — none measured yet (pending: measure), no valid
   reading (no_temperature, guard decides), high (fever_recheck once, then fever).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from types import MappingProxyType
from typing import Literal

from edge.knowledge import Knowledge
from protocol.errors import PassError
from protocol.passes import PassPayload, from_unix, verify_pass

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
class GateState:
    """What the gate remembers between decisions (persisted by the shell)."""

    fever_pending: Mapping[int, datetime] = field(
        default_factory=lambda: MappingProxyType({})
    )  # pass id → time of its first high reading


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

    @property
    def decision(self) -> Literal["allow", "deny"]:
        return "allow" if self.outcome == "allow" else "deny"


FORGERY_REASONS = frozenset({"bad_signature", "unknown_key"})


def decide(
    scan: Scan, temperature: Temperature | None, state: GateState, know: Knowledge, now: Now
) -> Decision:
    """Decide on one scan. `temperature` None means not measured yet."""

    def deny(reason: str, rule: str, **kw: object) -> Decision:
        return Decision("deny", reason, rule, scan.direction, **kw)  # type: ignore[arg-type]

    try:
        p = verify_pass(scan.qr, know.site, dict(know.trust_keys))
    except PassError as exc:
        alert = "forged" if exc.reason in FORGERY_REASONS else None
        return deny(exc.reason, "pass", alert=alert)
    if p.pass_id in know.register.revoked:
        return deny("revoked", "revocation", pass_=p, alert="revoked")
    if not now.trusted:
        return deny("guard_confirm", "clock", pass_=p, guard_required=True)
    if now.utc < from_unix(p.valid_from):
        return deny("not_yet_valid", "validity", pass_=p)
    if now.utc >= from_unix(p.valid_until):
        return deny("expired", "validity", pass_=p)
    if data_too_old(know, now):
        return deny("guard_confirm", "data_age", pass_=p, guard_required=True)
    if scan.direction == "in":
        if temperature is None:
            return Decision("pending", "measure_temperature", "temperature", "in", p)
        t = temperature.body_c
        # NaN compares false with the threshold: a non-finite reading would pass silently.
        if t is None or not math.isfinite(t):
            return deny("no_temperature", "temperature", pass_=p, guard_required=True)
        if t >= know.policy.fever_threshold_c:
            first = state.fever_pending.get(p.pass_id)
            window = timedelta(seconds=know.policy.fever_recheck_window_s)
            if first is not None and now.utc - first <= window:
                return deny("fever", "fever", pass_=p, temperature_c=t, alert="fever")
            return deny("fever_recheck", "fever", pass_=p, temperature_c=t)
        return Decision("allow", "ok", "all", "in", p, temperature_c=t)
    return Decision("allow", "ok", "all", "out", p)


def data_too_old(know: Knowledge, now: Now) -> bool:
    limit = timedelta(hours=know.policy.max_data_age_h)
    issued = [t for t in (know.config_issued_at, know.register_issued_at) if t is not None]
    return any(now.utc - t > limit for t in issued)


def advance(state: GateState, decision: Decision, now: Now) -> GateState:
    """The state after `decision` has been carried out (pure)."""
    p = decision.pass_
    if p is None or decision.outcome == "pending":
        return state
    pending = dict(state.fever_pending)
    if decision.reason == "fever_recheck":
        pending[p.pass_id] = now.utc
    elif decision.reason in ("fever", "ok"):
        pending.pop(p.pass_id, None)
    window = timedelta(hours=1)  # forget stale first readings so the state stays small
    pending = {k: v for k, v in pending.items() if now.utc - v <= window}
    return replace(state, fever_pending=MappingProxyType(pending))


def state_to_json(state: GateState) -> dict[str, object]:
    return {"fever_pending": {str(k): v.isoformat() for k, v in state.fever_pending.items()}}


def state_from_json(data: dict[str, object] | None) -> GateState:
    if not data:
        return GateState()
    raw = data.get("fever_pending", {})
    pending = {int(k): datetime.fromisoformat(str(v)) for k, v in dict(raw).items()}  # type: ignore[call-overload]
    return GateState(MappingProxyType(pending))
