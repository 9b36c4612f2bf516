"""Simulated site time for tests of site life: days pass in seconds.

The gate's clock and the server's site clock both read one `SimTime`. Between
`advance()` calls it runs at the real rate (timeouts and reconnects still
happen); `advance(s)` moves the wall clock *and* the monotonic clock forward
by `s` seconds together, so the gate sees time passing, not a clock jump
(a jump is the wall clock moving without the monotonic one: `jump()`).
"""

from __future__ import annotations

import threading
import time
from datetime import UTC, datetime


class SimTime:
    def __init__(self, start: datetime) -> None:
        if start.tzinfo is None:
            raise ValueError("start needs a UTC offset")
        self._start = start.timestamp()
        self._t0 = time.monotonic()
        self._offset = 0.0  # advanced, both clocks
        self._wall_only = 0.0  # jumped, the wall clock alone
        self._lock = threading.Lock()

    def wall(self) -> float:
        """Seconds since the epoch, like time.time()."""
        with self._lock:
            return self._start + self._offset + self._wall_only + (time.monotonic() - self._t0)

    def monotonic(self) -> float:
        """Like time.monotonic(): advances with `advance`, not with `jump`."""
        with self._lock:
            return time.monotonic() + self._offset

    def utc(self) -> datetime:
        return datetime.fromtimestamp(self.wall(), UTC)

    def advance(self, seconds: float) -> None:
        if seconds < 0:
            raise ValueError("time does not go back; use jump() for a wrong wall clock")
        with self._lock:
            self._offset += seconds

    def advance_to(self, moment: datetime) -> None:
        """Advance until `moment` (aware); nothing happens if it has passed."""
        self.advance(max(0.0, moment.timestamp() - self.wall()))

    def jump(self, seconds: float) -> None:
        """The wall clock alone moves (a wrong NTP step): the gate logs a clock jump."""
        with self._lock:
            self._wall_only += seconds
