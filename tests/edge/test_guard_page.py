"""The guard's screen and the recorded override, against a gate on simulated hardware."""

from __future__ import annotations

import threading
import time
from pathlib import Path

from drivers.camera import Frame
from drivers.sim_scene import render_card_frame
from edge.guard_page import create_app
from server.site import IssuedPass
from tests.edge.gates import daemon_for, fetch, guard_client, served

RELAY = 17


def test_state_shows_the_last_decision_with_masked_name_and_health(
    gate_dir: Path, resident: IssuedPass
) -> None:
    daemon = daemon_for(gate_dir)
    try:
        client = guard_client(create_app(daemon.guard_state, daemon.request_override))
        assert client.get("/api/state").json()["last"] is None
        image = render_card_frame(resident.qr, module_px=4.5)
        daemon.handle_frame(Frame(image, time.monotonic(), 0, {"forehead_c": 34.6}))
        state = client.get("/api/state").json()
        assert state["last"]["decision"] == "allow"
        assert state["last"]["name"] == "张*丰" and state["last"]["room"] == "1-1-101"
        assert state["last"]["message"] == {"zh": "请通行", "en": "Please pass"}
        assert state["health"]["online"] is False  # broker "none": the guard sees it
        assert state["health"]["camera"] in ("recovering", "ok")
        assert "张三丰" not in client.get("/api/state").text
        assert "门卫" in client.get("/").text
    finally:
        daemon.close()


def test_the_daemon_serves_the_page_over_http(gate_dir: Path) -> None:
    with served(gate_dir) as (_daemon, port):
        assert b'"health"' in fetch(port, "/api/state")


def test_the_screen_says_measure_while_the_temperature_is_taken(
    gate_dir: Path, resident: IssuedPass
) -> None:
    toml = gate_dir / "gate.toml"
    toml.write_text(
        toml.read_text().replace(
            '[thermometer]\nbackend = "simulated"',
            '[thermometer]\nbackend = "simulated"\nsamples = 15',
        )
    )
    daemon = daemon_for(gate_dir)
    try:
        image = render_card_frame(resident.qr, module_px=4.5)
        worker = threading.Thread(
            target=daemon.handle_frame,
            args=(Frame(image, time.monotonic(), 0, {"forehead_c": 34.6}),),
        )
        worker.start()
        deadline = time.monotonic() + 10
        while daemon.guard_state()["measuring"] is None:
            assert time.monotonic() < deadline, "the screen never said to measure"
            time.sleep(0.01)
        assert daemon.guard_state()["measuring"] == {"name": "张*丰", "room": "1-1-101"}
        worker.join(timeout=20)
        state = daemon.guard_state()
        assert state["measuring"] is None and state["last"]["reason"] == "ok"
    finally:
        daemon.close()
