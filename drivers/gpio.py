"""The GPIO pin seam: raw levels in and out, nothing about relays or buttons.

Pins are BCM numbers; values are electrical levels (True = high, 3.3 V).
Device meaning (active-low relay, closed contact = low) lives in
`drivers.outputs` and `drivers.inputs`. Backends:

- `RPiGPIOPins`: the RPi.GPIO API. On a Pi 5 RPi.GPIO itself does not work
  (the header moved to the RP1 chip); install `rpi-lgpio`, which provides
  the same ``RPi.GPIO`` module on top of lgpio. Do not install both.
- `FakePins`: a recording peer for tests and the demo.
- `FakeRPiGPIO`: a recording fake of the RPi.GPIO *module*, so tests run the
  real backend's code: ``RPiGPIOPins(gpio_module=FakeRPiGPIO())``.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal, NamedTuple, Protocol

from drivers.errors import GpioError
from drivers.lifecycle import Closeable

EdgeCallback = Callable[[int, bool], None]
"""Called with (pin, level read after the edge) on every accepted edge."""

Mode = Literal["in", "out"]

BCM_PINS = range(28)  # GPIO0..GPIO27 on the 40-pin header


class Pins(Protocol):
    def setup_output(self, pin: int, initial: bool) -> None: ...

    def setup_input(self, pin: int, pull_up: bool) -> None: ...

    def write(self, pin: int, value: bool) -> None: ...

    def read(self, pin: int) -> bool: ...

    def add_edge_callback(self, pin: int, callback: EdgeCallback, bouncetime_ms: int) -> None: ...

    def close(self) -> None: ...


class _PinTable:
    """Which pin is set up how; the misuse checks both backends share."""

    def __init__(self) -> None:
        self.modes: dict[int, Mode] = {}
        self.closed = False

    def claim(self, pin: int, mode: Mode) -> None:
        self.check_open()
        if pin not in BCM_PINS:
            raise GpioError(f"GPIO{pin} is not a BCM header pin (0..27)")
        current = self.modes.get(pin)
        # Two devices configured on one pin is a wiring/config bug: say so early.
        if current is not None and current != mode:
            raise GpioError(f"GPIO{pin} is already set up as {current}put")
        self.modes[pin] = mode

    def require(self, pin: int, mode: Mode | None = None) -> None:
        self.check_open()
        current = self.modes.get(pin)
        if current is None:
            raise GpioError(f"GPIO{pin} is not set up")
        if mode is not None and current != mode:
            raise GpioError(f"GPIO{pin} is set up as {current}put, not {mode}put")

    def check_open(self) -> None:
        if self.closed:
            raise GpioError("pins are closed")


class PinChange(NamedTuple):
    """One output level change: monotonic seconds, BCM pin, level."""

    t: float
    pin: int
    value: bool


@dataclass
class _Watch:
    callback: EdgeCallback
    bouncetime_s: float
    last_edge: float | None = None


class FakePins(Closeable):
    """Pins in memory. Output changes are appended to `history` with a
    timestamp from `clock`; inputs are driven from outside with `drive`,
    which fires edge callbacks (honouring bouncetime on the same clock)."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._lock = threading.RLock()
        self._table = _PinTable()
        self._levels: dict[int, bool] = {}
        self._watches: dict[int, list[_Watch]] = {}
        self.history: list[PinChange] = []

    def setup_output(self, pin: int, initial: bool) -> None:
        with self._lock:
            self._table.claim(pin, "out")
            self._set(pin, initial)

    def setup_input(self, pin: int, pull_up: bool) -> None:
        with self._lock:
            self._table.claim(pin, "in")
            self._levels.setdefault(pin, pull_up)

    def write(self, pin: int, value: bool) -> None:
        with self._lock:
            self._table.require(pin, "out")
            self._set(pin, value)

    def read(self, pin: int) -> bool:
        with self._lock:
            self._table.require(pin)
            return self._levels[pin]

    def add_edge_callback(self, pin: int, callback: EdgeCallback, bouncetime_ms: int) -> None:
        with self._lock:
            self._table.require(pin, "in")
            self._watches.setdefault(pin, []).append(_Watch(callback, bouncetime_ms / 1000))

    def drive(self, pin: int, value: bool) -> None:
        """Set an input's level from outside (a button pressed, a door opened)."""
        with self._lock:
            self._table.require(pin, "in")
            if self._levels[pin] == value:
                return
            self._levels[pin] = value
            now = self._clock()
            due = []
            for watch in self._watches.get(pin, []):
                if watch.last_edge is None or now - watch.last_edge >= watch.bouncetime_s:
                    watch.last_edge = now
                    due.append(watch.callback)
        # Outside the lock: callbacks may drive outputs, as they do on a Pi.
        for callback in due:
            callback(pin, value)

    def level(self, pin: int) -> bool:
        """Current level of any set-up pin, for assertions."""
        return self.read(pin)

    def close(self) -> None:
        with self._lock:
            self._table.closed = True
            self._watches.clear()

    def _set(self, pin: int, value: bool) -> None:
        if self._levels.get(pin) != value:
            self._levels[pin] = value
            self.history.append(PinChange(self._clock(), pin, value))


