"""A simulated I2C bus with an MLX90614 on it, answering at the register level.

It speaks the subset of `smbus2.SMBus` that `drivers.mlx90614` uses, computes
the PEC the way the sensor does, and injects the faults seen on real gates:
bus errors (clock stretching on a Pi, long cables), corrupted PEC bytes, the
sensor's error flag, a stuck or drifting value, and an unplugged sensor.
All state sits behind one lock: the gate process and a simulator thread
(a demo scene changing `object_c`) may use the bus at once.
"""

from __future__ import annotations

import errno
import os
import threading

from drivers.lifecycle import Closeable
from drivers.mlx90614 import (
    DEFAULT_ADDRESS,
    EEPROM_EMISSIVITY,
    ERROR_FLAG,
    RAM_TA,
    RAM_TOBJ1,
    RAM_TOBJ2,
    celsius_to_raw,
    read_word_pec,
)

_TEMPERATURE_COMMANDS = (RAM_TA, RAM_TOBJ1, RAM_TOBJ2)


def _os_error(code: int) -> OSError:
    # Built like the kernel's errors reach smbus2: errno and strerror set.
    return OSError(code, os.strerror(code))


class SimulatedMLX90614Bus(Closeable):
    """An SMBus with one simulated MLX90614 at `address`.

    Temperatures are °C, `emissivity` 0.1..1.0. `requests` records every
    `(address, command)` the master sent, including failed ones.
    Fault counts (`times`) are per bus transaction; `None` means always.
    """

    _io_failures: int | None
    _pec_corruptions: int | None
    _stuck_raw: int | None

    def __init__(
        self,
        address: int = DEFAULT_ADDRESS,
        *,
        object_c: float = 34.5,
        ambient_c: float = 24.0,
        emissivity: float = 1.0,
    ) -> None:
        self._lock = threading.RLock()
        self.address = address
        self._object_c = object_c
        self._ambient_c = ambient_c
        self._emissivity = emissivity
        self.requests: list[tuple[int, int]] = []
        self.closed = False
        self.clear_faults()

    # -- the scene ---------------------------------------------------------

    @property
    def object_c(self) -> float:
        with self._lock:
            return self._object_c

    @object_c.setter
    def object_c(self, value: float) -> None:
        with self._lock:
            self._object_c = value

    @property
    def ambient_c(self) -> float:
        with self._lock:
            return self._ambient_c

    @ambient_c.setter
    def ambient_c(self, value: float) -> None:
        with self._lock:
            self._ambient_c = value

    @property
    def emissivity(self) -> float:
        with self._lock:
            return self._emissivity

    @emissivity.setter
    def emissivity(self, value: float) -> None:
        if not 0.1 <= value <= 1.0:
            raise ValueError("emissivity must be within 0.1..1.0")
        with self._lock:
            self._emissivity = value

    # -- fault injection ----------------------------------------------------

    def fail_io(self, code: int = errno.EIO, *, times: int | None = None) -> None:
        """The next `times` transactions (or all) raise `OSError(code)`:
        EIO for a NACK/bus error, ENXIO or EREMOTEIO for no answer."""
        with self._lock:
            self._io_errno = code
            self._io_failures = times

    def corrupt_pec(self, *, times: int | None = None) -> None:
        """The next `times` answers (or all) carry a wrong PEC byte."""
        with self._lock:
            self._pec_corruptions = times

    def set_error_flag(self, on: bool = True) -> None:
        """Temperature words come back with bit 15 (error flag) set."""
        with self._lock:
            self._error_flag = on

    def stick(self, raw: int | None) -> None:
        """Every temperature register answers this raw word; `None` unsticks."""
        with self._lock:
            self._stuck_raw = raw

    def drift(self, c_per_read: float) -> None:
        """After each object read, the object temperature moves by this many °C."""
        with self._lock:
            self._drift_c = c_per_read

    def unplug(self) -> None:
        """No device answers at the address (the kernel reports EREMOTEIO)."""
        with self._lock:
            self._unplugged = True

    def plug_in(self) -> None:
        with self._lock:
            self._unplugged = False

    def clear_faults(self) -> None:
        with self._lock:
            self._io_errno = errno.EIO
            self._io_failures = 0
            self._pec_corruptions = 0
            self._error_flag = False
            self._stuck_raw = None
            self._drift_c = 0.0
            self._unplugged = False

    # -- smbus2.SMBus subset -------------------------------------------------

    def read_i2c_block_data(
        self, i2c_addr: int, register: int, length: int, force: bool | None = None
    ) -> list[int]:
        """Read Word with PEC: answers `[lsb, msb, pec]` (then 0xFF if more asked)."""
        with self._lock:
            if self.closed:
                raise _os_error(errno.EBADF)
            self.requests.append((i2c_addr, register))
            if i2c_addr != self.address or self._unplugged:
                raise _os_error(errno.EREMOTEIO)
            if self._io_failures is None or self._io_failures > 0:
                if self._io_failures is not None:
                    self._io_failures -= 1
                raise _os_error(self._io_errno)
            word = self._word(register)
            lsb, msb = word & 0xFF, word >> 8
            pec = read_word_pec(i2c_addr, register, lsb, msb)
            if self._pec_corruptions is None or self._pec_corruptions > 0:
                if self._pec_corruptions is not None:
                    self._pec_corruptions -= 1
                pec ^= 0x01
            return ([lsb, msb, pec] + [0xFF] * length)[:length]

    def close(self) -> None:
        with self._lock:
            self.closed = True

    # -- the register map ------------------------------------------------------

    def _word(self, command: int) -> int:
        if command == EEPROM_EMISSIVITY:
            return round(self._emissivity * 0xFFFF)
        if command not in _TEMPERATURE_COMMANDS:
            # The driver has no business elsewhere; fail loudly rather than invent data.
            raise _os_error(errno.EIO)
        if self._stuck_raw is not None:
            return self._stuck_raw & 0xFFFF
        if command == RAM_TA:
            word = celsius_to_raw(self._ambient_c)
        else:
            word = celsius_to_raw(self._object_c)
            if command == RAM_TOBJ1:
                self._object_c += self._drift_c
        word &= 0x7FFF
        if self._error_flag:
            word |= ERROR_FLAG
        return word
