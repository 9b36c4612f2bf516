"""Gate outputs with device meaning: the lock relay and the LED/buzzer indicator.

Timed behaviour (a relay pulse, a beep pattern) runs on a `Scheduler`, so a
caller never blocks: `ThreadScheduler` runs every timer of the gate's outputs
on one thread; `ManualScheduler` is its deterministic peer for tests and replays, sharing a
clock with `drivers.gpio.FakePins` so recorded pin histories carry exact
times.
"""

from __future__ import annotations

import heapq
import itertools
import logging
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Literal, Protocol

from drivers.errors import GpioError
from drivers.gpio import Pins
from drivers.lifecycle import Closeable

log = logging.getLogger("menwei.outputs")


class Cancellable(Protocol):
    def cancel(self) -> None: ...


class Scheduler(Protocol):
    def now(self) -> float:
        """Monotonic seconds, the clock `call_later` delays are measured on."""
        ...

    def call_later(self, delay_s: float, callback: Callable[[], None]) -> Cancellable: ...


@dataclass
class _Job:
    callback: Callable[[], None] | None

    def cancel(self) -> None:
        self.callback = None


class ThreadScheduler(Closeable):
    """Runs callbacks at their due time on one daemon thread, started on first use.

    One scheduler serves the relay and the indicator of a gate (a decision used to
    start a `threading.Timer` thread per step: three per deny). Callbacks run one
    at a time in due order and must be short (a pin write); one that raises is
    logged and the others still run. `close()` stops the thread; jobs not yet due
    are dropped (outputs are put in their safe state by their own `safe()`).
    """

    def __init__(self, name: str = "outputs-timer") -> None:
        self._name = name
        self._queue: list[tuple[float, int, _Job]] = []
        self._order = itertools.count()
        self._cond = threading.Condition()
        self._thread: threading.Thread | None = None
        self._closed = False

    def now(self) -> float:
        return time.monotonic()

    def call_later(self, delay_s: float, callback: Callable[[], None]) -> Cancellable:
        job = _Job(callback)
        with self._cond:
            if self._closed:
                raise GpioError("the output scheduler is closed")
            due = time.monotonic() + max(delay_s, 0.0)
            heapq.heappush(self._queue, (due, next(self._order), job))
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name=self._name, daemon=True)
                self._thread.start()
            self._cond.notify()
        return job

    @property
    def pending(self) -> int:
        """Jobs scheduled and not cancelled."""
        with self._cond:
            return sum(1 for _, _, job in self._queue if job.callback is not None)

    def _run(self) -> None:
        while True:
            with self._cond:
                while True:
                    if self._closed:
                        return
                    # Cancelled jobs are dropped as they come up, not waited for.
                    while self._queue and self._queue[0][2].callback is None:
                        heapq.heappop(self._queue)
                    wait = self._queue[0][0] - time.monotonic() if self._queue else None
                    if wait is not None and wait <= 0:
                        job = heapq.heappop(self._queue)[2]
                        break
                    self._cond.wait(wait)
            callback = job.callback
            if callback is not None:
                try:
                    callback()
                except Exception:
                    log.exception("output timer callback failed")

    def close(self) -> None:
        """Stop the thread (idempotent); callbacks not yet due never run."""
        with self._cond:
            self._closed = True
            self._queue.clear()
            self._cond.notify()
            thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout=5.0)


class ManualScheduler:
    """A scheduler on a virtual clock that moves only in `advance`.

    Use `now` as the clock of `FakePins` so history timestamps are exact.
    """

    def __init__(self, start: float = 0.0) -> None:
        self._now = start
        self._queue: list[tuple[float, int, _Job]] = []
        self._order = itertools.count()
        self._lock = threading.Lock()

    def now(self) -> float:
        return self._now

    def call_later(self, delay_s: float, callback: Callable[[], None]) -> Cancellable:
        job = _Job(callback)
        with self._lock:
            heapq.heappush(self._queue, (self._now + max(delay_s, 0.0), next(self._order), job))
        return job

    def advance(self, seconds: float) -> None:
        """Move the clock forward, running due callbacks at their own due time."""
        end = self._now + seconds
        while True:
            with self._lock:
                if not self._queue or self._queue[0][0] > end:
                    break
                due, _, job = heapq.heappop(self._queue)
            self._now = max(self._now, due)
            if job.callback is not None:
                job.callback()
        self._now = end

    @property
    def pending(self) -> int:
        """Jobs scheduled and not cancelled."""
        with self._lock:
            return sum(1 for _, _, job in self._queue if job.callback is not None)


