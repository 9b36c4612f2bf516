"""The door contact's meaning: a granted person actually passed, a door forced, a door held.

`granted` and `passed` are separate facts: the relay released the gate, then
the contact saw the door open within the pulse (plus a grace period). A door
that opens with no grant is forced; one that stays open too long raises an
alert once. The clock is injected, so the state machine is tested without
waiting; the daemon records what it returns.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

GRACE_S = 5.0  # people hesitate: the door may open a little after the pulse ended


@dataclass(frozen=True)
class Grant:
    at: float  # monotonic seconds
    pass_id: int | None
    household: str | None
    direction: str


@dataclass(frozen=True)
class DoorEvent:
    kind: str  # "passed" or "alert"
    reason: str  # "ok", "door_forced", "door_held_open"
    grant: Grant | None = None
    priority: str | None = None


class DoorWatch:
    def __init__(
        self, pulse_s: float, held_alert_s: float, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.pulse_s = pulse_s
        self.held_alert_s = held_alert_s
        self.clock = clock
        self._grant: Grant | None = None
        self._open_since: float | None = None
        self._alerted = False

    def granted(self, pass_id: int | None, household: str | None, direction: str) -> None:
        """The relay released the gate (a pass, the exit button or a guard override)."""
        self._grant = Grant(self.clock(), pass_id, household, direction)

    def changed(self, is_open: bool) -> DoorEvent | None:
        if not is_open:
            self._open_since = None
            self._alerted = False
            return None
        now = self.clock()
        self._open_since = now
        grant, self._grant = self._grant, None  # one grant, one passage
        if grant is not None and now - grant.at <= self.pulse_s + GRACE_S:
            return DoorEvent("passed", "ok", grant)
        return DoorEvent("alert", "door_forced", priority="high")

    def check_held(self) -> DoorEvent | None:
        since = self._open_since
        if since is None or self._alerted or self.clock() - since <= self.held_alert_s:
            return None
        self._alerted = True
        return DoorEvent("alert", "door_held_open", priority="normal")
