"""The gate's clock: never backwards past the last persisted time, and honest about trust.

A Raspberry Pi has no battery clock: after a power cut it may boot in the
past until NTP answers. Time is a security input (validity windows, daily
quotas), so the gate (1) never lets its time go backwards past the last time
it persisted, (2) knows whether the system clock is synchronised, and (3)
reports jumps so they are logged.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Literal

from edge.decision import Now

TIMESYNCD_FLAG = Path("/run/systemd/timesync/synchronized")
JUMP_TOLERANCE_S = 2.0
MAX_PENDING_JUMPS = 100


@dataclass(frozen=True)
class ClockJump:
    from_utc: datetime
    to_utc: datetime

    @property
    def seconds(self) -> float:
        return (self.to_utc - self.from_utc).total_seconds()


class GateClock:
    """`now()` gives a `Now`; `floor` is what the store persists with every decision."""

    def __init__(
        self,
        trust: Literal["timesyncd", "assume", "never"],
        floor: float = 0.0,
        *,
        wall: Callable[[], float] = time.time,
        monotonic: Callable[[], float] = time.monotonic,
        synced_flag: Path = TIMESYNCD_FLAG,
    ) -> None:
        self._trust = trust
        self._wall = wall
        self._monotonic = monotonic
        self._flag = synced_flag
        self.floor = floor
        self._last: tuple[float, float] | None = None  # (wall, monotonic) of the previous call
        self.jumps: list[ClockJump] = []  # not yet logged (the daemon takes them)
        self.jump_count = 0  # since start
        # The loop, the sync thread and the guard page all ask the time: one at a time, so
        # the floor only moves forward.
        self._lock = threading.Lock()

    def synchronised(self) -> bool:
        if self._trust == "assume":
            return True
        if self._trust == "never":
            return False
        return self._flag.exists()

    def now(self) -> Now:
        with self._lock:
            wall, mono = self._wall(), self._monotonic()
            if self._last is not None:
                expected = self._last[0] + (mono - self._last[1])
                if abs(wall - expected) > JUMP_TOLERANCE_S:
                    self.jump_count += 1
                    if len(self.jumps) < MAX_PENDING_JUMPS:
                        self.jumps.append(ClockJump(_utc(expected), _utc(wall)))
            self._last = (wall, mono)
            behind = wall < self.floor
            t = max(wall, self.floor)
            self.floor = t
        # A clock behind what we already persisted is wrong, whatever timesyncd says.
        return Now(_utc(t), self.synchronised() and not behind)

    def take_jumps(self) -> list[ClockJump]:
        with self._lock:
            jumps, self.jumps = self.jumps, []
        return jumps


def _utc(t: float) -> datetime:
    return datetime.fromtimestamp(t, UTC)
