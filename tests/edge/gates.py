"""A gate daemon on simulated hardware, offline, for the edge tests; and its guard server."""

from __future__ import annotations

import io
import re
import threading
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from starlette.applications import Starlette
from starlette.testclient import TestClient

from edge.config import load_config
from edge.daemon import GateDaemon
from edge.guards import Guard, add_guard
from menwei.mosquitto import free_port

PAGE_URL = "http://127.0.0.1:8000"
"""Where the kiosk browser opens the guard page (its Host and Origin)."""
GUARD, PIN = "王师傅", "482913"


def enrol(gate_dir: Path, name: str = GUARD, pin: str = PIN) -> Guard:
    """`menwei gate guard add` for the gate of `gate_dir`."""
    return add_guard(load_config(gate_dir / "gate.toml").data_dir, name, pin)


def page_token(html: str) -> str:
    """The CSRF token the guard page carries."""
    found = re.search(r'<meta name="csrf-token" content="([^"]+)">', html)
    assert found is not None, "the page carries no CSRF token"
    return found.group(1)


def guard_client(app: Starlette) -> TestClient:
    """The kiosk browser: the page loaded from PAGE_URL, its requests sent as it sends them
    (same Origin, the page's CSRF token)."""
    client = TestClient(app, base_url=PAGE_URL)
    token = page_token(client.get("/").text)
    client.headers.update({"Origin": PAGE_URL, "X-CSRF-Token": token})
    return client


def daemon_for(gate_dir: Path, extra: str = "") -> GateDaemon:
    """The real daemon for a provisioned simulated gate; `extra` TOML is appended first."""
    toml = gate_dir / "gate.toml"
    if extra:
        toml.write_text(toml.read_text() + extra)
    return GateDaemon(load_config(toml), broker="none", out=io.StringIO())


@contextmanager
def served(gate_dir: Path) -> Iterator[tuple[GateDaemon, int]]:
    """The daemon running on a thread with its guard page on a free port; stopped (as
    SIGTERM would) on exit, and checked to have stopped."""
    port = free_port()
    daemon = daemon_for(gate_dir, f'\n[guard]\nhttp = "127.0.0.1:{port}"\n')
    runner = threading.Thread(target=daemon.run)
    runner.start()
    try:
        yield daemon, port
    finally:
        daemon.stop_event.set()
        runner.join(timeout=10)
    assert not runner.is_alive()


def fetch(port: int, path: str, timeout_s: float = 10.0) -> bytes:
    """GET a path once the server answers (it starts on its own thread)."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=1) as r:
                assert r.status == 200
                return bytes(r.read())
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)
