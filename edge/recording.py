"""What the gate records and shows for a decision: the event, the JSON line, the console line."""

from __future__ import annotations

import uuid
from dataclasses import replace
from typing import Any

from edge.decision import Decision, Now
from edge.knowledge import Knowledge
from protocol.events import Event
from protocol.passes import MAX_TEXT_LEN
from protocol.reasons import message


def decision_event(
    decision: Decision,
    *,
    site: str,
    gate: str,
    now: Now,
    know: Knowledge,
    detail: dict[str, Any],
    qr: str | None = None,
) -> Event:
    """The event for `decision`, still without its seq (the store assigns it)."""
    p = decision.pass_
    event = simple_event(
        "decision",
        decision.reason,
        site=site,
        gate=gate,
        now=now,
        know=know,
        decision=decision.decision,
        direction=decision.direction,
        pass_id=None if p is None else p.pass_id,
        household=None if p is None else p.household,
        temperature_c=decision.temperature_c,
        detail={
            "rule": decision.rule,
            "alert": decision.alert,
            "guard_required": decision.guard_required,
            "flags": list(decision.flags),
            # The scanned text (no personal data; at most 200 characters by the pass format's
            # limit) makes exported traffic replayable against another policy.
            "qr": None if qr is None else qr[:MAX_TEXT_LEN],
            **detail,
        },
    )
    return replace(event, role=None if p is None else p.role.label)


def simple_event(
    kind: str,
    reason: str,
    *,
    site: str,
    gate: str,
    now: Now,
    know: Knowledge,
    decision: str | None = None,
    direction: str | None = None,
    detail: dict[str, Any] | None = None,
    pass_id: int | None = None,
    household: str | None = None,
    temperature_c: float | None = None,
) -> Event:
    """Events that are not pass decisions: exit button, passage confirmed, alerts, devices."""
    return Event(
        site=site,
        gate=gate,
        seq=0,
        uuid=str(uuid.uuid4()),
        at=now.utc.isoformat(timespec="milliseconds"),
        clock_trusted=now.trusted,
        kind=kind,
        decision=decision,
        reason=reason,
        direction=direction,
        temperature_c=None if temperature_c is None else round(temperature_c, 2),
        pass_id=pass_id,
        household=household,
        role=None,
        versions=know.versions(),
        detail=detail or {},
    )


def decision_json(decision: Decision) -> dict[str, Any]:
    """The command-line shape of a decision (gate scan / replay)."""
    p = decision.pass_
    return {
        "decision": decision.decision,
        "reason": decision.reason,
        "message": message(decision.reason).as_dict(),
        "rule": decision.rule,
        "direction": decision.direction,
        "pass_id": None if p is None else p.pass_id,
        "household": None if p is None else p.household,
        "temperature_c": decision.temperature_c,
        "guard_required": decision.guard_required,
    }


def console_line(decision: Decision, know: Knowledge, language: str = "zh") -> str:
    """One line for the guard's console: big verdict, reason, masked name and room."""
    p = decision.pass_
    who = ""
    if p is not None:
        entry = know.register.passes.get(p.pass_id)
        who = f" {entry.display_name} {entry.room}" if entry else f" {p.household}"
    msg = message(decision.reason)
    verdict = {"allow": "通行 PASS", "deny": "拒绝 STOP"}[decision.decision]
    verdict += {"in": " 进 IN", "out": " 出 OUT"}[decision.direction]
    temp = f" {decision.temperature_c:.1f}°C" if decision.temperature_c is not None else ""
    return f"[{verdict}]{who}{temp} — {msg.zh if language == 'zh' else msg.en} ({decision.reason})"
