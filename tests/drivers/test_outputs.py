"""Relay and indicator semantics, asserted on the full recorded pin history."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any, cast

import pytest

from drivers.errors import GpioError
from drivers.gpio import FakePins
from drivers.outputs import (
    PATTERNS,
    Cancellable,
    Indicator,
    ManualScheduler,
    Pattern,
    Relay,
    Step,
    ThreadScheduler,
)

RELAY, GREEN, RED, BUZZER = 17, 22, 27, 23


@pytest.fixture
def sched() -> ManualScheduler:
    return ManualScheduler()


@pytest.fixture
def pins(sched: ManualScheduler) -> FakePins:
    return FakePins(clock=sched.now)


def timeline(pins: FakePins) -> list[tuple[float, int, bool]]:
    # Pattern times are sums of floats (0.1 + 0.2); compare them to the microsecond.
    return [(round(t, 6), pin, value) for t, pin, value in pins.history]


class _Ignored:
    def cancel(self) -> None:
        pass


class UncancellableScheduler(ManualScheduler):
    """Cancel arrives too late, as when a threading.Timer has already fired and
    waits for the lock: the output must still ignore the stale callback."""

    def call_later(self, delay_s: float, callback: Callable[[], None]) -> Cancellable:
        super().call_later(delay_s, callback)
        return _Ignored()


# -- relay -----------------------------------------------------------------------


def test_relay_pulse_active_high(pins, sched):
    relay = Relay(pins, RELAY, scheduler=sched)
    sched.advance(1.0)
    relay.pulse(3.0)
    assert relay.is_open
    sched.advance(5.0)

    assert timeline(pins) == [(0.0, RELAY, False), (1.0, RELAY, True), (4.0, RELAY, False)]
    assert not relay.is_open


def test_relay_pulse_active_low(pins, sched):
    relay = Relay(pins, RELAY, active_low=True, scheduler=sched)
    sched.advance(1.0)
    relay.pulse(3.0)
    sched.advance(5.0)

    assert timeline(pins) == [(0.0, RELAY, True), (1.0, RELAY, False), (4.0, RELAY, True)]


def test_second_pulse_extends_the_release(pins, sched):
    relay = Relay(pins, RELAY, scheduler=sched)
    relay.pulse(3.0)
    sched.advance(2.0)
    relay.pulse(3.0)
    sched.advance(10.0)

    assert timeline(pins) == [(0.0, RELAY, False), (0.0, RELAY, True), (5.0, RELAY, False)]


def test_shorter_pulse_does_not_cut_a_running_one(pins, sched):
    relay = Relay(pins, RELAY, scheduler=sched)
    relay.pulse(5.0)
    sched.advance(1.0)
    relay.pulse(1.0)
    sched.advance(10.0)

    assert timeline(pins) == [(0.0, RELAY, False), (0.0, RELAY, True), (5.0, RELAY, False)]


def test_stale_pulse_timer_does_not_end_a_newer_pulse(pins):
    sched = UncancellableScheduler()
    pins = FakePins(clock=sched.now)
    relay = Relay(pins, RELAY, scheduler=sched)
    relay.pulse(3.0)
    sched.advance(1.0)
    relay.close_()
    sched.advance(1.0)
    relay.pulse(3.0)  # the first pulse's timer still fires at t=3
    sched.advance(10.0)

    assert timeline(pins) == [
        (0.0, RELAY, False),
        (0.0, RELAY, True),
        (1.0, RELAY, False),
        (2.0, RELAY, True),
        (5.0, RELAY, False),
    ]


def test_open_holds_until_close_and_ignores_pulses(pins, sched):
    relay = Relay(pins, RELAY, scheduler=sched)
    relay.open()
    relay.pulse(1.0)
    sched.advance(10.0)
    assert relay.is_open
    relay.close_()

    assert timeline(pins) == [(0.0, RELAY, False), (0.0, RELAY, True), (10.0, RELAY, False)]


def test_close_during_pulse_locks_at_once(pins, sched):
    relay = Relay(pins, RELAY, scheduler=sched)
    relay.pulse(3.0)
    sched.advance(1.0)
    relay.close_()
    sched.advance(5.0)

    assert timeline(pins) == [(0.0, RELAY, False), (0.0, RELAY, True), (1.0, RELAY, False)]
    assert sched.pending == 0


def test_fail_secure_relay_locks_on_shutdown(pins, sched):
    relay = Relay(pins, RELAY, active_low=True, fail_secure=True, scheduler=sched)
    relay.pulse(3.0)
    sched.advance(1.0)
    relay.close()
    relay.close()
    sched.advance(5.0)

    assert timeline(pins) == [(0.0, RELAY, True), (0.0, RELAY, False), (1.0, RELAY, True)]
    with pytest.raises(GpioError):
        relay.pulse(1.0)


def test_fail_safe_relay_releases_on_shutdown_and_stays_released(pins, sched):
    with Relay(pins, RELAY, fail_secure=False, scheduler=sched) as relay:
        relay.pulse(3.0)
        sched.advance(1.0)
    sched.advance(5.0)

    assert timeline(pins) == [(0.0, RELAY, False), (0.0, RELAY, True)]
    assert relay.is_open


def test_pulse_length_must_be_positive(pins, sched):
    relay = Relay(pins, RELAY, scheduler=sched)

    with pytest.raises(ValueError):
        relay.pulse(0)


def test_relay_pulse_on_real_timer_threads_ends_by_itself():
    released = threading.Event()

    class Probe(FakePins):
        def write(self, pin: int, value: bool) -> None:
            super().write(pin, value)
            if not value:
                released.set()

    pins = Probe()
    relay = Relay(pins, RELAY, scheduler=ThreadScheduler())
    relay.pulse(0.01)

    assert released.wait(timeout=5.0)
    assert [(pin, value) for _, pin, value in pins.history] == [
        (RELAY, False),
        (RELAY, True),
        (RELAY, False),
    ]


def test_thread_scheduler_runs_jobs_in_due_order_on_one_thread_and_survives_a_failure():
    timers = ThreadScheduler(name="test-timers")
    ran: list[tuple[str, str]] = []
    done = threading.Event()

    def job(name: str):
        def run() -> None:
            ran.append((name, threading.current_thread().name))
            if name == "last":
                done.set()

        return run

    def broken() -> None:
        raise OSError("pin write failed")

    try:
        timers.call_later(0.06, job("last"))
        timers.call_later(0.02, job("second"))
        timers.call_later(0.01, broken)  # logged; the others still run
        timers.call_later(0.0, job("first"))
        timers.call_later(0.03, job("cancelled")).cancel()
        assert done.wait(timeout=10.0)
        assert ran == [("first", "test-timers"), ("second", "test-timers"), ("last", "test-timers")]
        assert timers.pending == 0
    finally:
        timers.close()
    assert not [t for t in threading.enumerate() if t.name == "test-timers"]


def test_one_scheduler_thread_serves_the_relay_and_the_indicator():
    # Issue 12: three threading.Timer threads per decision; now one thread for all timers.
    seen: set[str] = set()
    finished = threading.Event()

    class Probe(FakePins):
        def write(self, pin: int, value: bool) -> None:
            super().write(pin, value)
            seen.add(threading.current_thread().name)
            if pin == RED and not value:
                finished.set()

    pins = Probe()
    timers = ThreadScheduler(name="gate-timers")
    short_deny = {
        **PATTERNS,
        "deny": Pattern(
            (
                Step(0.0, "red", True),
                Step(0.0, "buzzer", True),
                Step(0.02, "buzzer", False),
                Step(0.04, "buzzer", True),
                Step(0.06, "buzzer", False),
                Step(0.08, "red", False),
            )
        ),
    }
    relay = Relay(pins, RELAY, scheduler=timers)
    indicator = Indicator(pins, GREEN, RED, BUZZER, scheduler=timers, patterns=short_deny)
    before = {t.ident for t in threading.enumerate()}
    try:
        relay.pulse(0.05)
        indicator.show("deny")
        started = [t for t in threading.enumerate() if t.ident not in before]
        assert [t.name for t in started] == ["gate-timers"]
        assert finished.wait(timeout=10.0)
        wait_for(lambda: not relay.is_open)
        assert seen - {threading.current_thread().name} == {"gate-timers"}
        assert [v for _, pin, v in pins.history if pin == BUZZER] == [
            False,
            True,
            False,
            True,
            False,
        ]
    finally:
        relay.close()
        indicator.close()
        timers.close()


def test_a_closed_scheduler_runs_nothing_more_and_refuses_new_jobs():
    timers = ThreadScheduler()
    ran: list[int] = []
    timers.call_later(30.0, lambda: ran.append(1))
    timers.close()
    timers.close()  # idempotent
    assert ran == [] and timers.pending == 0
    with pytest.raises(GpioError):
        timers.call_later(0.0, lambda: ran.append(2))


def wait_for(predicate, timeout_s: float = 10.0) -> None:
    end = time.monotonic() + timeout_s
    while not predicate():
        assert time.monotonic() < end, "condition not reached in time"
        time.sleep(0.01)


# -- indicator --------------------------------------------------------------------

SETUP = [(0.0, GREEN, False), (0.0, RED, False), (0.0, BUZZER, False)]


@pytest.fixture
def indicator(pins, sched) -> Indicator:
    return Indicator(pins, GREEN, RED, BUZZER, scheduler=sched)


def test_allow_is_green_two_seconds_and_one_beep(indicator, pins, sched):
    indicator.show("allow")
    sched.advance(10.0)

    assert timeline(pins) == [
        *SETUP,
        (0.0, GREEN, True),
        (0.0, BUZZER, True),
        (0.1, BUZZER, False),
        (2.0, GREEN, False),
    ]


def test_deny_is_red_two_seconds_and_two_beeps(indicator, pins, sched):
    indicator.show("deny")
    sched.advance(10.0)

    assert timeline(pins) == [
        *SETUP,
        (0.0, RED, True),
        (0.0, BUZZER, True),
        (0.1, BUZZER, False),
        (0.2, BUZZER, True),
        (0.3, BUZZER, False),
        (2.0, RED, False),
    ]


def test_recheck_alternates_green_and_red_with_a_long_tone(indicator, pins, sched):
    indicator.show("recheck")
    sched.advance(10.0)

    assert timeline(pins) == [
        *SETUP,
        (0.0, GREEN, True),
        (0.0, BUZZER, True),
        (0.25, GREEN, False),
        (0.25, RED, True),
        (0.5, GREEN, True),
        (0.5, RED, False),
        (0.5, BUZZER, False),
        (0.75, GREEN, False),
        (0.75, RED, True),
        (1.0, GREEN, True),
        (1.0, RED, False),
        (1.25, GREEN, False),
        (1.25, RED, True),
        (1.5, GREEN, True),
        (1.5, RED, False),
        (1.75, GREEN, False),
        (1.75, RED, True),
        (2.0, RED, False),
    ]


def test_fault_blinks_red_until_replaced(indicator, pins, sched):
    indicator.show("fault")
    sched.advance(2.2)
    indicator.show("idle")
    sched.advance(10.0)

    assert timeline(pins) == [
        *SETUP,
        (0.0, RED, True),
        (0.5, RED, False),
        (1.0, RED, True),
        (1.5, RED, False),
        (2.0, RED, True),
        (2.2, RED, False),
    ]
    assert sched.pending == 0


def test_new_pattern_replaces_the_running_one_without_flicker(indicator, pins, sched):
    indicator.show("allow")
    sched.advance(0.05)
    indicator.show("deny")  # the buzzer is on in both: it must not blip off
    sched.advance(10.0)

    assert timeline(pins) == [
        *SETUP,
        (0.0, GREEN, True),
        (0.0, BUZZER, True),
        (0.05, GREEN, False),
        (0.05, RED, True),
        (0.15, BUZZER, False),
        (0.25, BUZZER, True),
        (0.35, BUZZER, False),
        (2.05, RED, False),
    ]
    assert indicator.current == "deny"


def test_stale_indicator_steps_are_ignored(pins):
    sched = UncancellableScheduler()
    pins = FakePins(clock=sched.now)
    indicator = Indicator(pins, GREEN, RED, BUZZER, scheduler=sched)
    indicator.show("allow")
    sched.advance(1.0)
    indicator.show("allow")  # the first allow's "green off" at t=2 must not fire
    sched.advance(10.0)

    assert timeline(pins) == [
        *SETUP,
        (0.0, GREEN, True),
        (0.0, BUZZER, True),
        (0.1, BUZZER, False),
        (1.0, BUZZER, True),
        (1.1, BUZZER, False),
        (3.0, GREEN, False),
    ]


def test_safe_turns_everything_off_and_stops_patterns(indicator, pins, sched):
    indicator.show("fault")
    sched.advance(0.2)
    indicator.show("allow")
    indicator.safe()
    sched.advance(10.0)

    assert timeline(pins) == [
        *SETUP,
        (0.0, RED, True),
        (0.2, GREEN, True),
        (0.2, RED, False),
        (0.2, BUZZER, True),
        (0.2, GREEN, False),
        (0.2, BUZZER, False),
    ]


def test_active_low_indicator_inverts_levels(pins, sched):
    indicator = Indicator(pins, GREEN, RED, BUZZER, active_low=True, scheduler=sched)
    indicator.show("allow")
    sched.advance(10.0)

    assert timeline(pins) == [
        (0.0, GREEN, True),
        (0.0, RED, True),
        (0.0, BUZZER, True),
        (0.0, GREEN, False),
        (0.0, BUZZER, False),
        (0.1, BUZZER, True),
        (2.0, GREEN, True),
    ]


def test_indicator_close_is_idempotent_and_final(indicator, pins, sched):
    indicator.show("deny")
    indicator.close()
    indicator.close()

    assert timeline(pins) == [
        *SETUP,
        (0.0, RED, True),
        (0.0, BUZZER, True),
        (0.0, RED, False),
        (0.0, BUZZER, False),
    ]
    with pytest.raises(GpioError):
        indicator.show("allow")


def test_unknown_pattern_is_rejected(indicator):
    with pytest.raises(ValueError):
        indicator.show(cast(Any, "party"))


def test_indicator_on_a_pin_already_used_as_input_is_rejected(pins, sched):
    Relay(pins, RELAY, scheduler=sched)
    pins.setup_input(GREEN, pull_up=True)  # miswired config: the LED pin is an input

    with pytest.raises(GpioError):
        Indicator(pins, GREEN, RED, BUZZER, scheduler=sched)