def _import_rpi_gpio() -> Any:
    try:
        import RPi.GPIO
    except (ImportError, RuntimeError) as exc:
        # RPi.GPIO raises RuntimeError on import when not on a Pi.
        raise GpioError(f"RPi.GPIO is not usable here: {exc}") from exc
    return RPi.GPIO


class RPiGPIOPins(Closeable):
    """Pins through the RPi.GPIO API, BCM numbering.

    Works with RPi.GPIO on a Pi 1-4 and with `rpi-lgpio` (same module name)
    on a Pi 5. The process needs access to /dev/gpiomem or /dev/gpiochip*
    (user in group ``gpio``). `close()` cleans up only the pins this object
    set up, leaving other users' pins alone.
    """

    def __init__(self, gpio_module: Any | None = None) -> None:
        self._gpio: Any = gpio_module if gpio_module is not None else _import_rpi_gpio()
        self._table = _PinTable()
        self._lock = threading.Lock()
        self._call(self._gpio.setwarnings, False)
        self._call(self._gpio.setmode, self._gpio.BCM)

    def setup_output(self, pin: int, initial: bool) -> None:
        with self._lock:
            self._table.claim(pin, "out")
            level = self._gpio.HIGH if initial else self._gpio.LOW
            self._call(self._gpio.setup, pin, self._gpio.OUT, initial=level)

    def setup_input(self, pin: int, pull_up: bool) -> None:
        with self._lock:
            self._table.claim(pin, "in")
            pull = self._gpio.PUD_UP if pull_up else self._gpio.PUD_DOWN
            self._call(self._gpio.setup, pin, self._gpio.IN, pull_up_down=pull)

    def write(self, pin: int, value: bool) -> None:
        with self._lock:
            self._table.require(pin, "out")
            self._call(self._gpio.output, pin, self._gpio.HIGH if value else self._gpio.LOW)

    def read(self, pin: int) -> bool:
        with self._lock:
            self._table.require(pin)
            return bool(self._call(self._gpio.input, pin))

    def add_edge_callback(self, pin: int, callback: EdgeCallback, bouncetime_ms: int) -> None:
        def on_edge(channel: int) -> None:
            # RPi.GPIO passes only the channel; for BOTH edges read the level.
            callback(channel, self.read(channel))

        with self._lock:
            self._table.require(pin, "in")
            # RPi.GPIO rejects bouncetime=0; omit it to mean "no debounce".
            extra = {"bouncetime": bouncetime_ms} if bouncetime_ms > 0 else {}
            self._call(self._gpio.add_event_detect, pin, self._gpio.BOTH, callback=on_edge, **extra)

    def close(self) -> None:
        with self._lock:
            if self._table.closed:
                return
            self._table.closed = True
            mine = sorted(self._table.modes)
        # Outside the lock: cleanup stops the event thread, which may be inside
        # one of our callbacks waiting for this lock in `read`.
        if mine:
            self._call(self._gpio.cleanup, mine)

    def _call(self, function: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        try:
            return function(*args, **kwargs)
        except (RuntimeError, ValueError) as exc:
            raise GpioError(f"RPi.GPIO {function.__name__}: {exc}") from exc


@dataclass
class _FakeChannel:
    direction: int
    level: int
    pull: int
    edge: int | None = None
    callback: Callable[[int], None] | None = None
    bouncetime: int | None = None


@dataclass
class FakeRPiGPIO:
    """A recording fake of the RPi.GPIO module API, strict like the real one.

    `calls` lists every API call as ``(name, *args, {kwargs})``. `set_input`
    changes an input's level and runs its edge callback like RPi.GPIO's
    event thread would (bouncetime is recorded, not simulated).
    """

    BOARD = 10
    BCM = 11
    OUT = 0
    IN = 1
    LOW = 0
    HIGH = 1
    PUD_OFF = 20
    PUD_DOWN = 21
    PUD_UP = 22
    RISING = 31
    FALLING = 32
    BOTH = 33

    mode: int | None = None
    warnings: bool = True
    channels: dict[int, _FakeChannel] = field(default_factory=dict)
    calls: list[tuple[Any, ...]] = field(default_factory=list)

    def setwarnings(self, flag: bool) -> None:
        self.calls.append(("setwarnings", flag))
        self.warnings = flag

    def setmode(self, mode: int) -> None:
        self.calls.append(("setmode", mode))
        if mode not in (self.BOARD, self.BCM):
            raise ValueError("An invalid mode was passed to setmode()")
        if self.mode is not None and self.mode != mode:
            raise ValueError("A different mode has already been set!")
        self.mode = mode

    def getmode(self) -> int | None:
        return self.mode

    def setup(
        self, channel: int, direction: int, pull_up_down: int = PUD_OFF, initial: int = -1
    ) -> None:
        self.calls.append(
            ("setup", channel, direction, {"pull_up_down": pull_up_down, "initial": initial})
        )
        if self.mode is None:
            raise RuntimeError("Please set pin numbering mode using GPIO.setmode(GPIO.BOARD)")
        if direction == self.OUT:
            if pull_up_down != self.PUD_OFF:
                raise ValueError("pull_up_down parameter is not valid for outputs")
            level = self.LOW if initial == -1 else initial
            self.channels[channel] = _FakeChannel(self.OUT, level, self.PUD_OFF)
        elif direction == self.IN:
            level = self.HIGH if pull_up_down == self.PUD_UP else self.LOW
            self.channels[channel] = _FakeChannel(self.IN, level, pull_up_down)
        else:
            raise ValueError("An invalid direction was passed to setup()")

    def output(self, channel: int, value: int) -> None:
        self.calls.append(("output", channel, value))
        chan = self.channels.get(channel)
        if chan is None or chan.direction != self.OUT:
            raise RuntimeError("The GPIO channel has not been set up as an OUTPUT")
        chan.level = self.HIGH if value else self.LOW

    def input(self, channel: int) -> int:
        self.calls.append(("input", channel))
        chan = self.channels.get(channel)
        if chan is None:
            raise RuntimeError("You must setup() the GPIO channel first")
        return chan.level

    def add_event_detect(
        self,
        channel: int,
        edge: int,
        callback: Callable[[int], None] | None = None,
        bouncetime: int | None = None,
    ) -> None:
        self.calls.append(("add_event_detect", channel, edge, {"bouncetime": bouncetime}))
        chan = self.channels.get(channel)
        if chan is None or chan.direction != self.IN:
            raise RuntimeError("You must setup() the GPIO channel as an input first")
        if edge not in (self.RISING, self.FALLING, self.BOTH):
            raise ValueError("The edge must be set to RISING, FALLING or BOTH")
        if bouncetime is not None and bouncetime <= 0:
            raise ValueError("Bouncetime must be greater than 0")
        if chan.edge is not None:
            raise RuntimeError("Conflicting edge detection already enabled for this GPIO channel")
        chan.edge, chan.callback, chan.bouncetime = edge, callback, bouncetime

    def remove_event_detect(self, channel: int) -> None:
        self.calls.append(("remove_event_detect", channel))
        chan = self.channels.get(channel)
        if chan is not None:
            chan.edge = chan.callback = None

    def cleanup(self, channel: int | list[int] | None = None) -> None:
        self.calls.append(("cleanup", channel))
        if channel is None:
            targets = list(self.channels)
        elif isinstance(channel, int):
            targets = [channel]
        else:
            targets = list(channel)
        for number in targets:
            self.channels.pop(number, None)
        if not self.channels:
            self.mode = None

    def set_input(self, channel: int, level: bool) -> None:
        """Test hook: an external signal changes an input's level."""
        chan = self.channels[channel]
        new = self.HIGH if level else self.LOW
        if chan.direction != self.IN or chan.level == new:
            return
        chan.level = new
        rising = new == self.HIGH
        if chan.edge == self.BOTH or chan.edge == (self.RISING if rising else self.FALLING):
            self.fire_edge(channel)

    def fire_edge(self, channel: int) -> None:
        """Test hook: run the edge callback without a level change, as when a
        contact bounce slips past bouncetime and the callback reads the settled level."""
        callback = self.channels[channel].callback
        if callback is not None:
            callback(channel)
