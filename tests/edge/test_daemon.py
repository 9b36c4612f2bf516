"""The gate loop on simulated hardware: log first, then act; safe outputs on every exit."""

from __future__ import annotations

import io
import json
import logging
import threading
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from drivers.camera import Frame
from drivers.gpio import FakePins
from drivers.sim_scene import render_card_frame
from edge.config import load_config
from edge.daemon import GateDaemon
from protocol.passes import PassPayload, Role, sign_pass
from server.site import IssuedPass, Site
from tests.edge.gates import daemon_for

RELAY, GREEN, RED, BUZZER, EXIT, DOOR = 17, 22, 27, 23, 24, 25


def frame(text: str, meta: dict[str, object] | None = None, index: int = 0) -> Frame:
    image = render_card_frame(text, module_px=4.5, seed=index)
    return Frame(image, time.monotonic(), index, meta)


def relay_levels(pins: FakePins) -> list[bool]:
    return [value for _t, pin, value in pins.history if pin == RELAY]


def final_level(pins: FakePins, pin: int) -> bool:
    return [value for _t, p, value in pins.history if p == pin][-1]


def wait_until(predicate, timeout_s: float = 10.0) -> None:
    end = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > end:
            raise AssertionError("condition not reached in time")
        time.sleep(0.02)


def test_allowed_entry_is_logged_then_opens_relay_and_close_locks(
    gate_dir: Path, resident: IssuedPass
) -> None:
    daemon = daemon_for(gate_dir)
    pins = daemon.hw.pins
    assert isinstance(pins, FakePins)
    daemon.handle_frame(frame(resident.qr, {"forehead_c": 34.6}))
    events = [e.event for e in daemon.store.log()]
    assert [(e.kind, e.decision, e.reason) for e in events] == [("decision", "allow", "ok")]
    assert events[0].temperature_c == pytest.approx(36.7, abs=0.2)
    assert events[0].detail["samples"] >= 3
    assert relay_levels(pins) == [False, True]  # set up locked, then released by the pulse
    daemon.close()  # mid-pulse: fail-secure locks at once
    assert relay_levels(pins) == [False, True, False]
    assert not any(final_level(pins, p) for p in (GREEN, RED, BUZZER))


def test_same_card_held_for_many_frames_is_one_scan(gate_dir: Path, resident: IssuedPass) -> None:
    daemon = daemon_for(gate_dir)
    try:
        for i in range(5):
            daemon.handle_frame(frame(resident.qr, {"forehead_c": 34.6}, index=i))
        assert daemon.store.last_seq() == 1
    finally:
        daemon.close()


def test_fever_is_rechecked_then_denied_with_an_alert(gate_dir: Path, resident: IssuedPass) -> None:
    daemon = daemon_for(gate_dir)
    try:
        daemon.handle_frame(frame(resident.qr, {"forehead_c": 36.5}))
        rows = [(e.event.kind, e.event.reason) for e in daemon.store.log()]
        assert rows == [("decision", "fever_recheck"), ("decision", "fever"), ("alert", "fever")]
        assert relay_levels(daemon.hw.pins) == [False]  # never opened
    finally:
        daemon.close()


def test_two_passes_in_one_frame_ask_for_one_card(
    site: Site, gate_dir: Path, resident: IssuedPass
) -> None:
    other = site.issue_pass("1-1-102", "李四")
    left = render_card_frame(resident.qr, size=(320, 480), module_px=2.2, seed=1)
    right = render_card_frame(other.qr, size=(320, 480), module_px=2.2, seed=2)
    daemon = daemon_for(gate_dir)
    try:
        daemon.handle_frame(Frame(np.hstack([left, right]), time.monotonic(), 0))
        assert [e.event.reason for e in daemon.store.log()] == ["multiple_codes"]
    finally:
        daemon.close()


def test_exit_button_opens_and_the_door_contact_confirms_the_passage(gate_dir: Path) -> None:
    daemon = daemon_for(gate_dir)
    pins = daemon.hw.pins
    assert isinstance(pins, FakePins)
    try:
        pins.drive(DOOR, False)  # contact closed (active low)
        pins.drive(EXIT, False)  # exit button pressed (active low)
        daemon._handle_inputs()
        assert relay_levels(pins)[-1] is True
        time.sleep(0.1)  # longer than the contact's debounce
        pins.drive(DOOR, True)  # the door opens
        daemon._handle_inputs()
        rows = [(e.event.kind, e.event.reason, e.event.direction) for e in daemon.store.log()]
        assert rows == [("exit_request", "exit_request", "out"), ("passed", "ok", "out")]
    finally:
        daemon.close()


def test_door_opened_without_a_grant_is_forced(gate_dir: Path) -> None:
    daemon = daemon_for(gate_dir)
    pins = daemon.hw.pins
    assert isinstance(pins, FakePins)
    try:
        pins.drive(DOOR, False)
        time.sleep(0.1)
        pins.drive(DOOR, True)
        daemon._handle_inputs()
        assert [(e.event.kind, e.event.reason) for e in daemon.store.log()] == [
            ("alert", "door_forced")
        ]
        assert relay_levels(pins) == [False]
    finally:
        daemon.close()


