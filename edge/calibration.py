"""Per-device skin→body offset: `menwei gate calibrate --reference C` and its stored result.

A person (or a black-body reference) is measured by the gate's sensor and by a
reference thermometer; the difference becomes this device's offset, stored in
`calibration.json` beside gate.db and used instead of the [thermometer]
defaults from then on.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path

from drivers.screening import BodyOffset, Screener, calibrate
from edge.config import OFFSET_C, GateConfig
from protocol.errors import ProtocolError
from protocol.files import read_bounded

CALIBRATION_FILE = "calibration.json"


class CalibrationError(ProtocolError):
    """No steady reading to calibrate with, or an implausible reference."""


@dataclass(frozen=True)
class Calibration:
    offset: BodyOffset
    reference_c: float
    skin_c: float
    ambient_c: float
    at: str

    def to_json(self) -> dict[str, object]:
        return {**asdict(self), "offset": asdict(self.offset)}


def calibration_path(config: GateConfig) -> Path:
    return config.data_dir / CALIBRATION_FILE


def default_offset(config: GateConfig) -> BodyOffset:
    t = config.thermometer
    return BodyOffset(base_c=t.offset_c, per_ambient_c=t.offset_per_ambient_c)


def load_offset(config: GateConfig) -> BodyOffset:
    """The calibrated offset if this device has one, else the configured default."""
    try:
        data = json.loads(read_bounded(calibration_path(config), "calibration"))
        offset = BodyOffset(**data["offset"])
    except FileNotFoundError:
        return default_offset(config)
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise CalibrationError(f"{calibration_path(config)} is unreadable: {exc}") from None
    if offset.base_c not in OFFSET_C:  # also nan, which json reads
        raise CalibrationError(
            f"{calibration_path(config)}: offset {offset.base_c} °C is outside {OFFSET_C};"
            " run `menwei gate calibrate` again"
        )
    return offset


def run_calibration(config: GateConfig, screener: Screener, reference_c: float) -> Calibration:
    if not 35.0 <= reference_c <= 42.0:
        raise CalibrationError("--reference must be a body temperature, 35.0..42.0 °C")
    s = screener.measure()
    if s.skin_c is None or s.ambient_c is None or s.error is not None:
        raise CalibrationError(f"no steady reading to calibrate with: {s.error}")
    slope = config.thermometer.offset_per_ambient_c
    offset = calibrate(s.skin_c, s.ambient_c, reference_c, per_ambient_c=slope)
    if offset.base_c not in OFFSET_C:
        raise CalibrationError(
            f"the sensor read {s.skin_c:.1f} °C for a {reference_c:.1f} °C body: an offset of"
            f" {offset.base_c:.1f} °C is outside {OFFSET_C} (aim it at a forehead 2-5 cm away)"
        )
    result = Calibration(
        offset, reference_c, s.skin_c, s.ambient_c, datetime.now(UTC).isoformat(timespec="seconds")
    )
    path = calibration_path(config)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(result.to_json(), indent=1), encoding="utf-8")
    os.replace(tmp, path)
    return result
