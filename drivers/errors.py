"""Typed errors of the hardware layer.

One root (`DriverError`) for the package; each error that stands for an I/O
failure also inherits the matching built-in (`OSError`), so callers that
already handle `OSError` keep working and the errno survives.
"""

from __future__ import annotations


class DriverError(Exception):
    """Root of every error raised by `drivers`."""


class SensorError(DriverError, OSError):
    """A sensor could not be read, or answered with a value that cannot be trusted."""


class PecError(SensorError):
    """The SMBus packet error code (CRC-8) of a read did not match its data."""


class CameraError(DriverError, OSError):
    """The camera could not be opened or stopped delivering frames."""


class GpioError(DriverError, OSError):
    """A GPIO pin could not be set up, driven or read."""


class SystemClockError(DriverError, OSError):
    """The kernel's clock state could not be read (not Linux, no adjtimex, the call failed)."""
