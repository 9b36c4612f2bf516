"""Temperature screening: from a thermometer's readings to one body temperature or none.

Assumptions (document them wherever a threshold is set):

- An MLX90614 aimed at a forehead from 2-5 cm reads *skin* temperature.
  Indoors (~25 °C) forehead skin sits about 1.5-2.5 °C below core body
  temperature; the default offset takes the middle, 2.0 °C.
- Skin cools with the air: at a winter gate the gap grows. The model is
  linear in ambient, `offset = base_c + per_ambient_c * (ref_ambient_c - ambient_c)`,
  with a default 0.1 °C more offset per °C colder than 25 °C. It is a rough
  field model meant for about 10-35 °C ambient; calibrate per site with
  `calibrate` against a clinical thermometer.
- A reading is only accepted when `samples` consecutive readings agree
  within `tolerance_c` (the person has stopped moving in front of the
  sensor) and the resulting body temperature is physiologically plausible;
  anything else yields `body_c=None`, which the gate must turn into
  `no_temperature` (guard decides), never into an allow.
- `samples` and `interval_s` are the trade between latency and agreement:
  the settle takes at least (samples - 1) x interval_s after the first
  reading (3 x 0.1 s: ~0.2 s). One sample takes the first plausible reading
  at once, with no check that the person stood still.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from statistics import fmean

from drivers.thermometer import ThermalReading, Thermometer

NO_STEADY_READING = "no_steady_reading"
IMPLAUSIBLE_READING = "implausible_reading"
SENSOR_ERROR = "sensor_error"
CANCELLED = "cancelled"


@dataclass(frozen=True)
class BodyOffset:
    """Skin→body correction, °C, linear in ambient temperature."""

    base_c: float = 2.0
    per_ambient_c: float = 0.1
    ref_ambient_c: float = 25.0

    def offset_c(self, ambient_c: float) -> float:
        """How far body temperature lies above skin temperature at `ambient_c`."""
        return self.base_c + self.per_ambient_c * (self.ref_ambient_c - ambient_c)

    def body_c(self, skin_c: float, ambient_c: float) -> float:
        return skin_c + self.offset_c(ambient_c)


DEFAULT_OFFSET = BodyOffset()

# Wider than human core temperature on purpose: the screen must report a
# high fever, not drop it; below 34 °C body it saw something other than a face.
PLAUSIBLE_BODY_C = (34.0, 43.0)


def calibrate(
    reading_skin: float,
    reading_ambient: float,
    reference_c: float,
    *,
    per_ambient_c: float = DEFAULT_OFFSET.per_ambient_c,
    ref_ambient_c: float = DEFAULT_OFFSET.ref_ambient_c,
) -> BodyOffset:
    """The offset that maps this skin/ambient reading to `reference_c` (°C),
    e.g. a clinical thermometer reading of the same person. Keeps the ambient
    slope; only `base_c` is fitted, since one point cannot fit a slope."""
    base_c = reference_c - reading_skin - per_ambient_c * (ref_ambient_c - reading_ambient)
    return BodyOffset(base_c=base_c, per_ambient_c=per_ambient_c, ref_ambient_c=ref_ambient_c)


@dataclass(frozen=True)
class Screening:
    """The outcome of one measurement, °C.

    `body_c` is None whenever the measurement cannot be trusted; `error` then
    says why: ``no_steady_reading``, ``implausible_reading``,
    ``sensor_error: <detail>`` or ``cancelled`` (`Measurement.cancel`).
    `skin_c`/`ambient_c` are the averages of the last readings when there were
    any. `samples_taken` counts attempts, including `failed_samples` that raised.
    """

    body_c: float | None
    skin_c: float | None
    ambient_c: float | None
    samples_taken: int
    error: str | None = None
    failed_samples: int = 0


class Screener:
    """Samples a thermometer until it settles, then applies the body offset.

    `samples` consecutive readings must agree within `tolerance_c` °C of each
    other; between readings it waits `interval_s` seconds; after `timeout_s`
    seconds it gives up with `body_c=None`. An `OSError` from the thermometer
    (every `SensorError` is one) is a failed sample: it breaks the run of
    agreeing readings but does not end the measurement.

    `measure` blocks; `start` measures on the screener's one worker thread, so
    a caller can verify a pass while the reading settles. Measurements run one
    after another, never two at once on the bus.
    """

    def __init__(
        self,
        thermometer: Thermometer,
        *,
        samples: int = 3,
        tolerance_c: float = 0.3,
        timeout_s: float = 3.0,
        interval_s: float = 0.1,
        offset: BodyOffset = DEFAULT_OFFSET,
        plausible_body_c: tuple[float, float] = PLAUSIBLE_BODY_C,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        if samples < 1:
            raise ValueError("samples must be >= 1")
        if tolerance_c < 0 or timeout_s <= 0 or interval_s < 0:
            raise ValueError("tolerance_c, interval_s must be >= 0 and timeout_s > 0")
        self.thermometer = thermometer
        self.samples = samples
        self.tolerance_c = tolerance_c
        self.timeout_s = timeout_s
        self.interval_s = interval_s
        self.offset = offset
        self.plausible_body_c = plausible_body_c
        self._clock = clock
        self._sleep = sleep
        self._worker: ThreadPoolExecutor | None = None
        self._worker_lock = threading.Lock()
        self._last_cancel = threading.Event()  # of the newest measurement started

    def measure(self, cancel: threading.Event | None = None) -> Screening:
        """Sample until the readings agree or `timeout_s` passes; a set `cancel` ends it
        before the next sample (error ``cancelled``)."""
        start = self._clock()
        run: list[ThermalReading] = []
        taken = failed = 0
        last_error: OSError | None = None
        while True:
            if cancel is not None and cancel.is_set():
                return Screening(None, None, None, taken, CANCELLED, failed)
            taken += 1
            try:
                reading = self.thermometer.read()
            except OSError as exc:
                failed += 1
                last_error = exc
                run.clear()
            else:
                run = [*run, reading][-self.samples :]
                if len(run) == self.samples and self._agree(run):
                    return self._result(run, taken, failed)
            if self._clock() - start >= self.timeout_s:
                return self._timed_out(run, taken, failed, last_error)
            self._sleep(self.interval_s)

    def start(self) -> Measurement:
        """Begin a measurement on the worker thread (made on first use); see `Measurement`."""
        cancel = threading.Event()
        with self._worker_lock:
            if self._worker is None:
                self._worker = ThreadPoolExecutor(1, thread_name_prefix="screening")
            future = self._worker.submit(self.measure, cancel)
            self._last_cancel = cancel
        return Measurement(future, cancel)

    def close(self) -> None:
        """Stop the worker thread (a running measurement ends at its next sample)."""
        with self._worker_lock:
            worker, self._worker = self._worker, None
            self._last_cancel.set()  # earlier ones have ended or were cancelled
        if worker is not None:
            worker.shutdown(wait=True, cancel_futures=True)

    def _agree(self, run: list[ThermalReading]) -> bool:
        objects = [r.object_c for r in run]
        return max(objects) - min(objects) <= self.tolerance_c

    def _result(self, run: list[ThermalReading], taken: int, failed: int) -> Screening:
        skin = fmean(r.object_c for r in run)
        ambient = fmean(r.ambient_c for r in run)
        body = self.offset.body_c(skin, ambient)
        low, high = self.plausible_body_c
        if not low <= body <= high:
            return Screening(None, skin, ambient, taken, IMPLAUSIBLE_READING, failed)
        return Screening(body, skin, ambient, taken, None, failed)

    def _timed_out(
        self, run: list[ThermalReading], taken: int, failed: int, last_error: OSError | None
    ) -> Screening:
        # Any failure during the window is why no steady run formed: name the sensor.
        error = NO_STEADY_READING if last_error is None else f"{SENSOR_ERROR}: {last_error}"
        skin = fmean(r.object_c for r in run) if run else None
        ambient = fmean(r.ambient_c for r in run) if run else None
        return Screening(None, skin, ambient, taken, error, failed)


class Measurement:
    """A screening under way on a `Screener`'s worker thread."""

    def __init__(self, future: Future[Screening], cancel: threading.Event) -> None:
        self._future = future
        self._cancel = cancel

    def result(self) -> Screening:
        """Wait for the outcome (at most about the screener's `timeout_s` plus one read).

        Raises what the measurement raised (an `OSError` never: it is a failed sample)."""
        return self._future.result()

    def cancel(self) -> None:
        """Not needed any more (the pass was refused): end it before its next sample."""
        self._cancel.set()
        self._future.cancel()