class _Output:
    """One output pin with an active level; shared by relay and indicator channels."""

    def __init__(self, pins: Pins, pin: int, active_low: bool) -> None:
        self.pins = pins
        self.pin = pin
        self.active_low = active_low
        pins.setup_output(pin, initial=active_low)  # inactive from the first instant

    def set(self, active: bool) -> None:
        self.pins.write(self.pin, active != self.active_low)


class _Lifecycle(Closeable):
    _closed = False
    _own_scheduler: ThreadScheduler | None = None

    def _scheduler_or_own(self, scheduler: Scheduler | None) -> Scheduler:
        """`scheduler` (shared: the gate passes one to all its outputs), or a scheduler of
        this output's own, closed with it."""
        if scheduler is not None:
            return scheduler
        self._own_scheduler = ThreadScheduler()
        return self._own_scheduler

    def _close_own_scheduler(self) -> None:
        if self._own_scheduler is not None:
            self._own_scheduler.close()

    def _check_open(self) -> None:
        if self._closed:
            raise GpioError(f"{type(self).__name__} is closed")


class Relay(_Lifecycle):
    """The gate lock relay. Energised = gate released.

    `active_low`: the relay board energises on a low pin (most opto-isolated
    modules). `fail_secure`: what `safe()` leaves the gate as on shutdown,
    locked (fail-secure) or released (fail-safe, e.g. where fire code requires
    free egress). The hardware must enforce the same when the Pi loses power;
    `safe()` only covers an orderly stop. Starts locked.
    """

    def __init__(
        self,
        pins: Pins,
        pin: int,
        *,
        active_low: bool = False,
        fail_secure: bool = True,
        scheduler: Scheduler | None = None,
    ) -> None:
        self._out = _Output(pins, pin, active_low)
        self.fail_secure = fail_secure
        self._scheduler = self._scheduler_or_own(scheduler)
        self._lock = threading.Lock()
        self._timer: Cancellable | None = None
        # Pulse generations: a timer that lost a race with a newer pulse must not lock.
        self._generation = 0
        self._deadline: float | None = None  # end of the running pulse
        self._is_open = False
        self.releases = 0
        """Times the gate went from locked to released (pulses, holds, a fail-safe stop)."""

    @property
    def is_open(self) -> bool:
        """True while the gate is released (relay energised)."""
        with self._lock:
            return self._is_open

    def pulse(self, seconds: float) -> None:
        """Release the gate for `seconds` without blocking; a pulse while one
        runs extends the release if it ends later, never shortens it."""
        if seconds <= 0:
            raise ValueError("pulse length must be > 0 seconds")
        with self._lock:
            self._check_open()
            if self._is_open and self._timer is None:
                return  # held open by open() or safe(): a pulse must not end that
            deadline = self._scheduler.now() + seconds
            if self._deadline is not None and deadline <= self._deadline:
                return
            self._cancel_timer()
            generation = self._generation
            self._set(True)
            self._deadline = deadline
            self._timer = self._scheduler.call_later(seconds, lambda: self._expire(generation))

    def open(self) -> None:
        """Release the gate until `close_()` (guard holds the gate open)."""
        with self._lock:
            self._check_open()
            self._cancel_timer()
            self._set(True)

    def close_(self) -> None:
        """Lock the gate now, ending any pulse."""
        with self._lock:
            self._check_open()
            self._cancel_timer()
            self._set(False)

    def safe(self) -> None:
        """Leave the gate in its fail mode: locked if fail-secure, else released."""
        with self._lock:
            self._cancel_timer()
            self._set(not self.fail_secure)

    def close(self) -> None:
        """`safe()`, then refuse further use; idempotent. Does not close `pins`."""
        with self._lock:
            if self._closed:
                return
        self.safe()
        with self._lock:
            self._closed = True
        self._close_own_scheduler()

    def _expire(self, generation: int) -> None:
        with self._lock:
            if generation != self._generation or self._closed:
                return
            self._timer = None
            self._deadline = None
            self._set(False)

    def _cancel_timer(self) -> None:
        self._generation += 1
        self._deadline = None
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _set(self, released: bool) -> None:
        if released and not self._is_open:
            self.releases += 1
        self._out.set(released)
        self._is_open = released


IndicatorKind = Literal["allow", "deny", "recheck", "fault", "idle"]
Channel = Literal["green", "red", "buzzer"]
CHANNELS: tuple[Channel, ...] = ("green", "red", "buzzer")


@dataclass(frozen=True)
class Step:
    """At `at_s` seconds into a pattern, turn `channel` on or off."""

    at_s: float
    channel: Channel
    on: bool


