"""The real MLX90614 driver against a simulated bus that speaks its register map."""

from __future__ import annotations

import errno
import threading
from dataclasses import astuple

import pytest

from drivers.errors import DriverError, PecError, SensorError
from drivers.mlx90614 import (
    EEPROM_EMISSIVITY,
    MLX90614,
    RAM_TA,
    RAM_TOBJ1,
    ReadStats,
    celsius_to_raw,
    raw_to_celsius,
    read_word_pec,
    smbus_pec,
)
from drivers.sim_i2c import SimulatedMLX90614Bus
from drivers.thermometer import ThermalReading, Thermometer


class Sleeps:
    """Records requested delays instead of sleeping."""

    def __init__(self) -> None:
        self.calls: list[float] = []

    def __call__(self, seconds: float) -> None:
        self.calls.append(seconds)


@pytest.fixture
def bus() -> SimulatedMLX90614Bus:
    return SimulatedMLX90614Bus(object_c=34.5, ambient_c=24.0)


@pytest.fixture
def sleeps() -> Sleeps:
    return Sleeps()


@pytest.fixture
def sensor(bus: SimulatedMLX90614Bus, sleeps: Sleeps) -> MLX90614:
    return MLX90614(bus, sleep=sleeps)


# -- PEC against published vectors ------------------------------------------


def test_pec_matches_melexis_datasheet_read_word_example():
    # MLX90614 datasheet, SMBus read example: SA 0x5A, command 0x07 (Tobj1),
    # data 0x3AD2 → PEC 0x30.
    assert smbus_pec([0xB4, 0x07, 0xB5, 0xD2, 0x3A]) == 0x30
    assert read_word_pec(0x5A, 0x07, 0xD2, 0x3A) == 0x30


def test_pec_matches_melexis_datasheet_write_word_example():
    # Datasheet write example: EEPROM 0x02 (command 0x22), data 0xC807 → PEC 0x48.
    assert smbus_pec([0xB4, 0x22, 0x07, 0xC8]) == 0x48


def test_pec_matches_smbus_pec_crate_examples():
    # Examples from the Rust `smbus-pec` crate's README (address 0x5A, register 0x06).
    assert smbus_pec([0xB4, 0x06, 0xAB, 0xCD]) == 95
    assert smbus_pec([0xB4, 0x06, 0xB5, 38, 58]) == 102


def test_pec_of_message_followed_by_its_pec_is_zero():
    message = [0xB4, 0x07, 0xB5, 0xD2, 0x3A]
    assert smbus_pec([*message, smbus_pec(message)]) == 0


# -- conversion ---------------------------------------------------------------


def test_datasheet_word_converts_to_celsius():
    # 0x3AD2 = 15058 → 15058 * 0.02 K = 301.16 K = 28.01 °C
    assert raw_to_celsius(0x3AD2) == pytest.approx(28.01)
    assert celsius_to_raw(28.01) == 0x3AD2


# -- reads ---------------------------------------------------------------------


def test_read_returns_object_and_ambient_from_the_register_map(bus, sensor):
    reading = sensor.read()

    assert isinstance(reading, ThermalReading)
    assert astuple(reading) == pytest.approx((34.5, 24.0), abs=0.01)
    assert bus.requests == [(0x5A, RAM_TA), (0x5A, RAM_TOBJ1)]
    assert sensor.stats == ReadStats(reads=2)
    assert isinstance(sensor, Thermometer)


def test_read_emissivity(bus, sensor):
    bus.emissivity = 0.98

    assert sensor.read_emissivity() == pytest.approx(0.98, abs=1e-4)
    assert bus.requests == [(0x5A, EEPROM_EMISSIVITY)]


def test_other_address(bus, sleeps):
    bus.address = 0x5B
    sensor = MLX90614(bus, 0x5B, sleep=sleeps)

    assert sensor.read().ambient_c == pytest.approx(24.0, abs=0.01)


# -- injected faults ----------------------------------------------------------


def test_eio_is_retried_then_succeeds(bus, sensor, sleeps):
    bus.fail_io(errno.EIO, times=2)

    reading = sensor.read()

    assert reading.ambient_c == pytest.approx(24.0, abs=0.01)
    assert sleeps.calls == [0.005, 0.005]
    assert bus.requests == [(0x5A, RAM_TA)] * 3 + [(0x5A, RAM_TOBJ1)]
    assert sensor.stats == ReadStats(reads=2, retries=2)


@pytest.mark.parametrize("code", [errno.EIO, errno.ENXIO, errno.EREMOTEIO])
def test_io_errors_exhausting_retries_raise_sensor_error_with_errno(bus, sleeps, code):
    sensor = MLX90614(bus, retries=2, retry_delay_s=0.01, sleep=sleeps)
    bus.fail_io(code)

    with pytest.raises(SensorError) as caught:
        sensor.read()

    assert caught.value.errno == code
    assert isinstance(caught.value, OSError) and isinstance(caught.value, DriverError)
    assert isinstance(caught.value.__cause__, OSError)
    assert len(bus.requests) == 3
    assert sleeps.calls == [0.01, 0.01]
    assert sensor.stats == ReadStats(reads=1, retries=2, failures=1)


def test_zero_retries_means_one_attempt(bus, sleeps):
    sensor = MLX90614(bus, retries=0, sleep=sleeps)
    bus.fail_io(times=1)

    with pytest.raises(SensorError):
        sensor.read()

    assert len(bus.requests) == 1 and sleeps.calls == []


