"""Body temperatures a person can have: the one range the gate, the collector and visitor
registration accept (°C).

Wider than human core temperature on purpose: a screen must report a high fever, not drop
it; below 34 °C (or above 43 °C) the thermometer saw something other than a forehead (a wall,
a hot drink). A gate turns such a reading into `no_temperature` (the guard decides); the
collector refuses an event that carries one; a visitor cannot be registered with one.
(drivers/screening.py, which imports nothing of ours, is handed this range by the gate.)
"""

from __future__ import annotations

import math

PLAUSIBLE_BODY_C = (34.0, 43.0)


def plausible_body(t: float | None) -> bool:
    """Whether `t` (°C) is a body temperature: finite and within PLAUSIBLE_BODY_C."""
    low, high = PLAUSIBLE_BODY_C
    return t is not None and math.isfinite(t) and low <= t <= high
