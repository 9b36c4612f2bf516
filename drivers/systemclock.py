"""The kernel's own view of the system clock: is it synchronised, and how far off may it be.

The Linux kernel keeps the NTP state of CLOCK_REALTIME whichever daemon disciplines it
(systemd-timesyncd, chrony, ntpd, ptp4l): `adjtimex(2)` with ``modes = 0`` reads it without
changing anything and needs no privilege (CAP_SYS_TIME is checked only for writes). It
returns the clock state (``TIME_OK`` … ``TIME_ERROR``) and fills ``struct timex``, of which
this module reads:

- ``status``: bits; ``STA_UNSYNC`` (0x0040) set means "not synchronised";
- ``maxerror``: the maximum error, µs. The kernel adds 500 µs to it every second
  (``MAXFREQ``) and, past ``NTP_PHASE_LIMIT`` (16 s), stops there and sets ``STA_UNSYNC``.
  It starts at 16 s at boot and is put back there by every ``settimeofday`` (``date -s``);
  only a daemon with CAP_SYS_TIME lowers it (``ADJ_MAXERROR``) when it has measured the
  clock against its servers.
- ``esterror``: the estimated error, µs, as the daemon last set it;
- ``time``: the wall time of the reading (struct timeval; its second field is in ns
  when the daemon set ``STA_NANO``).

Sources: adjtimex(2) and ntp_adjtime(3) (man-pages), glibc ``<sys/timex.h>`` and
``<bits/timex.h>`` (the layout below), Linux ``kernel/time/ntp.c`` (``second_overflow``,
``ntp_clear``). No PyPI binding of adjtimex is maintained, so this is ctypes on libc's
``adjtimex`` symbol (glibc and musl both export it).

Layout: glibc's ``struct timex`` on 64-bit Linux (x86_64, aarch64) is ``unsigned int
modes`` (then 4 bytes of alignment), ``long`` fields (``__syscall_slong_t``), ``int status``
and ``int shift`` each padded to 8, a ``struct timeval`` of two ``long``, ``int tai`` and
eleven reserved ints: 208 bytes, with ``maxerror`` at offset 24, ``esterror`` at 32,
``status`` at 40 and ``time`` at 72 (checked against the C header by the tests). The
plain ``adjtimex`` symbol of a 32-bit glibc (armhf Raspberry Pi OS) keeps the same fields
as 32-bit ``long``, which is what ``c_long`` gives there; only the 64-bit layout is tested.
"""

from __future__ import annotations

import ctypes
import errno
import functools
import os
import sys
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from drivers.errors import SystemClockError

# Clock states returned by adjtimex (<sys/timex.h>).
TIME_OK, TIME_INS, TIME_DEL, TIME_OOP, TIME_WAIT, TIME_ERROR = range(6)
STATE_NAMES = {
    TIME_OK: "TIME_OK",
    TIME_INS: "TIME_INS",  # a leap second will be inserted at midnight UTC
    TIME_DEL: "TIME_DEL",  # … deleted
    TIME_OOP: "TIME_OOP",  # the leap second is in progress
    TIME_WAIT: "TIME_WAIT",  # it has just happened
    TIME_ERROR: "TIME_ERROR",  # not synchronised (or a PPS error)
}
STA_UNSYNC = 0x0040
STA_NANO = 0x2000  # time.tv_usec (and offset) are in nanoseconds; maxerror/esterror stay µs
NTP_PHASE_LIMIT_US = 16_000_000
"""The kernel's cap on maxerror (16 s): at it the clock is unsynchronised by definition."""


class _Timeval(ctypes.Structure):
    _fields_ = (("tv_sec", ctypes.c_long), ("tv_usec", ctypes.c_long))


