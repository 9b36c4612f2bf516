"""Gate inputs with device meaning: the exit (request-to-exit) button and the door contact.

Both are wired active-low by default: the pin has the internal pull-up and
the switch connects it to GND, so a cut wire reads as "not pressed" for the
button and as "open" for the door contact — the safe readings. Debounce is
two-staged: the backend ignores edges within `bouncetime_ms` of the last
one, and these classes report only real state changes.
"""

from __future__ import annotations

import threading
from collections.abc import Callable

from drivers.gpio import Pins
from drivers.lifecycle import Closeable

DEFAULT_BOUNCE_MS = 50


class _Input(Closeable):
    def __init__(
        self, pins: Pins, pin: int, *, pull_up: bool, active_low: bool, bouncetime_ms: int
    ) -> None:
        self._pins = pins
        self.pin = pin
        self._active_low = active_low
        self._lock = threading.Lock()
        self._closed = False
        pins.setup_input(pin, pull_up=pull_up)
        self._active = self._is_active(pins.read(pin))
        pins.add_edge_callback(pin, self._on_edge, bouncetime_ms)

    def _is_active(self, level: bool) -> bool:
        return level != self._active_low

    def _on_edge(self, pin: int, level: bool) -> None:
        active = self._is_active(level)
        with self._lock:
            # A bounce that slipped past the backend shows up as a repeat of the state.
            if self._closed or active == self._active:
                return
            self._active = active
        self._changed(active)

    def _changed(self, active: bool) -> None:
        raise NotImplementedError

    def close(self) -> None:
        """Stop reporting; idempotent. The pin stays set up (`Pins` owns it)."""
        with self._lock:
            self._closed = True


class ExitButton(_Input):
    """Calls `on_press()` once per press (not on release). The callback runs
    on the GPIO event thread: keep it short, hand work to a queue."""

    def __init__(
        self,
        pins: Pins,
        pin: int,
        on_press: Callable[[], None],
        *,
        pull_up: bool = True,
        active_low: bool = True,
        bouncetime_ms: int = DEFAULT_BOUNCE_MS,
    ) -> None:
        self._on_press = on_press
        super().__init__(
            pins, pin, pull_up=pull_up, active_low=active_low, bouncetime_ms=bouncetime_ms
        )

    @property
    def is_pressed(self) -> bool:
        with self._lock:
            return self._active

    def _changed(self, active: bool) -> None:
        if active:
            self._on_press()


class DoorContact(_Input):
    """Calls `on_change(is_open)` when the door opens or closes. Closed
    contact = active (low, by default); a cut wire therefore reads open."""

    def __init__(
        self,
        pins: Pins,
        pin: int,
        on_change: Callable[[bool], None],
        *,
        pull_up: bool = True,
        active_low: bool = True,
        bouncetime_ms: int = DEFAULT_BOUNCE_MS,
    ) -> None:
        self._on_change = on_change
        super().__init__(
            pins, pin, pull_up=pull_up, active_low=active_low, bouncetime_ms=bouncetime_ms
        )

    @property
    def is_open(self) -> bool:
        with self._lock:
            return not self._active

    def _changed(self, active: bool) -> None:
        self._on_change(not active)
