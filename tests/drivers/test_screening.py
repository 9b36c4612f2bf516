"""Screening through the real MLX90614 driver on the simulated bus, on a fake clock."""

from __future__ import annotations

import errno
import threading
from collections.abc import Callable
from dataclasses import astuple

import pytest

from drivers.mlx90614 import MLX90614, celsius_to_raw
from drivers.screening import BodyOffset, Screener, calibrate
from drivers.sim_i2c import SimulatedMLX90614Bus


class FakeTime:
    """A monotonic clock that only moves when slept on; sleeping may run scene changes."""

    def __init__(self) -> None:
        self.now = 0.0
        self.sleeps: list[float] = []
        self.scene: dict[int, Callable[[], None]] = {}

    def clock(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds
        change = self.scene.get(len(self.sleeps))
        if change is not None:
            change()


@pytest.fixture
def bus() -> SimulatedMLX90614Bus:
    return SimulatedMLX90614Bus(object_c=34.5, ambient_c=24.0)


@pytest.fixture
def fake_time() -> FakeTime:
    return FakeTime()


def screener(bus: SimulatedMLX90614Bus, fake_time: FakeTime, **kwargs) -> Screener:
    # retries=0 so each injected bus error is one failed sample; the driver
    # sleeps on the same fake clock.
    sensor = MLX90614(bus, retries=0, sleep=fake_time.sleep)
    options = {"interval_s": 0.25, "timeout_s": 1.0, **kwargs}
    return Screener(sensor, clock=fake_time.clock, sleep=fake_time.sleep, **options)


def test_steady_forehead_gives_body_temperature(bus, fake_time):
    result = screener(bus, fake_time).measure()

    # 34.5 skin + 2.0 base + 0.1 * (25 - 24) ambient correction
    assert (result.body_c, result.skin_c, result.ambient_c) == pytest.approx(
        (36.6, 34.5, 24.0), abs=0.02
    )
    assert (result.samples_taken, result.error, result.failed_samples) == (3, None, 0)
    assert fake_time.sleeps == [0.25, 0.25]


def test_person_stepping_in_is_measured_once_settled(bus, fake_time):
    bus.object_c = 22.0  # the sensor sees the far wall first
    fake_time.scene = {2: lambda: setattr(bus, "object_c", 34.5)}

    result = screener(bus, fake_time).measure()

    assert result.body_c == pytest.approx(36.6, abs=0.02)
    assert result.samples_taken == 5


def test_drift_faster_than_tolerance_times_out_without_a_body_temperature(bus, fake_time):
    bus.drift(0.2)  # three readings span 0.4 °C > 0.3 °C tolerance

    result = screener(bus, fake_time).measure()

    assert result.body_c is None
    assert result.error == "no_steady_reading"
    # t = 0, 0.25, 0.5, 0.75, 1.0 → five samples, the last at the timeout
    assert result.samples_taken == 5
    assert result.skin_c == pytest.approx(34.5 + 0.2 * 3, abs=0.02)


def test_slow_drift_within_tolerance_is_accepted(bus, fake_time):
    bus.drift(0.1)

    result = screener(bus, fake_time).measure()

    assert result.body_c == pytest.approx(34.6 + 2.1, abs=0.02)  # mean skin of 34.5/34.6/34.7


def test_stuck_sensor_reading_a_wall_value_is_implausible(bus, fake_time):
    bus.stick(celsius_to_raw(22.0))  # object and ambient both read 22 °C, steadily

    result = screener(bus, fake_time).measure()

    assert result.body_c is None
    assert result.error == "implausible_reading"
    assert result.skin_c == pytest.approx(22.0, abs=0.02)


def test_high_fever_is_reported_not_dropped(bus, fake_time):
    bus.object_c = 37.5

    result = screener(bus, fake_time).measure()

    assert result.body_c == pytest.approx(39.6, abs=0.02)
    assert result.error is None


def test_too_hot_to_be_a_forehead_is_implausible(bus, fake_time):
    bus.object_c = 45.0

    assert screener(bus, fake_time).measure().error == "implausible_reading"


def test_unplugged_sensor_gives_sensor_error_not_a_crash(bus, fake_time):
    bus.unplug()

    result = screener(bus, fake_time).measure()

    assert result.body_c is None and result.skin_c is None
    assert result.error is not None and result.error.startswith("sensor_error: ")
    assert f"[Errno {errno.EREMOTEIO}]" in result.error
    assert result.samples_taken == result.failed_samples == 5


def test_a_failed_sample_breaks_the_run_but_not_the_measurement(bus, fake_time):
    fake_time.scene = {2: lambda: bus.fail_io(errno.EIO, times=1)}

    result = screener(bus, fake_time, timeout_s=2.0).measure()

    # ok, ok, failed, ok, ok, ok: the failure restarts the count of agreeing readings
    assert result.body_c == pytest.approx(36.6, abs=0.02)
    assert (result.samples_taken, result.failed_samples) == (6, 1)


def test_flapping_sensor_times_out_naming_the_sensor(bus, fake_time):
    fake_time.scene = {n: (lambda: bus.fail_io(errno.EIO, times=1)) for n in (1, 3)}

    result = screener(bus, fake_time, samples=3).measure()

    assert result.body_c is None
    assert result.error is not None and result.error.startswith("sensor_error: ")
    assert result.failed_samples == 2


def test_pec_corruption_counts_as_failed_sample(bus, fake_time):
    bus.corrupt_pec(times=1)

    result = screener(bus, fake_time).measure()

    assert (result.samples_taken, result.failed_samples) == (4, 1)
    assert result.body_c is not None


def test_single_sample_mode(bus, fake_time):
    result = screener(bus, fake_time, samples=1).measure()

    assert result.samples_taken == 1 and fake_time.sleeps == []


# -- the offset model and calibration ------------------------------------------


def test_offset_grows_as_the_air_gets_colder():
    offset = BodyOffset(base_c=2.0, per_ambient_c=0.1, ref_ambient_c=25.0)

    assert offset.offset_c(25.0) == pytest.approx(2.0)
    assert offset.offset_c(5.0) == pytest.approx(4.0)
    assert offset.offset_c(35.0) == pytest.approx(1.0)
    assert offset.body_c(33.0, 15.0) == pytest.approx(36.0)


def test_calibrate_fits_base_so_the_reference_is_reproduced():
    offset = calibrate(34.0, 20.0, 36.8)

    assert astuple(offset) == pytest.approx((2.3, 0.1, 25.0))
    assert offset.body_c(34.0, 20.0) == pytest.approx(36.8)


def test_calibrate_keeps_a_given_slope():
    offset = calibrate(33.0, 10.0, 36.5, per_ambient_c=0.05, ref_ambient_c=20.0)

    assert offset.base_c == pytest.approx(36.5 - 33.0 - 0.05 * 10.0)
    assert offset.body_c(33.0, 10.0) == pytest.approx(36.5)


def test_calibrated_screener_reports_the_reference(bus, fake_time):
    bus.object_c, bus.ambient_c = 33.8, 18.0
    offset = calibrate(33.8, 18.0, 36.7)

    result = screener(bus, fake_time, offset=offset).measure()

    assert result.body_c == pytest.approx(36.7, abs=0.02)


@pytest.mark.parametrize(
    "kwargs", [{"samples": 0}, {"tolerance_c": -0.1}, {"timeout_s": 0}, {"interval_s": -1}]
)
def test_invalid_settings_are_rejected(bus, fake_time, kwargs):
    with pytest.raises(ValueError):
        screener(bus, fake_time, **kwargs)


def test_a_cancelled_measurement_stops_before_its_next_sample(bus, fake_time):
    cancel = threading.Event()
    fake_time.scene = {1: cancel.set}  # the pass was refused during the first interval

    result = screener(bus, fake_time).measure(cancel)

    assert (result.body_c, result.error, result.samples_taken) == (None, "cancelled", 1)
    assert fake_time.sleeps == [0.25]


def test_started_measurements_run_on_one_worker_one_after_another(bus, fake_time):
    s = screener(bus, fake_time)
    try:
        refused = s.start()
        refused.cancel()
        taken = s.start().result()  # waits for the first to end: never two on the bus
        assert (taken.body_c, taken.error) == (pytest.approx(36.6, abs=0.02), None)
        assert taken.samples_taken == 3
        assert s.start().result() == s.measure()  # the same outcome off the caller's thread
    finally:
        s.close()
