"""How many password checks run at once in this process: a bound on Argon2id's memory.

Each check of a password (argon2-cffi's defaults: Argon2id, 64 MiB, t=3) allocates its
64 MiB for the time it runs; 40 concurrent logins took the collector from 75 MiB to
about 2 GiB, past the 1 GiB the shipped unit allows. A login that finds every slot in use
is answered "busy, try again" (503) without hashing and without counting as an attempt,
so the memory the checks can take is `slots` × 64 MiB, whatever arrives.

`in_use`, `peak` (the most in use at once since start), `checked` and `busy` are read by
/metrics and the tests.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterable, Iterator

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

DEFAULT_SLOTS = 2

# argon2-cffi's defaults are RFC 9106's low-memory profile of Argon2id (64 MiB, t=3):
# fine on a Pi 4 running the collector, and the hash records its parameters.
hasher = PasswordHasher()


class PasswordChecks(Collector):
    """At most `slots` (≥ 1) checks at once; also a Prometheus collector of its figures."""

    def __init__(self, slots: int = DEFAULT_SLOTS) -> None:
        if slots < 1:
            raise ValueError("password checks at once must be at least 1")
        self.slots = slots
        self._free = threading.BoundedSemaphore(slots)
        self._lock = threading.Lock()
        self.in_use = 0
        self.peak = 0
        self.checked = 0
        self.busy = 0

    @contextlib.contextmanager
    def slot(self) -> Iterator[bool]:
        """A slot for one check: yields True while holding it, False (at once, nothing
        held) when every slot is in use."""
        if not self._free.acquire(blocking=False):
            with self._lock:
                self.busy += 1
            yield False
            return
        with self._lock:
            self.in_use += 1
            self.peak = max(self.peak, self.in_use)
        try:
            yield True
        finally:
            with self._lock:
                self.in_use -= 1
            self._free.release()

    def verify(self, digest: str, password: str) -> bool:
        """Whether `password` matches the PHC string `digest`; call it holding a slot."""
        with self._lock:
            self.checked += 1
        try:
            return hasher.verify(digest, password)
        except (VerificationError, InvalidHashError):
            return False

    def collect(self) -> Iterable[Metric]:
        with self._lock:
            figures = (self.in_use, self.peak, self.checked, self.busy)
        in_use, peak, checked, busy = figures
        yield GaugeMetricFamily(
            "menwei_dashboard_password_checks_slots", "Password checks allowed at once.", self.slots
        )
        yield GaugeMetricFamily(
            "menwei_dashboard_password_checks_in_use", "Password checks running now.", in_use
        )
        yield GaugeMetricFamily(
            "menwei_dashboard_password_checks_peak",
            "The most password checks that ran at once since start.",
            peak,
        )
        yield CounterMetricFamily(
            "menwei_dashboard_password_checks", "Logins whose password was checked.", checked
        )
        yield CounterMetricFamily(
            "menwei_dashboard_logins_busy",
            "Logins answered busy, unchecked: every password check slot was in use.",
            busy,
        )
