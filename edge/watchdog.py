"""systemd notification (sd_notify): READY=1 once running, WATCHDOG=1 from the gate loop.

With `Type=notify` and `WatchdogSec=` in the unit, systemd restarts a gate whose
loop hangs (a stuck camera driver, a deadlock) instead of leaving a dead gate
that looks alive. Outside systemd (no NOTIFY_SOCKET) every call is a no-op.
"""

from __future__ import annotations

import os
import socket
import time


class SystemdNotifier:
    def __init__(self, min_interval_s: float = 2.0) -> None:
        address = os.environ.get("NOTIFY_SOCKET")
        self._address = None
        if address:
            # An abstract socket is written with a leading '@'.
            self._address = "\0" + address[1:] if address.startswith("@") else address
        self._min_interval_s = min_interval_s
        self._last = 0.0
        self.sent: list[str] = []

    def notify(self, message: str) -> bool:
        if self._address is None:
            return False
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as s:
                s.connect(self._address)
                s.sendall(message.encode())
        except OSError:
            return False  # systemd gone: nothing to tell, nothing to break
        self.sent.append(message)
        return True

    def ready(self) -> bool:
        return self.notify("READY=1")

    def alive(self) -> None:
        """Call from the loop; sends at most one WATCHDOG=1 per `min_interval_s`."""
        now = time.monotonic()
        if now - self._last >= self._min_interval_s:
            self._last = now
            self.notify("WATCHDOG=1")

    def stopping(self) -> bool:
        return self.notify("STOPPING=1")