class _Timex(ctypes.Structure):
    """glibc's ``struct timex`` (``<bits/timex.h>``, the branch without 64-bit time on a
    32-bit ABI); ctypes adds the same alignment padding as the C compiler."""

    _fields_ = (
        ("modes", ctypes.c_uint),
        ("offset", ctypes.c_long),
        ("freq", ctypes.c_long),
        ("maxerror", ctypes.c_long),
        ("esterror", ctypes.c_long),
        ("status", ctypes.c_int),
        ("constant", ctypes.c_long),
        ("precision", ctypes.c_long),
        ("tolerance", ctypes.c_long),
        ("time", _Timeval),
        ("tick", ctypes.c_long),
        ("ppsfreq", ctypes.c_long),
        ("jitter", ctypes.c_long),
        ("shift", ctypes.c_int),
        ("stabil", ctypes.c_long),
        ("jitcnt", ctypes.c_long),
        ("calcnt", ctypes.c_long),
        ("errcnt", ctypes.c_long),
        ("stbcnt", ctypes.c_long),
        ("tai", ctypes.c_int),
        ("_reserved", ctypes.c_int * 11),
    )


@dataclass(frozen=True)
class KernelClock:
    """One read-only reading of the kernel's NTP state of CLOCK_REALTIME."""

    synchronised: bool
    """The kernel's own verdict: state is not TIME_ERROR and STA_UNSYNC is clear."""
    state: int
    """adjtimex's return value: TIME_OK (0) … TIME_ERROR (5)."""
    status: int
    """``struct timex`` status bits (STA_PLL 0x1, STA_UNSYNC 0x40, STA_NANO 0x2000, …)."""
    maxerror_us: int
    """Maximum error, µs: set by the time daemon, +500 µs each second, capped at 16 s."""
    esterror_us: int
    """Estimated error, µs, as the time daemon last set it."""
    wall_s: float
    """The kernel's wall time at the reading, Unix seconds."""

    @property
    def state_name(self) -> str:
        return STATE_NAMES.get(self.state, f"state {self.state}")

    @property
    def disciplined(self) -> bool:
        """A time daemon vouches for the clock: the kernel flag says synchronised, or a daemon
        holds maxerror under the kernel's 16 s limit.

        The second case is chrony on Linux without ``rtcsync``: it keeps STA_UNSYNC set on
        purpose (so the kernel does not copy the time to the RTC every 11 minutes) while it
        sets maxerror/esterror from its measurements. systemd's ``timedatectl`` ("System clock
        synchronized") counts the same way. Nothing but a daemon with CAP_SYS_TIME brings
        maxerror under 16 s: boot and ``settimeofday`` put it at the limit.
        """
        return self.synchronised or self.maxerror_us < NTP_PHASE_LIMIT_US


def read_kernel_clock() -> KernelClock:
    """Read the kernel's clock state with ``adjtimex(2)``, modes = 0 (nothing is changed).

    Costs one system call (microseconds). Raises `SystemClockError` (an `OSError`, with the
    errno when the call failed) on a system other than Linux, when libc has no ``adjtimex``,
    or when the call fails — e.g. EPERM under a seccomp filter that blocks clock syscalls
    (systemd's ``ProtectClock=yes`` or ``SystemCallFilter=~@clock`` block reads too).
    """
    if not sys.platform.startswith("linux"):
        raise SystemClockError(
            f"the kernel's clock state is read on Linux only, not {sys.platform}"
        )
    adjtimex = _libc_adjtimex()
    tx = _Timex()  # zeroed: modes = 0, read only
    state = adjtimex(ctypes.byref(tx))
    if state < 0:
        code = ctypes.get_errno() or errno.EIO
        raise SystemClockError(code, f"adjtimex: {os.strerror(code)}")
    return KernelClock(
        synchronised=state != TIME_ERROR and not tx.status & STA_UNSYNC,
        state=state,
        status=tx.status,
        maxerror_us=tx.maxerror,
        esterror_us=tx.esterror,
        wall_s=tx.time.tv_sec + tx.time.tv_usec / (1e9 if tx.status & STA_NANO else 1e6),
    )


@functools.cache
def _libc_adjtimex() -> Callable[[Any], int]:
    try:
        fn = ctypes.CDLL(None, use_errno=True).adjtimex
    except (OSError, AttributeError) as exc:
        raise SystemClockError(f"libc has no adjtimex: {exc}") from None
    fn.argtypes = (ctypes.POINTER(_Timex),)
    fn.restype = ctypes.c_int
    return fn
