"""The gate's devices, built once from gate.toml: real backends or their simulated peers.

The simulated peers sit at the lowest layer (an SMBus answering the MLX90614's
registers, a recording GPIO, a folder of camera frames), so every driver above
them is the real code.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field

from drivers.camera import SupervisedCamera, open_source
from drivers.gpio import FakePins, Pins, RPiGPIOPins
from drivers.mlx90614 import MLX90614
from drivers.outputs import Indicator, Relay, ThreadScheduler
from drivers.qr import QrDecoder
from drivers.screening import Screener
from drivers.sim_i2c import SimulatedMLX90614Bus
from drivers.thermometer import Thermometer
from edge.calibration import load_offset
from edge.config import GateConfig
from protocol.temperature import PLAUSIBLE_BODY_C


@dataclass
class GateHardware:
    camera: SupervisedCamera
    decoder: QrDecoder
    pins: Pins
    relay: Relay
    indicator: Indicator
    screener: Screener | None
    thermometer: Thermometer | None
    sim_bus: SimulatedMLX90614Bus | None = None
    timers: ThreadScheduler | None = None
    """The one thread the relay's and indicator's timers run on (closed after them)."""
    closers: list[object] = field(default_factory=list)

    def safe(self) -> None:
        """Outputs to their safe state (relay per fail-secure/fail-safe, LEDs and buzzer off)."""
        with contextlib.suppress(Exception):
            self.indicator.safe()
        with contextlib.suppress(Exception):
            self.relay.safe()

    def close(self) -> None:
        self.safe()
        parts = (
            self.camera,
            self.indicator,
            self.relay,
            self.timers,
            self.screener,
            self.thermometer,
        )
        for part in (*parts, self.pins):
            close = getattr(part, "close", None)
            if close is not None:
                with contextlib.suppress(Exception):
                    close()


def build_hardware(config: GateConfig) -> GateHardware:
    cam = config.camera
    source = cam.source
    if source.split(":", 1)[0] in ("folder", "watch", "video"):
        kind, _, rel = source.partition(":")
        source = f"{kind}:{config.resolve(rel)}"
    camera = SupervisedCamera(
        lambda: open_source(
            source,
            width=cam.width,
            height=cam.height,
            fps=cam.fps,
            delete=True,
            realtime=cam.video_pace == "realtime",
        )
    )
    g = config.gpio
    pins: Pins = FakePins() if g.backend == "simulated" else RPiGPIOPins()
    timers = ThreadScheduler()  # one thread for every relay and indicator timer
    relay = Relay(
        pins,
        g.relay_pin,
        active_low=g.relay_active_low,
        fail_secure=g.fail_secure,
        scheduler=timers,
    )
    indicator = Indicator(pins, g.green_pin, g.red_pin, g.buzzer_pin, scheduler=timers)
    t = config.thermometer
    sim_bus: SimulatedMLX90614Bus | None = None
    thermometer: Thermometer | None
    if t.backend == "none":
        thermometer = None
    elif t.backend == "simulated":
        sim_bus = SimulatedMLX90614Bus(t.address)
        thermometer = MLX90614(sim_bus, t.address, check_pec=t.check_pec)
    else:
        thermometer = MLX90614.open(t.i2c_bus, t.address, check_pec=t.check_pec)
    screener = None
    if thermometer is not None:
        screener = Screener(
            thermometer,
            samples=t.samples,
            tolerance_c=t.tolerance_c,
            interval_s=t.interval_s,
            timeout_s=t.timeout_s,
            offset=load_offset(config),
            plausible_body_c=PLAUSIBLE_BODY_C,
        )
    return GateHardware(
        camera, QrDecoder(), pins, relay, indicator, screener, thermometer, sim_bus, timers
    )
