"""`menwei gate replay`: the real decision core over scripted or exported traffic.

Input lines are `{"at", "qr", "direction", "temperature"}` or events as
`menwei server export` writes them (the scanned text is in `detail.qr`, the
temperature in `temperature_c`); exported events that are not pass decisions
(alerts, device events, passages confirmed by the door) are skipped. The state
is a scratch copy: nothing is written back to the gate.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, replace
from datetime import datetime
from pathlib import Path
from typing import Any

from edge.decision import GateState, Now, Scan, Temperature, advance, decide
from edge.knowledge import Knowledge
from edge.recording import decision_json
from protocol.errors import ProtocolError
from protocol.files import read_bounded
from protocol.policy import Policy
from protocol.reasons import message
from protocol.schema import parse_toml

NOT_MEASURED = Temperature(None, "not measured")


class Skip(Exception):
    """An exported event that is not a pass decision: not replayed."""


@dataclass(frozen=True)
class ReplayItem:
    at: datetime
    raw_at: str
    qr: str
    direction: str
    temperature: Temperature


def load_policy_file(path: Path) -> Policy:
    """A policy to try: a TOML file with a [policy] table (as in server.toml) or bare keys."""
    try:
        data = parse_toml(read_bounded(path, "config"), str(path))
    except OSError as exc:
        raise ProtocolError(f"{path}: cannot read: {exc.strerror}") from None
    table = data.get("policy", data) if isinstance(data.get("policy"), dict) else data
    return Policy.from_json(table, f"{path} [policy]")


def parse_line(line: str) -> ReplayItem:
    item = json.loads(line)
    if not isinstance(item, dict):
        raise ValueError("each line must be a JSON object")
    return parse_item(item)


def parse_item(item: Mapping[str, Any]) -> ReplayItem:
    """A scripted scan or an exported event (a JSON object). Raises Skip for events that
    are not pass decisions, ValueError/KeyError/TypeError for unusable ones."""
    if "kind" in item and item["kind"] != "decision":
        raise Skip()
    at = datetime.fromisoformat(str(item["at"]))
    if at.tzinfo is None:
        raise ValueError("'at' needs a UTC offset, e.g. 2026-11-29T08:00:00+08:00")
    direction = item.get("direction") or "in"
    if direction not in ("in", "out"):
        raise ValueError("direction must be 'in' or 'out'")
    qr = item.get("qr")
    if qr is None and isinstance(item.get("detail"), dict):
        qr = item["detail"].get("qr")
    if not isinstance(qr, str):
        raise ValueError("no scanned text: need 'qr' (or detail.qr of an exported event)")
    t = item.get("temperature", item.get("temperature_c"))
    temperature = NOT_MEASURED if t is None else Temperature(float(t))
    return ReplayItem(at, str(item["at"]), qr, direction, temperature)


def replay(lines: Iterable[str], state: GateState, know: Knowledge) -> Iterator[dict[str, Any]]:
    """One output object per input line that is not blank or skipped."""
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            item = parse_line(line)
        except Skip:
            continue
        except (ValueError, KeyError, TypeError) as exc:
            yield {
                "line": number,
                "at": None,
                "decision": "deny",
                "reason": "bad_input",
                "message": message("bad_input").as_dict(),
                "error": str(exc),
            }
            continue
        now = Now(item.at, True)
        decision = decide(Scan(item.qr, item.direction), item.temperature, state, know, now)  # type: ignore[arg-type]
        state = advance(state, decision, now, policy=know.policy)
        yield {"line": number, "at": item.raw_at, **decision_json(decision)}


def with_policy(know: Knowledge, policy: Policy | None) -> Knowledge:
    return know if policy is None else replace(know, policy=policy)


def summarize(results: Iterable[dict[str, Any]]) -> dict[str, Any]:
    reasons: Counter[str] = Counter()
    decisions: Counter[str] = Counter()
    for r in results:
        reasons[r["reason"]] += 1
        decisions[r["decision"]] += 1
    return {
        "scans": sum(reasons.values()),
        "allowed": decisions["allow"],
        "denied": decisions["deny"],
        "by_reason": dict(sorted(reasons.items())),
    }
