"""The gate's Prometheus metrics: scraped from the guard page, read from the live daemon."""

from __future__ import annotations

import time
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families
from starlette.testclient import TestClient

from drivers.camera import Frame
from drivers.qr import ScanDebouncer
from drivers.sim_scene import render_card_frame
from edge.daemon import GateDaemon
from edge.guard_page import create_app
from edge.metrics import gate_registry
from server.site import IssuedPass
from tests.edge.gates import PAGE_URL, daemon_for, fetch, served

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def parse(text: str) -> Samples:
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def scrape(client: TestClient) -> Samples:
    response = client.get("/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    return parse(response.text)


def value(samples: Samples, name: str, **labels: str) -> float | None:
    return samples.get((name, frozenset(labels.items())))


def scan(daemon: GateDaemon, qr: str, forehead_c: float, index: int) -> None:
    image = render_card_frame(qr, module_px=4.5, seed=index)
    daemon.handle_frame(Frame(image, time.monotonic(), index, {"forehead_c": forehead_c}))
    daemon.debouncer = ScanDebouncer(0.0)  # the same card again is a new scan


def test_decisions_are_counted_by_reason_and_the_outbox_grows(
    gate_dir: Path, resident: IssuedPass
) -> None:
    daemon = daemon_for(gate_dir)
    try:
        client = TestClient(
            create_app(daemon.guard_state, daemon.request_override, gate_registry(daemon)),
            base_url=PAGE_URL,
        )
        before = scrape(client)
        ok = {"reason": "ok", "decision": "allow", "direction": "in"}
        assert value(before, "menwei_gate_decisions_total", **ok) is None
        assert value(before, "menwei_gate_last_seq") == 0
        assert value(before, "menwei_gate_outbox_backlog") == 0
        assert value(before, "menwei_gate_info", site="test-site", gate="east", direction="in")
        assert value(before, "menwei_gate_data_version", document="register") is not None
        assert value(before, "menwei_gate_trust_root") == 1
        assert value(before, "menwei_gate_untrusted_documents_total") == 0

        scan(daemon, resident.qr, 34.6, 0)
        after = scrape(client)
        assert value(after, "menwei_gate_decisions_total", **ok) == 1
        assert value(after, "menwei_gate_last_seq") == 1
        assert value(after, "menwei_gate_outbox_backlog") == 1  # broker "none": never acked
        assert value(after, "menwei_gate_acked_seq") == 0
        assert value(after, "menwei_gate_thermometer_reads_total")
        assert value(after, "menwei_gate_thermometer_failures_total") == 0
        assert value(after, "menwei_gate_decoder_frames_total") == 1
        assert value(after, "menwei_gate_decoder_frames_with_code_total") == 1
        assert (value(after, "menwei_gate_decoder_seconds_total") or 0) > 0

        scan(daemon, resident.qr, 36.5, 1)  # high twice: recheck, then fever
        fever = scrape(client)
        for reason in ("fever_recheck", "fever"):
            labels = {"reason": reason, "decision": "deny", "direction": "in"}
            assert value(fever, "menwei_gate_decisions_total", **labels) == 1
        assert value(fever, "menwei_gate_decisions_total", **ok) == 1
        assert value(fever, "menwei_gate_last_seq") == 4  # two decisions and the fever alert
    finally:
        daemon.close()


def test_health_gauges_follow_the_gate(gate_dir: Path) -> None:
    daemon = daemon_for(gate_dir)
    try:
        samples = parse(
            TestClient(
                create_app(daemon.guard_state, daemon.request_override, gate_registry(daemon)),
                base_url=PAGE_URL,
            )
            .get("/metrics")
            .text
        )
        states = {
            s: value(samples, "menwei_gate_camera_state", state=s)
            for s in ("ok", "lost", "recovering")
        }
        assert sorted(states.values()) == [0, 0, 1]
        assert states[daemon.hw.camera.state] == 1
        assert value(samples, "menwei_gate_clock_trusted") in (0, 1)
        assert value(samples, "menwei_gate_data_stale") == 0  # just provisioned
        assert (value(samples, "menwei_gate_data_age_hours") or 0) < 1
        # broker "none": no sync, so no "disconnected" metric to alert on
        assert not any(name.startswith("menwei_gate_sync_") for name, _ in samples)
    finally:
        daemon.close()


def test_registries_are_per_daemon_and_the_route_is_optional(gate_dir: Path) -> None:
    daemon = daemon_for(gate_dir)
    try:
        first, second = gate_registry(daemon), gate_registry(daemon)  # no global collisions
        assert first is not second
        plain = TestClient(
            create_app(daemon.guard_state, daemon.request_override), base_url=PAGE_URL
        )
        assert plain.get("/metrics").status_code == 404
    finally:
        daemon.close()


def test_the_running_daemon_serves_metrics(gate_dir: Path) -> None:
    with served(gate_dir) as (_daemon, port):
        samples = parse(fetch(port, "/metrics").decode())
        assert value(samples, "menwei_gate_outbox_backlog") == 0
