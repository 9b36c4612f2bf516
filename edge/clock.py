"""The gate's clock: never backwards past the last persisted time, and honest about trust.

A Raspberry Pi has no battery clock: after a power cut it may boot in the
past until NTP answers. Time is a security input (validity windows, daily
quotas), so the gate (1) never lets its time go backwards past the last time
it persisted, (2) knows whether the system clock is synchronised, and (3)
reports jumps so they are logged.

Whether the clock is synchronised comes from `[clock] trust` (docs/hardware.md):
- ``kernel`` (default): the kernel's NTP state (`drivers.systemclock`), so chrony, ntpd
  and systemd-timesyncd all count: synchronised when a daemon vouches for the clock
  (`KernelClock.disciplined`) and its maximum error is at most ``max_error_ms``;
- ``timesyncd`` (older configs): the kernel as above, or else systemd-timesyncd's flag
  file, which stays until reboot once timesyncd synchronised — as before;
- ``assume``: always (a gate with an RTC, simulation, demo); ``never``: never.
An untrusted clock makes every genuine pass a ``guard_confirm`` (`edge.decision`).
"""

from __future__ import annotations

import errno
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Literal

from drivers.errors import SystemClockError
from drivers.systemclock import KernelClock, read_kernel_clock
from edge.config import MAX_ERROR_LIMIT_MS, ClockSection
from edge.decision import Now
from protocol.reasons import message

Trust = Literal["kernel", "timesyncd", "assume", "never"]
KernelQuery = Callable[[], KernelClock]
"""The OS seam: reads the kernel's clock state, raises `SystemClockError`."""

TIMESYNCD_FLAG = Path("/run/systemd/timesync/synchronized")
JUMP_TOLERANCE_S = 2.0
DOCUMENT_FLOOR_MARGIN_S = 900.0
"""A signed document issued at T proves the time is at least T minus this (server and gate
clocks may differ a little): the floor rises to it (GateClock.raise_floor)."""
MAX_PENDING_JUMPS = 100


@dataclass(frozen=True)
class ClockJump:
    from_utc: datetime
    to_utc: datetime

    @property
    def seconds(self) -> float:
        return (self.to_utc - self.from_utc).total_seconds()


UNTRUSTED_EFFECT = (
    f"时钟不可信：有效通行证进出一律显示“{message('guard_confirm').zh}”，由门卫确认放行并测温。"
    " Until the clock is trusted, every genuine, unrevoked pass, in or out, is refused as "
    "guard_confirm before its validity, outing windows, household quotas and temperature "
    "are checked: the guard confirms each passage and takes the temperature. Forged and "
    "revoked passes are still refused on their own."
)
"""What an untrusted clock does to decisions (`edge.decision.decide`, rule ``clock``)."""

TIME_DAEMON_FIX = (
    "enable a time daemon: `sudo timedatectl set-ntp true` (systemd-timesyncd) or install "
    "chrony; then `timedatectl` must show 'System clock synchronized: yes' (or `chronyc "
    "tracking` 'Leap status: Normal'); the gate must reach its NTP server (UDP port 123; a "
    "LAN server goes in /etc/systemd/timesyncd.conf `NTP=` or chrony's `server` lines). "
    'A gate with an RTC module may set [clock] trust = "assume"'
)


@dataclass(frozen=True)
class ClockTrust:
    """Whether the wall clock counts as synchronised now, and on what evidence."""

    synchronised: bool
    source: Trust
    """What the verdict rests on: the kernel, timesyncd's flag, or the config (assume,
    never); when nothing vouches for the clock, the configured mode."""
    trust: Trust
    """`[clock] trust` as configured."""
    max_error_ms: int
    kernel: KernelClock | None = None
    kernel_error: str | None = None
    """Why the kernel's clock state could not be read (then `kernel` is None)."""
    kernel_errno: int | None = None

    def to_json(self) -> dict[str, object]:
        """`source`, `synchronised`, `trust`, `max_error_ms`; the kernel's `kernel_state`,
        `maxerror_us` and `esterror_us` when it was read, else `kernel_error` when it failed;
        `detail`, and `effect` and `fix` when the clock is not trusted."""
        out: dict[str, object] = {
            "source": self.source,
            "synchronised": self.synchronised,
            "trust": self.trust,
            "max_error_ms": self.max_error_ms,
        }
        if self.kernel is not None:
            out["kernel_state"] = self.kernel.state_name
            out["maxerror_us"] = self.kernel.maxerror_us
            out["esterror_us"] = self.kernel.esterror_us
        if self.kernel_error is not None:
            out["kernel_error"] = self.kernel_error
        out["detail"] = self.detail()
        if not self.synchronised:
            out["effect"] = UNTRUSTED_EFFECT
            out["fix"] = self.fix()
        return out

    def detail(self) -> str:
        """One line for people: what was seen."""
        k = self.kernel
        if self.source in ("assume", "never"):
            return f"{'assumed' if self.synchronised else 'never'} (trust = {self.trust})"
        if self.synchronised and self.source == "timesyncd":
            return f"synchronised: timesyncd's flag {TIMESYNCD_FLAG} (trust = timesyncd)"
        if k is None:
            return f"not trusted: the kernel's clock state is unreadable: {self.kernel_error}"
        seen = (
            f"the kernel says {k.state_name}, STA_UNSYNC {'clear' if k.synchronised else 'set'}"
            f", maxerror {k.maxerror_us / 1000:.0f} ms, esterror {k.esterror_us / 1000:.0f} ms"
        )
        if self.synchronised:
            return f"synchronised: {seen} (trust = {self.trust})"
        if k.disciplined:
            return f"not trusted: {seen}, above [clock] max_error_ms = {self.max_error_ms}"
        return f"not synchronised: {seen} (trust = {self.trust})"

    def fix(self) -> str:
        """What an installer does about an untrusted clock ("" when it is trusted)."""
        if self.synchronised:
            return ""
        if self.trust == "never":
            return 'set [clock] trust = "kernel" to trust a clock a time daemon synchronised'
        k = self.kernel
        if k is None:
            if self.kernel_errno == errno.EPERM:
                return (
                    "reading the clock state needs no privilege, but a seccomp filter forbids "
                    "it: remove ProtectClock= and SystemCallFilter=~@clock from the unit"
                )
            return 'on a system without the kernel\'s clock state, use [clock] trust = "assume"'
        if k.disciplined:
            return (
                "the time daemon has not corrected the clock for a while (the kernel's bound "
                "grows 0.5 ms a second): check that it reaches its servers (`chronyc sources`, "
                "`timedatectl timesync-status`), or raise [clock] max_error_ms"
            )
        return TIME_DAEMON_FIX


