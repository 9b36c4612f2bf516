"""The door contact's state machine on a fake clock: passed, forced, held open."""

from __future__ import annotations

from edge.door import GRACE_S, DoorEvent, DoorWatch, Grant


class Clock:
    def __init__(self) -> None:
        self.t = 100.0

    def __call__(self) -> float:
        return self.t


def test_a_granted_person_who_walks_through_passed_once() -> None:
    clock = Clock()
    doors = DoorWatch(pulse_s=3.0, held_alert_s=30.0, clock=clock)
    doors.granted(7, "1-1-101", "out")
    clock.t += 2.0
    assert doors.changed(True) == DoorEvent("passed", "ok", Grant(100.0, 7, "1-1-101", "out"))
    assert doors.changed(False) is None
    assert doors.changed(True) == DoorEvent("alert", "door_forced", priority="high")  # no grant


def test_a_door_opened_after_pulse_and_grace_is_forced() -> None:
    clock = Clock()
    doors = DoorWatch(pulse_s=3.0, held_alert_s=30.0, clock=clock)
    doors.granted(None, None, "in")
    clock.t += 3.0 + GRACE_S + 0.1
    assert doors.changed(True) == DoorEvent("alert", "door_forced", priority="high")


def test_held_open_alerts_once_per_opening() -> None:
    clock = Clock()
    doors = DoorWatch(pulse_s=3.0, held_alert_s=30.0, clock=clock)
    doors.granted(None, None, "out")
    doors.changed(True)
    clock.t += 30.0
    assert doors.check_held() is None  # exactly at the limit: not yet
    clock.t += 0.5
    assert doors.check_held() == DoorEvent("alert", "door_held_open", priority="normal")
    clock.t += 60
    assert doors.check_held() is None
    doors.changed(False)
    doors.changed(True)
    clock.t += 31
    assert doors.check_held() == DoorEvent("alert", "door_held_open", priority="normal")