def test_wrong_pec_raises_pec_error_and_is_counted(bus, sensor):
    bus.corrupt_pec()

    with pytest.raises(PecError) as caught:
        sensor.read()

    assert caught.value.errno == errno.EBADMSG
    assert isinstance(caught.value, SensorError)
    assert sensor.stats == ReadStats(reads=1, retries=3, pec_mismatches=4, failures=1)


def test_single_corrupted_pec_is_retried(bus, sensor):
    bus.corrupt_pec(times=1)

    assert sensor.read().object_c == pytest.approx(34.5, abs=0.01)
    assert sensor.stats == ReadStats(reads=2, retries=1, pec_mismatches=1)


def test_pec_check_off_accepts_the_word_but_counts_the_mismatch(bus, sleeps):
    sensor = MLX90614(bus, check_pec=False, sleep=sleeps)
    bus.corrupt_pec()

    reading = sensor.read()

    assert reading.object_c == pytest.approx(34.5, abs=0.01)
    assert sensor.stats == ReadStats(reads=2, pec_mismatches=2)
    assert sleeps.calls == []


def test_error_flag_is_an_error_not_a_reading(bus, sensor):
    bus.set_error_flag()

    with pytest.raises(SensorError) as caught:
        sensor.read()

    assert caught.value.errno == errno.EIO
    assert "error flag" in str(caught.value)
    # Not retried: the flag is the sensor's verdict, not a bus glitch.
    assert bus.requests == [(0x5A, RAM_TA)]
    assert sensor.stats == ReadStats(reads=1, error_flags=1, failures=1)


@pytest.mark.parametrize(
    ("object_c", "ambient_c"),
    [(381.0, 24.0), (-71.0, 24.0), (34.0, 126.0), (34.0, -41.0)],
)
def test_value_outside_physical_range_is_an_error(bus, sensor, object_c, ambient_c):
    bus.object_c, bus.ambient_c = object_c, ambient_c

    with pytest.raises(SensorError) as caught:
        sensor.read()

    assert caught.value.errno == errno.ERANGE
    assert sensor.stats.out_of_range == 1


def test_edges_of_the_physical_range_are_readings(bus, sensor):
    bus.object_c, bus.ambient_c = 379.9, -39.9

    reading = sensor.read()

    assert reading.object_c == pytest.approx(379.9, abs=0.01)
    assert reading.ambient_c == pytest.approx(-39.9, abs=0.01)


def test_stuck_word_is_read_as_is(bus, sensor):
    bus.stick(celsius_to_raw(30.0))
    bus.object_c = 36.0

    assert astuple(sensor.read()) == pytest.approx((30.0, 30.0), abs=0.01)


def test_drift_moves_object_temperature_per_read(bus, sensor):
    bus.drift(0.5)

    objects = [sensor.read().object_c for _ in range(3)]

    assert objects == pytest.approx([34.5, 35.0, 35.5], abs=0.01)


def test_unplugged_sensor_raises_with_remote_io_errno(bus, sensor):
    bus.unplug()

    with pytest.raises(SensorError) as caught:
        sensor.read()

    assert caught.value.errno == errno.EREMOTEIO
    bus.plug_in()
    assert sensor.read().ambient_c == pytest.approx(24.0, abs=0.01)


def test_wrong_address_is_like_unplugged(bus, sleeps):
    sensor = MLX90614(bus, 0x5B, sleep=sleeps)

    with pytest.raises(SensorError) as caught:
        sensor.read()

    assert caught.value.errno == errno.EREMOTEIO


# -- lifecycle ---------------------------------------------------------------


def test_close_is_idempotent_and_leaves_a_shared_bus_open(bus, sensor):
    sensor.close()
    sensor.close()

    assert not bus.closed
    with pytest.raises(SensorError) as caught:
        sensor.read()
    assert caught.value.errno == errno.EBADF


def test_owned_bus_is_closed_by_the_context_manager(bus, sleeps):
    with MLX90614(bus, owns_bus=True, sleep=sleeps) as sensor:
        sensor.read()

    assert bus.closed


def test_invalid_arguments():
    bus = SimulatedMLX90614Bus()
    with pytest.raises(ValueError):
        MLX90614(bus, 0x80)
    with pytest.raises(ValueError):
        MLX90614(bus, retries=-1)


def test_two_drivers_on_one_bus_share_the_lock_and_both_read_cleanly(bus, sleeps):
    first = MLX90614(bus, sleep=sleeps)
    second = MLX90614(bus, sleep=sleeps)
    errors: list[BaseException] = []

    def work(sensor: MLX90614) -> None:
        try:
            for _ in range(200):
                sensor.read()
        except BaseException as exc:  # surfaced to the test thread below
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(s,)) for s in (first, second)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    assert errors == []
    assert first.stats == second.stats == ReadStats(reads=400)
    assert len(bus.requests) == 800


def test_bus_lock_is_one_per_bus_object():
    from drivers.mlx90614 import bus_lock

    one, other = SimulatedMLX90614Bus(), SimulatedMLX90614Bus()

    assert bus_lock(one) is bus_lock(one)
    assert bus_lock(one) is not bus_lock(other)


def test_open_smbus_reports_a_missing_bus_as_sensor_error_with_errno():
    from drivers.mlx90614 import open_smbus

    with pytest.raises(SensorError) as caught:
        open_smbus(250)  # no /dev/i2c-250 on a laptop, in CI or on a Pi

    assert caught.value.errno == errno.ENOENT
    with pytest.raises(SensorError):
        MLX90614.open(250)