def test_door_opened_after_a_grant_is_a_passage_and_held_open_alerts(
    gate_dir: Path, resident: IssuedPass
) -> None:
    daemon = daemon_for(gate_dir, "")
    pins = daemon.hw.pins
    assert isinstance(pins, FakePins)
    try:
        pins.drive(DOOR, False)  # closed
        daemon._handle_inputs()
        daemon.handle_frame(frame(resident.qr, {"forehead_c": 34.6}))
        pins.drive(DOOR, True)  # the person walks through
        daemon._handle_inputs()
        held = daemon.config.gpio.door_alert_s + 1
        daemon.doors.clock = lambda: time.monotonic() + held  # the door stays open that long
        daemon._handle_inputs()
        rows = [(e.event.kind, e.event.reason, e.event.pass_id) for e in daemon.store.log()]
        assert rows[-3:] == [
            ("decision", "ok", resident.pass_id),
            ("passed", "ok", resident.pass_id),
            ("alert", "door_held_open", None),
        ]
    finally:
        daemon.close()


class BrokenCamera:
    """A camera whose driver fails hard (not a CameraError the supervisor handles)."""

    state = "ok"
    last_error = None
    at_eof = False

    def read(self, timeout_s: float) -> Frame | None:
        raise RuntimeError("driver crashed")

    def close(self) -> None:
        pass


def test_crash_in_the_loop_leaves_outputs_safe(gate_dir: Path) -> None:
    daemon = daemon_for(gate_dir)
    pins = daemon.hw.pins
    assert isinstance(pins, FakePins)
    daemon.hw.relay.open()
    daemon.hw.camera = BrokenCamera()  # type: ignore[assignment]
    with pytest.raises(RuntimeError, match="driver crashed"):
        daemon.run()
    assert relay_levels(pins)[-1] is False
    assert not any(final_level(pins, p) for p in (GREEN, RED, BUZZER))


def test_fail_safe_gate_releases_on_stop(gate_dir: Path) -> None:
    daemon = daemon_for(gate_dir, "")
    toml = gate_dir / "gate.toml"
    toml.write_text(
        toml.read_text().replace(
            'backend = "simulated"\n\n[clock]',
            'backend = "simulated"\nfail_secure = false\n\n[clock]',
        )
    )
    daemon.close()
    daemon = daemon_for(gate_dir)
    pins = daemon.hw.pins
    assert isinstance(pins, FakePins)
    runner = threading.Thread(target=daemon.run)
    runner.start()
    daemon.stop_event.set()  # what SIGTERM does
    runner.join(timeout=10)
    assert not runner.is_alive()
    assert relay_levels(pins)[-1] is True  # fail-safe: released for free egress


def test_camera_loss_is_logged_and_shown(gate_dir: Path) -> None:
    daemon = daemon_for(gate_dir)
    try:
        stage = gate_dir / "stage"
        daemon.hw.camera.read(0.1)  # opens the stage folder: ok
        daemon._watch_camera()
        stage.rmdir()  # the "camera" disappears
        wait_until(lambda: daemon.hw.camera.read(0.05) is None and daemon.hw.camera.state == "lost")
        daemon._watch_camera()
        assert daemon.hw.indicator.current == "fault"
        stage.mkdir()
        wait_until(lambda: (daemon.hw.camera.read(0.05), daemon.hw.camera.state)[1] == "ok", 40)
        daemon._watch_camera()
        reasons = [e.event.reason for e in daemon.store.log() if e.event.kind == "device"]
        assert reasons == ["camera_lost", "camera_ok"]
        assert daemon.status()["camera"]["state"] == "ok"
    finally:
        daemon.close()


def test_signed_document_the_gate_cannot_apply_is_not_stored(gate_dir: Path, site: Site) -> None:
    """A config from a newer server (a policy key this gate does not know) is signed by a
    trusted key: it must be refused without being kept, or the gate cannot start again."""
    from protocol.documents import sign_document
    from server.keys import load_key

    daemon = daemon_for(gate_dir)
    before = daemon.know
    policy = {**site.config.policy.to_json(), "a_rule_of_the_future": True}
    body = {"policy": policy, "trust_keys": [k.to_json() for k in site.trust_keys()]}
    doc = sign_document(
        "config", site.site, 999, "2026-11-29T00:00:00+00:00", body, 1, load_key(site.dir, 1)
    )
    daemon.on_document("config", doc.encode())
    assert daemon.know == before
    assert daemon.store.document("config") != doc.encode()
    daemon.close()
    again = daemon_for(gate_dir)  # starts, with the documents it had
    assert again.know.config_version == before.config_version
    again.close()


