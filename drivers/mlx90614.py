"""Register-level driver for the Melexis MLX90614 IR thermometer over SMBus.

Limits that shape this driver:

- The MLX90614 is an SMBus device: at most 100 kHz. On a Raspberry Pi set
  ``dtparam=i2c_arm=on,i2c_arm_baudrate=100000``; faster clocks give NACKs
  and corrupted words.
- It stretches the clock. The BCM283x I2C controller (Pi 1-4) handles clock
  stretching badly, which shows up as occasional ``OSError`` (EIO/EREMOTEIO)
  or a corrupted word. That is why every read checks the PEC byte and
  failed reads are retried a bounded number of times.
- A RAM word carries an error flag in bit 15; a flagged word or a value
  outside the sensor's physical range is an error, never a reading.

Temperatures are °C; the raw unit is 0.02 K.
"""

from __future__ import annotations

import errno
import threading
import time
import weakref
from collections.abc import Callable, Iterable
from dataclasses import dataclass, replace
from typing import Any, Protocol, Self

from drivers.errors import PecError, SensorError
from drivers.lifecycle import Closeable
from drivers.thermometer import ThermalReading

DEFAULT_ADDRESS = 0x5A
MAX_BUS_HZ = 100_000

# Command byte = opcode | register. RAM reads use opcode 0b000x_xxxx,
# EEPROM accesses 0b001x_xxxx.
RAM_ACCESS = 0x00
EEPROM_ACCESS = 0x20
RAM_TA = RAM_ACCESS | 0x06
RAM_TOBJ1 = RAM_ACCESS | 0x07
RAM_TOBJ2 = RAM_ACCESS | 0x08
EEPROM_EMISSIVITY = EEPROM_ACCESS | 0x04

ERROR_FLAG = 0x8000
KELVIN_PER_LSB = 0.02
ZERO_CELSIUS_K = 273.15

# Datasheet operating/measurement ranges of the standard (-AAA/-BAA) parts.
OBJECT_RANGE_C = (-70.0, 380.0)
AMBIENT_RANGE_C = (-40.0, 125.0)

_PEC_POLY = 0x07  # x^8 + x^2 + x + 1, as in the SMBus specification


class SMBusLike(Protocol):
    """The part of `smbus2.SMBus` this driver uses."""

    def read_i2c_block_data(
        self, i2c_addr: int, register: int, length: int, force: bool | None = None
    ) -> list[int]: ...

    def close(self) -> None: ...


def smbus_pec(data: Iterable[int]) -> int:
    """SMBus packet error code: CRC-8, polynomial 0x07, initial value 0, no reflection."""
    crc = 0
    for byte in data:
        crc ^= byte & 0xFF
        for _ in range(8):
            crc = ((crc << 1) ^ _PEC_POLY) & 0xFF if crc & 0x80 else (crc << 1) & 0xFF
    return crc


def read_word_pec(address: int, command: int, lsb: int, msb: int) -> int:
    """The PEC a device sends after a Read Word of `command`: it covers the
    write address, the command, the repeated-start read address and the data."""
    return smbus_pec([address << 1, command, (address << 1) | 1, lsb, msb])


def raw_to_celsius(raw: int) -> float:
    """Convert a 15-bit temperature word (0.02 K per LSB) to °C."""
    return raw * KELVIN_PER_LSB - ZERO_CELSIUS_K


def celsius_to_raw(celsius: float) -> int:
    """Inverse of `raw_to_celsius`, rounded to the nearest LSB."""
    return round((celsius + ZERO_CELSIUS_K) / KELVIN_PER_LSB)


@dataclass(frozen=True)
class ReadStats:
    """Counters since the driver was created, for the gate's health report.

    `reads`: register reads requested; `retries`: extra bus attempts after a
    failed one; `pec_mismatches`: words whose PEC did not match (counted also
    when `check_pec` is off); `error_flags`: words with bit 15 set;
    `out_of_range`: words outside the physical range; `failures`: reads that
    ended in a `SensorError`.
    """

    reads: int = 0
    retries: int = 0
    pec_mismatches: int = 0
    error_flags: int = 0
    out_of_range: int = 0
    failures: int = 0


# Every driver on the same bus object shares one lock, whoever created it
# (smbus2 best practice: one bus object, serialised access).
_bus_locks: weakref.WeakKeyDictionary[Any, threading.Lock] = weakref.WeakKeyDictionary()
_bus_locks_guard = threading.Lock()


def bus_lock(bus: object) -> threading.Lock:
    """The lock that serialises transactions on `bus` across all drivers."""
    with _bus_locks_guard:
        try:
            lock = _bus_locks.get(bus)
            if lock is None:
                lock = threading.Lock()
                _bus_locks[bus] = lock
        except TypeError:
            # Not weak-referenceable: this driver alone serialises its use.
            lock = threading.Lock()
        return lock


def open_smbus(bus_number: int) -> Any:
    """Open ``/dev/i2c-<bus_number>`` with smbus2 (bus 1 on a Pi header pins 3/5).

    Imported lazily so the package imports where smbus2 or the device is absent.
    Raises `SensorError` (with the errno) when the bus cannot be opened.
    """
    import smbus2

    try:
        return smbus2.SMBus(bus_number)
    except OSError as exc:
        raise SensorError(exc.errno, f"cannot open I2C bus {bus_number}: {exc.strerror}") from exc