class GateClock:
    """`now()` gives a `Now`; `floor` is what the store persists with every decision.

    `kernel` is the OS seam that reads the kernel's clock state (`read_kernel_clock`);
    it is asked on every `now()` (one system call) so trust follows the daemon at once.
    """

    def __init__(
        self,
        trust: Trust,
        floor: float = 0.0,
        *,
        max_error_ms: int = MAX_ERROR_LIMIT_MS,
        wall: Callable[[], float] = time.time,
        monotonic: Callable[[], float] = time.monotonic,
        synced_flag: Path = TIMESYNCD_FLAG,
        kernel: KernelQuery = read_kernel_clock,
    ) -> None:
        self._trust: Trust = trust
        self._max_error_ms = max_error_ms
        self._wall = wall
        self._monotonic = monotonic
        self._flag = synced_flag
        self._kernel = kernel
        self.floor = floor
        self._last: tuple[float, float] | None = None  # (wall, monotonic) of the previous call
        self.jumps: list[ClockJump] = []  # not yet logged (the daemon takes them)
        self.jump_count = 0  # since start
        # The loop, the sync thread and the guard page all ask the time: one at a time, so
        # the floor only moves forward.
        self._lock = threading.Lock()

    @classmethod
    def configured(
        cls,
        section: ClockSection,
        floor: float = 0.0,
        *,
        wall: Callable[[], float] = time.time,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> GateClock:
        """The clock `[clock]` of gate.toml describes, on the real OS (`wall`/`monotonic`:
        simulated system clocks in tests of site life)."""
        return cls(
            section.trust, floor, max_error_ms=section.max_error_ms, wall=wall, monotonic=monotonic
        )

    def synchronised(self) -> bool:
        return self.assess().synchronised

    def assess(self) -> ClockTrust:
        """Ask the configured source whether the clock is synchronised. Never raises: a
        kernel that cannot be read makes the clock untrusted, with the error."""
        trust, bound = self._trust, self._max_error_ms
        if trust in ("assume", "never"):
            return ClockTrust(trust == "assume", trust, trust, bound)
        k: KernelClock | None = None
        error: tuple[str | None, int | None] = (None, None)
        try:
            k = self._kernel()
        except SystemClockError as exc:
            error = (str(exc), exc.errno)
        if k is not None and k.disciplined and k.maxerror_us <= bound * 1000:
            return ClockTrust(True, "kernel", trust, bound, k)
        if trust == "timesyncd" and self._flag.exists():
            return ClockTrust(True, "timesyncd", trust, bound, k, *error)
        return ClockTrust(False, trust, trust, bound, k, *error)

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

    def raise_floor(self, evidence: datetime) -> float:
        """Evidence that the time is at least `evidence` (the issue time of a signed document
        the gate holds, less DOCUMENT_FLOOR_MARGIN_S): the floor rises to it, so a clock
        behind it (a first boot in the past, a flat RTC battery, a spoofed NTP answer) is
        not trusted whatever its source says. Returns how many seconds the floor is now
        ahead of the wall clock (0: not ahead)."""
        with self._lock:
            self.floor = max(self.floor, evidence.timestamp() - DOCUMENT_FLOOR_MARGIN_S)
            return max(0.0, self.floor - self._wall())

    def take_jumps(self) -> list[ClockJump]:
        with self._lock:
            jumps, self.jumps = self.jumps, []
        return jumps


def _utc(t: float) -> datetime:
    return datetime.fromtimestamp(t, UTC)
