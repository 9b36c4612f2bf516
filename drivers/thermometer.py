"""The thermometer seam: what the screening pipeline needs from any IR sensor.

A single-spot sensor (MLX90614, MLX90632) answers one object temperature; a
thermal array (MLX90640, AMG8833) can satisfy the same interface by reporting
the hottest plausible forehead pixel as `object_c`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol, runtime_checkable


@dataclass(frozen=True)
class ThermalReading:
    """One reading of an IR thermometer.

    `object_c` is the surface temperature of what the sensor sees (skin, at a
    gate), not body core temperature; `ambient_c` is the sensor's own die
    temperature, which tracks the air around the gate. Both in °C.
    """

    object_c: float
    ambient_c: float


@runtime_checkable
class Thermometer(Protocol):
    """An IR thermometer. `read` raises `drivers.errors.SensorError` when it
    cannot produce a trustworthy reading; it never returns a garbage value."""

    def read(self) -> ThermalReading: ...

    def close(self) -> None: ...