@pytest.mark.parametrize("issued_at", ["2026-11-29T00:00:00", "last tuesday"])
def test_signed_document_without_an_aware_issue_time_is_refused(
    gate_dir: Path, site: Site, resident: IssuedPass, issued_at: str
) -> None:
    """Its age is compared with the gate's aware clock on every decision."""
    from protocol.documents import sign_document
    from server.keys import load_key

    daemon = daemon_for(gate_dir)
    before = daemon.know
    doc = sign_document(
        "register", site.site, 999, issued_at, site.register().to_json(), 1, load_key(site.dir, 1)
    )
    daemon.on_document("register", doc.encode())
    assert daemon.know == before
    daemon.handle_frame(frame(resident.qr, {"forehead_c": 34.6}))
    assert [e.event.reason for e in daemon.store.log()] == ["ok"]
    daemon.close()


def test_relayed_passages_count_in_both_forms(
    gate_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """The collector relays passages in batches (docs/protocol.md); older collectors sent
    one per message. Both count; a bad passage of a batch is skipped with one warning, the
    gate's own passages and another site's are ignored, and the state is kept on disk."""
    from datetime import UTC, datetime

    from protocol.events import Passage, encode_passages

    daemon = daemon_for(gate_dir)
    now = datetime.now(UTC).isoformat()

    def out(gate: str, pass_id: int, site: str = "test-site") -> Passage:
        return Passage(
            site, gate, f"u-{gate}-{pass_id}", now, pass_id, "2-2-202", "resident", "out"
        )

    batch = json.loads(
        encode_passages([out("west", 7), out("east", 8), out("west", 9, site="other")])
    )
    batch["passages"].append({"site": "test-site", "gate": "west", "at": "soon"})
    with caplog.at_level(logging.WARNING, logger="menwei.gate"):
        daemon.on_passage(json.dumps(batch).encode())
    daemon.on_passage(out("north", 11).encode())
    assert set(daemon.state.outside) == {7, 11}
    warnings = [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(warnings) == 1 and "1 bad passages" in warnings[0].getMessage()
    daemon.close()
    restarted = daemon_for(gate_dir)
    assert set(restarted.state.outside) == {7, 11}, "kept across a restart"
    restarted.close()


def test_a_relayed_passage_dated_ahead_of_the_gate_clock_is_not_counted(
    gate_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """record_passage prunes by the passage's own time: one passage dated 2099 (a compromised
    gate login, or a gate clock far off) would have emptied every household's counters here.
    It is ignored with a warning; the counters stay; a passage of now still counts."""
    from datetime import UTC, datetime, timedelta

    from protocol.events import Passage, encode_passages

    daemon = daemon_for(gate_dir)
    now = datetime.now(UTC)

    def out(pass_id: int, at: datetime, household: str = "2-2-202") -> Passage:
        return Passage(
            "test-site",
            "west",
            f"u-{pass_id}",
            at.isoformat(),
            pass_id,
            household,
            "resident",
            "out",
        )

    daemon.on_passage(encode_passages([out(7, now)]))
    assert set(daemon.state.outside) == {7}
    exits_before = dict(daemon.state.exits)
    with caplog.at_level(logging.WARNING, logger="menwei.gate"):
        daemon.on_passage(encode_passages([out(8, datetime(2099, 1, 1, tzinfo=UTC), "9-9-909")]))
    assert set(daemon.state.outside) == {7}, "the counters of today are kept"
    assert daemon.state.exits == exits_before
    assert any("dated ahead" in r.getMessage() for r in caplog.records)
    daemon.on_passage(encode_passages([out(9, now + timedelta(minutes=5))]))  # clocks differ
    assert set(daemon.state.outside) == {7, 9}
    daemon.close()


def test_a_refused_entry_stops_the_thermometer_it_started(site: Site, gate_dir: Path) -> None:
    # The thermometer starts settling while the pass is verified (issue 12); a pass that is
    # refused ends that measurement at its next sample instead of letting it run out.
    now = int(time.time())
    payload = PassPayload(
        site.active_key_id(), 999, site.site, "1-1-101", Role.RESIDENT, now - 60, now + 3600
    )
    forged = sign_pass(payload, Ed25519PrivateKey.generate())
    config = load_config(gate_dir / "gate.toml")
    config = replace(config, thermometer=replace(config.thermometer, samples=10))
    daemon = GateDaemon(config, broker="none", out=io.StringIO())
    thermometer = daemon.hw.thermometer
    assert thermometer is not None
    try:
        daemon.handle_frame(frame(forged, {"forehead_c": 34.6}))
        assert [e.event.reason for e in daemon.store.log()] == ["bad_signature", "forged"]
        daemon.measure()  # ~1 s: the cancelled one has long ended (at its next sample)
        after_both = thermometer.stats.reads
        temperature, detail = daemon.measure()
        full = thermometer.stats.reads - after_both
        assert temperature.body_c is not None and detail["samples"] == 10
        assert after_both - full < full  # the refused entry's measurement stopped early
    finally:
        daemon.close()
