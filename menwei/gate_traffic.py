"""Scripted gate traffic for the benchmarks: the decisions a busy gate logs, one by one.

Each gate has its own residents: `HOUSEHOLDS` households of `MEMBERS` passes each
(numbered from the gate's index, so two gates never share a household). Event `i` is
half of trip `i // 2`: a resident goes out, then comes back in (with a temperature
reading); trips go through the residents in turn, one member of a household at a
time, so no household is ever over its quota and the traffic itself raises no
conflict (server/conflicts.py needs two gates for that). Every 17th decision is a
refusal (an expired pass). Events are what `edge.store.GateStore` logs and
`edge.sync.GateSync` sends: `protocol.events.Event`, schema 1, the gate's epoch.
"""

from __future__ import annotations

import uuid as uuidlib
from collections.abc import Callable
from dataclasses import replace
from datetime import datetime, timedelta

from protocol.events import Event

HOUSEHOLDS = 250
"""Households per gate: with one event every 10 s, each goes out about once an hour."""
MEMBERS = 2
"""Passes per household."""


def resident_event(
    site: str,
    gate: str,
    i: int,
    start: datetime,
    *,
    gate_index: int = 0,
    every: timedelta = timedelta(seconds=1),
    seq: int = 0,
    epoch: str = "",
    uuid: str | None = None,
) -> Event:
    """The `i`-th event (from 0) of gate number `gate_index` (from 0): decided at
    `start + i * every` (`start` aware), numbered `seq` in `epoch` (GateStore.append numbers
    it when `seq` is 0), with `uuid` (a new uuid4 when None)."""
    trip = i // 2
    direction = "out" if i % 2 == 0 else "in"
    resident = trip % (HOUSEHOLDS * MEMBERS)
    household_no = gate_index * HOUSEHOLDS + resident // MEMBERS
    denied = i % 17 == 0
    return Event(
        site=site,
        gate=gate,
        seq=seq,
        uuid=uuid or str(uuidlib.uuid4()),
        at=(start + every * i).isoformat(timespec="milliseconds"),
        clock_trusted=True,
        kind="decision",
        decision="deny" if denied else "allow",
        reason="expired" if denied else "ok",
        direction=direction,
        temperature_c=36.2 + (i % 7) / 10 if direction == "in" else None,
        pass_id=1 + gate_index * HOUSEHOLDS * MEMBERS + resident,
        household=f"{1 + household_no // 100}-1-{100 + household_no % 100}",
        role="resident",
        versions={"config": 1, "register": 1},
        detail={"rule": "validity" if denied else "all", "flags": []},
        epoch=epoch,
    )


def numbered(template: Event) -> Callable[[int], Event]:
    """`template` as `GateStore.append` builds an event: for the seq it is given."""
    return lambda seq: replace(template, seq=seq)