class MLX90614(Closeable):
    """MLX90614 on an SMBus, implementing `drivers.thermometer.Thermometer`.

    `bus` is shared: the driver does not close it unless `owns_bus` is true
    (as with `MLX90614.open`). A failed bus transaction (`OSError`) or a PEC
    mismatch is retried up to `retries` times, `retry_delay_s` seconds apart
    (outside the bus lock, so other devices get the bus meanwhile); the final
    `SensorError` keeps the errno of the last failure. The error flag and
    out-of-range values are not retried: they come from the sensor itself.
    """

    def __init__(
        self,
        bus: SMBusLike,
        address: int = DEFAULT_ADDRESS,
        *,
        check_pec: bool = True,
        retries: int = 3,
        retry_delay_s: float = 0.005,
        owns_bus: bool = False,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        if not 0x03 <= address <= 0x77:
            raise ValueError(f"I2C address out of range: {address:#x}")
        if retries < 0:
            raise ValueError("retries must be >= 0")
        self._bus = bus
        self.address = address
        self.check_pec = check_pec
        self.retries = retries
        self.retry_delay_s = retry_delay_s
        self._owns_bus = owns_bus
        self._sleep = sleep
        self._bus_lock = bus_lock(bus)
        self._stats_lock = threading.Lock()
        self._stats = ReadStats()
        self._closed = False

    @classmethod
    def open(cls, bus_number: int = 1, address: int = DEFAULT_ADDRESS, **kwargs: Any) -> Self:
        """Open the bus and a driver that closes it on `close()`."""
        return cls(open_smbus(bus_number), address, owns_bus=True, **kwargs)

    @property
    def stats(self) -> ReadStats:
        """A snapshot of the counters."""
        with self._stats_lock:
            return self._stats

    def read(self) -> ThermalReading:
        """Read ambient (Ta) and object (Tobj1) temperature, °C."""
        ambient = self._read_temperature(RAM_TA, AMBIENT_RANGE_C, "ambient")
        obj = self._read_temperature(RAM_TOBJ1, OBJECT_RANGE_C, "object")
        return ThermalReading(object_c=obj, ambient_c=ambient)

    def read_object2_c(self) -> float:
        """Second object channel (Tobj2), °C; meaningful on dual-zone parts only."""
        return self._read_temperature(RAM_TOBJ2, OBJECT_RANGE_C, "object 2")

    def read_emissivity(self) -> float:
        """Configured emissivity, 0.1..1.0 (EEPROM word / 65535)."""
        return self._read_word(EEPROM_EMISSIVITY) / 0xFFFF

    def close(self) -> None:
        """Stop using the sensor; closes the bus only when this driver owns it."""
        if self._closed:
            return
        self._closed = True
        if self._owns_bus:
            self._bus.close()

    def _count(self, **increments: int) -> None:
        with self._stats_lock:
            current = self._stats
            self._stats = replace(
                current, **{name: getattr(current, name) + n for name, n in increments.items()}
            )

    def _read_temperature(self, command: int, limits: tuple[float, float], what: str) -> float:
        word = self._read_word(command)
        if word & ERROR_FLAG:
            self._count(error_flags=1, failures=1)
            raise SensorError(
                errno.EIO, f"MLX90614 {self.address:#04x}: error flag set in {what} word"
            )
        celsius = raw_to_celsius(word)
        low, high = limits
        if not low <= celsius <= high:
            self._count(out_of_range=1, failures=1)
            raise SensorError(
                errno.ERANGE,
                f"MLX90614 {self.address:#04x}: {what} {celsius:.2f} °C outside "
                f"{low:g}..{high:g} °C",
            )
        return celsius

    def _read_word(self, command: int) -> int:
        if self._closed:
            raise SensorError(errno.EBADF, "MLX90614 driver is closed")
        self._count(reads=1)
        attempt = 0
        while True:
            try:
                return self._transfer(command)
            except OSError as exc:
                if attempt >= self.retries:
                    self._count(failures=1)
                    if isinstance(exc, SensorError):
                        raise
                    raise SensorError(
                        exc.errno,
                        f"MLX90614 {self.address:#04x}: read of {command:#04x} failed after "
                        f"{attempt + 1} attempts: {exc.strerror or exc}",
                    ) from exc
            attempt += 1
            self._count(retries=1)
            self._sleep(self.retry_delay_s)

    def _transfer(self, command: int) -> int:
        """One bus transaction: Read Word with PEC. Raises OSError or PecError."""
        with self._bus_lock:
            data = self._bus.read_i2c_block_data(self.address, command, 3)
        if len(data) != 3:
            raise SensorError(errno.EIO, f"short read: {len(data)} bytes")
        lsb, msb, pec = data
        expected = read_word_pec(self.address, command, lsb, msb)
        if pec != expected:
            self._count(pec_mismatches=1)
            if self.check_pec:
                raise PecError(
                    errno.EBADMSG,
                    f"MLX90614 {self.address:#04x}: PEC {pec:#04x} != {expected:#04x} "
                    f"for command {command:#04x}",
                )
        return (msb << 8) | lsb