@dataclass(frozen=True)
class Pattern:
    """A timeline of steps; with `repeat_s` it starts over every `repeat_s` seconds."""

    steps: tuple[Step, ...]
    repeat_s: float | None = None


def _blink(channel: Channel, start: float, on_s: float, times: int, off_s: float) -> list[Step]:
    steps = []
    for i in range(times):
        t = start + i * (on_s + off_s)
        steps += [Step(t, channel, True), Step(t + on_s, channel, False)]
    return steps


BEEP_S = 0.1

# Chosen to be told apart without looking at the screen: one beep lets in,
# two beeps refuse, a long tone asks to measure again, blinking red is a fault.
PATTERNS: Mapping[IndicatorKind, Pattern] = {
    "allow": Pattern((*_blink("green", 0.0, 2.0, 1, 0), *_blink("buzzer", 0.0, BEEP_S, 1, 0))),
    "deny": Pattern((*_blink("red", 0.0, 2.0, 1, 0), *_blink("buzzer", 0.0, BEEP_S, 2, BEEP_S))),
    "recheck": Pattern(
        (
            *_blink("green", 0.0, 0.25, 4, 0.25),
            *_blink("red", 0.25, 0.25, 4, 0.25),
            *_blink("buzzer", 0.0, 0.5, 1, 0),
        )
    ),
    "fault": Pattern(tuple(_blink("red", 0.0, 0.5, 1, 0)), repeat_s=1.0),
    "idle": Pattern(()),
}


class Indicator(_Lifecycle):
    """Green/red LEDs and an *active* buzzer (it sounds when powered; a passive
    one would need PWM). `show(kind)` replaces whatever pattern is running."""

    def __init__(
        self,
        pins: Pins,
        green_pin: int,
        red_pin: int,
        buzzer_pin: int,
        *,
        active_low: bool = False,
        scheduler: Scheduler | None = None,
        patterns: Mapping[IndicatorKind, Pattern] = PATTERNS,
    ) -> None:
        self._outputs: dict[Channel, _Output] = {
            "green": _Output(pins, green_pin, active_low),
            "red": _Output(pins, red_pin, active_low),
            "buzzer": _Output(pins, buzzer_pin, active_low),
        }
        self._scheduler = self._scheduler_or_own(scheduler)
        self._patterns = patterns
        self._lock = threading.Lock()
        self._jobs: list[Cancellable] = []
        self._generation = 0
        self.current: IndicatorKind = "idle"

    def show(self, kind: IndicatorKind) -> None:
        if kind not in self._patterns:
            raise ValueError(f"unknown indicator pattern: {kind!r}")
        with self._lock:
            self._check_open()
            self._stop()
            self.current = kind
            self._start(self._patterns[kind], self._generation)

    def safe(self) -> None:
        """Everything off, patterns stopped."""
        with self._lock:
            self._stop()
            self.current = "idle"
            for output in self._outputs.values():
                output.set(False)

    def close(self) -> None:
        """`safe()`, then refuse further use; idempotent. Does not close `pins`."""
        with self._lock:
            if self._closed:
                return
        self.safe()
        with self._lock:
            self._closed = True
        self._close_own_scheduler()

    def _stop(self) -> None:
        self._generation += 1
        for job in self._jobs:
            job.cancel()
        self._jobs = []

    def _start(self, pattern: Pattern, generation: int) -> None:
        # Apply the state at t=0 in one go, so a channel that stays on across
        # patterns (deny after deny) does not flicker off and on.
        first = {channel: False for channel in CHANNELS}
        later: list[Step] = []
        for step in pattern.steps:
            if step.at_s <= 0:
                first[step.channel] = step.on
            else:
                later.append(step)
        for channel, on in first.items():
            self._outputs[channel].set(on)
        for step in later:
            self._jobs.append(
                self._scheduler.call_later(step.at_s, self._stepper(step, generation))
            )
        if pattern.repeat_s is not None:
            self._jobs.append(
                self._scheduler.call_later(pattern.repeat_s, self._repeater(pattern, generation))
            )

    def _stepper(self, step: Step, generation: int) -> Callable[[], None]:
        def run() -> None:
            with self._lock:
                if generation == self._generation and not self._closed:
                    self._outputs[step.channel].set(step.on)

        return run

    def _repeater(self, pattern: Pattern, generation: int) -> Callable[[], None]:
        def run() -> None:
            with self._lock:
                if generation == self._generation and not self._closed:
                    self._jobs = []  # the finished round's jobs have all run
                    self._start(pattern, generation)

        return run
