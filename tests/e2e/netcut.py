"""A TCP relay between one gate and its broker that a test can cut: a real network outage.

The gate connects to the relay's port; every connection is spliced to the broker. `cut()`
closes the live connections (the broker sees the gate vanish and sends its Last Will) and
makes new ones fail at once until `restore()`. Nothing of ours runs inside: bytes are
copied as they are.
"""

from __future__ import annotations

import contextlib
import selectors
import socket
import threading


class NetCut:
    def __init__(self, target_host: str, target_port: int, *, tls: bool = False) -> None:
        """`tls`: the broker speaks TLS (the relay copies its bytes all the same); `url` says
        mqtts://127.0.0.1, a name of every broker certificate `menwei broker setup` makes."""
        self.target = (target_host, target_port)
        self.tls = tls
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = int(self._listener.getsockname()[1])
        self._lock = threading.Lock()
        self._pairs: list[tuple[socket.socket, socket.socket]] = []
        self._down = False
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._accept, name="netcut", daemon=True)
        self._thread.start()

    @property
    def down(self) -> bool:
        with self._lock:
            return self._down

    @property
    def url(self) -> str:
        return f"{'mqtts' if self.tls else 'mqtt'}://127.0.0.1:{self.port}"

    def cut(self) -> None:
        with self._lock:
            self._down = True
            pairs, self._pairs = self._pairs, []
        for a, b in pairs:
            for s in (a, b):
                with contextlib.suppress(OSError):
                    s.shutdown(socket.SHUT_RDWR)
                s.close()

    def restore(self) -> None:
        with self._lock:
            self._down = False

    def close(self) -> None:
        self._stop.set()
        self.cut()
        self._listener.close()
        self._thread.join(timeout=5)

    def _accept(self) -> None:
        self._listener.settimeout(0.2)
        while not self._stop.is_set():
            try:
                client, _ = self._listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            with self._lock:
                down = self._down
            if down:
                client.close()  # the link is down: the gate's connect fails at once
                continue
            try:
                upstream = socket.create_connection(self.target, timeout=5)
            except OSError:
                client.close()
                continue
            with self._lock:
                self._pairs.append((client, upstream))
            threading.Thread(target=_splice, args=(client, upstream), daemon=True).start()


def _splice(a: socket.socket, b: socket.socket) -> None:
    sel = selectors.DefaultSelector()
    try:
        sel.register(a, selectors.EVENT_READ, b)
        sel.register(b, selectors.EVENT_READ, a)
        while True:
            for key, _ in sel.select(timeout=1.0):
                src: socket.socket = key.fileobj  # type: ignore[assignment]
                data = src.recv(65536)
                if not data:
                    return
                key.data.sendall(data)
    except (OSError, ValueError):
        return  # cut, or the other side closed
    finally:
        sel.close()
        for s in (a, b):
            with contextlib.suppress(OSError):
                s.close()
