"""A gate and a collector whose broker does not answer say so in their logs (issue 11: a new
user saw nothing for 7 s with the broker's port refused, while docs/security.md promised "a
failure is one line in the log"): one line per cause, not one per attempt, and a line when
they connect. Real `menwei gate run` and `menwei server run` processes, a real Mosquitto
started on the refused port afterwards."""

from __future__ import annotations

import time
from pathlib import Path

from menwei.mosquitto import MosquittoBroker, free_port
from server.site import Site
from tests.e2e.helpers import menwei_process, provision_gate, wait_until
from tests.e2e.session_ca import session_broker

ATTEMPTS_S = 4.0
"""paho retries after 1 s, then 2 s: three or more attempts fail while the port is closed."""


def test_a_refused_broker_port_is_one_line_then_connected(tmp_path: Path, site: Site) -> None:
    port = free_port()
    url = f"mqtts://127.0.0.1:{port}"
    gate = provision_gate(tmp_path, site.dir, "east", "in", url)
    refused = f"cannot reach the broker 127.0.0.1:{port}: Connection refused"
    connected = f"connected to the broker 127.0.0.1:{port}"
    with (
        menwei_process(
            tmp_path / "gate.log", "gate", "run", "--config", str(gate / "gate.toml")
        ) as gate_run,
        menwei_process(
            tmp_path / "server.log", "server", "run", str(site.dir), "--broker", url
        ) as server_run,
    ):
        logs = {"gate": gate_run, "collector": server_run}
        for name, proc in logs.items():
            wait_until(lambda p=proc: refused in p.output(), 90, lambda p=proc: p.output())
            assert proc.alive(), f"{name} stopped: {proc.output()}"
        time.sleep(ATTEMPTS_S)  # more attempts, all refused: still one line each
        with MosquittoBroker(port=port, tls=session_broker()):
            for proc in logs.values():
                wait_until(lambda p=proc: connected in p.output(), 90, lambda p=proc: p.output())
        for name, proc in logs.items():
            text = proc.log_path.read_text("utf-8", errors="replace")
            assert text.count(refused) == 1, f"{name}: {text}"
            assert text.index(refused) < text.index(connected)
