"""Scenes of site life for end-to-end tests: a card shown to a gate, a statement heard."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from tests.e2e.helpers import GateThread, Stage, wait_until
from tests.e2e.simtime import SimTime


def scan(gate: GateThread, stage: Stage, sim: SimTime, qr: str, **meta: Any) -> dict[str, Any]:
    """A minute later, show a card to the gate's camera (`meta`: the simulated person, e.g.
    forehead_c, direction); the gate's final decision on it (after a fever re-measure), as
    logged."""
    sim.advance(60)
    before = gate.daemon.store.last_seq()
    stage.drop(qr, meta)

    def final() -> dict[str, Any] | None:
        for logged in reversed(list(gate.daemon.store.log())):
            e = logged.event
            if e.seq <= before:
                return None
            if e.kind == "decision" and e.reason != "fever_recheck":
                return e.to_json()
        return None

    result: dict[str, Any] = wait_until(final, 30, "the gate did not decide")
    return result


def heard_since(gate: GateThread, moment: datetime) -> bool:
    """Does the gate hold a freshness statement issued after `moment`?"""
    s = gate.daemon.know.statement
    return s is not None and s.issued_at > moment
