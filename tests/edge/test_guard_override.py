"""Who may open the gate from the guard page: the attack of issue 11 and its kin, refused.

The issue's attack: `POST /api/override` with no credentials, a text/plain body and a
foreign Origin answered {"ok": true} and pulsed the relay. Here it runs against the real
daemon and its real guard server (uvicorn on a free port, requests over HTTP), and the
relay is the recording GPIO fake: every refused request leaves the relay's pin history
untouched; the right PIN from the page's origin pulses it once and records the guard.
"""

from __future__ import annotations

import io
import json
import logging
import os
import re
import stat
import threading
import time
import urllib.error
import urllib.request
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path

import pytest
from starlette.testclient import TestClient

from drivers.gpio import FakePins
from edge.config import load_config
from edge.daemon import GateDaemon
from edge.guard_page import SECURITY_HEADERS, create_app, host_allowed
from edge.guards import (
    ATTEMPTS_PER_MINUTE,
    LOCK_S,
    WRONG_PER_GUARD,
    GuardError,
    check_pin,
    guards_path,
    read_guards,
)
from edge.listen import beyond_loopback
from edge.metrics import gate_registry
from menwei.mosquitto import free_port
from server.alerts import AlertStore
from server.site import Site
from tests.conftest import run_menwei
from tests.e2e.simtime import SimTime
from tests.edge.gates import (
    GUARD,
    PIN,
    daemon_for,
    enrol,
    fetch,
    guard_client,
    page_token,
    served,
)

RELAY, EXIT = 17, 24
WRONG = "739150"


def relay_levels(daemon: GateDaemon) -> list[bool]:
    pins = daemon.hw.pins
    assert isinstance(pins, FakePins)
    return [value for _t, pin, value in pins.history if pin == RELAY]


def overrides(daemon: GateDaemon) -> list[dict[str, object]]:
    return [e.event.detail for e in daemon.store.log() if e.event.kind == "override"]


def post(port: int, body: bytes, headers: dict[str, str]) -> tuple[int, str]:
    request = urllib.request.Request(
        f"http://127.0.0.1:{port}/api/override", data=body, headers=headers, method="POST"
    )
    try:
        with urllib.request.urlopen(request, timeout=30) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


def wait_for(what: str, check: object, timeout_s: float = 20.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not check():  # type: ignore[operator]
        assert time.monotonic() < deadline, what
        time.sleep(0.05)


def test_the_issues_attack_and_its_kin_are_refused_and_the_relay_never_moves(
    gate_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    enrol(gate_dir)
    caplog.set_level(logging.INFO)
    with served(gate_dir) as (daemon, port):
        origin = f"http://127.0.0.1:{port}"
        token = page_token(fetch(port, "/").decode())
        page = {"Origin": origin, "Content-Type": "application/json", "X-CSRF-Token": token}
        good = {"guard": GUARD, "pin": PIN, "reason": "老人忘带证", "direction": "in"}

        def body(**changes: str) -> bytes:
            return json.dumps({**good, **changes}).encode()

        no_pin = json.dumps({"guard": "nobody", "reason": "xx", "direction": "in"}).encode()
        attacks = [
            # (what, headers, body, status, error code)
            (
                "the issue's request",
                {"Content-Type": "text/plain", "Origin": "http://evil.example"},
                no_pin,
                403,
                "origin",
            ),
            (
                "text/plain with every credential",
                {**page, "Content-Type": "text/plain"},
                body(),
                415,
                "content_type",
            ),
            (
                "a form post",
                {**page, "Content-Type": "application/x-www-form-urlencoded"},
                b"guard=x&pin=482913",
                415,
                "content_type",
            ),
            (
                "no Origin (a local process)",
                {k: v for k, v in page.items() if k != "Origin"},
                body(),
                403,
                "origin",
            ),
            ("a foreign Origin", {**page, "Origin": "http://evil.example"}, body(), 403, "origin"),
            ("a null Origin (sandboxed frame)", {**page, "Origin": "null"}, body(), 403, "origin"),
            ("a cross-site fetch", {**page, "Sec-Fetch-Site": "cross-site"}, body(), 403, "origin"),
            (
                "no CSRF token",
                {k: v for k, v in page.items() if k != "X-CSRF-Token"},
                body(),
                403,
                "csrf",
            ),
            (
                "a forged CSRF token",
                {**page, "X-CSRF-Token": "abc." + "0" * 64},
                body(),
                403,
                "csrf",
            ),
            ("no PIN", page, no_pin, 400, "bad_request"),
            ("a wrong PIN", page, body(pin=WRONG), 403, "wrong_pin"),
            ("a guard who is not enrolled", page, body(guard="张师傅"), 403, "wrong_pin"),
            ("a body too large", page, body(reason="x" * 5000), 413, "too_large"),
            # Deeper than Python's json goes: a RecursionError answered 500 with a traceback.
            ("JSON nested 2000 deep", page, b"[" * 2000 + b"]" * 2000, 400, "bad_request"),
            ("a JSON list", page, b"[1, 2]", 400, "bad_request"),
            ("not UTF-8", page, b'{"guard": "\xff\xfe"}', 400, "bad_request"),
        ]
        for what, headers, data, status, code in attacks:
            got, text = post(port, data, headers)
            assert (got, json.loads(text)["error"]) == (status, code), what
        assert [r.getMessage() for r in caplog.records if r.exc_info] == [], "a traceback"
        # DNS rebinding: the attacker's name points at the gate; Host and Origin agree.
        rebound = {**page, "Host": f"evil.example:{port}", "Origin": f"http://evil.example:{port}"}
        assert post(port, body(), rebound)[0] == 400

        # The loop is running: give any queued opening the time to happen, then look.
        time.sleep(0.5)
        assert relay_levels(daemon) == [False], "a refused request moved the relay"
        assert overrides(daemon) == []

        status, text = post(port, body(), page)
        assert (status, json.loads(text)) == (200, {"ok": True})
        wait_for("the override was not logged", lambda: overrides(daemon))
        wait_for("the relay did not release", lambda: True in relay_levels(daemon))
        assert overrides(daemon) == [{"guard": GUARD, "reason": "老人忘带证"}]
        assert relay_levels(daemon).count(True) == 1


def test_every_response_forbids_framing_and_foreign_code(gate_dir: Path) -> None:
    daemon = daemon_for(gate_dir)
    try:
        app = create_app(daemon.guard_state, daemon.request_override, gate_registry(daemon))
        client = guard_client(app)
        responses = {
            "/": client.get("/"),
            "/static/guard_page.js": client.get("/static/guard_page.js"),
            "/static/guard_page.css": client.get("/static/guard_page.css"),
            "/api/state": client.get("/api/state"),
            "/metrics": client.get("/metrics"),
            "missing": client.get("/nothing-here"),
            "refused override": client.post("/api/override", content=b"x"),
            "foreign host": TestClient(app, base_url="http://evil.example").get("/"),
        }
        for what, r in responses.items():
            for name, value in SECURITY_HEADERS.items():
                assert r.headers.get(name) == value, (what, name)
            assert "frame-ancestors 'none'" in r.headers["content-security-policy"]
            assert r.headers["x-frame-options"] == "DENY"
        for what in ("/", "/api/state", "refused override", "/metrics"):
            assert responses[what].headers["cache-control"] == "no-store", what
        assert responses["foreign host"].status_code == 400
        # The CSP forbids inline code, so the page has none, and fills the screen with text.
        html = responses["/"].text
        assert not re.search(r"<script(?![^>]*\bsrc=)", html) and "<style" not in html
        assert not re.search(r"\son[a-z]+=", html) and "style=" not in html
        script = responses["/static/guard_page.js"].text
        assert "innerHTML" not in script and "outerHTML" not in script
        assert "insertAdjacentHTML" not in script and "document.write" not in script
        assert (
            responses["/static/guard_page.js"].headers["content-type"].startswith("text/javascript")
        )
        # Each page load gets its own token.
        assert page_token(html) != page_token(client.get("/").text)
    finally:
        daemon.close()


def test_host_names_other_than_loopback_and_addresses_are_refused() -> None:
    for host in ("127.0.0.1:8000", "localhost:8000", "[::1]:8000", "192.168.1.20", "gate1:80"):
        assert host_allowed(host, "gate1"), host
    for host in ("evil.example:8000", "127.0.0.1.evil.example", "", "gate1"):
        assert not host_allowed(host, "127.0.0.1"), host


def test_wrong_pins_lock_the_guard_raise_an_alert_and_the_lock_ends_in_its_time(
    gate_dir: Path, site: Site, caplog: pytest.LogCaptureFixture
) -> None:
    enrol(gate_dir)
    enrol(gate_dir, "李师傅", "905617")
    sim = SimTime(datetime.now(UTC))
    config = load_config(gate_dir / "gate.toml")
    daemon = GateDaemon(
        config, broker="none", out=io.StringIO(), wall=sim.wall, monotonic=sim.monotonic
    )
    caplog.set_level(logging.INFO, logger="menwei.gate")
    try:
        client = guard_client(create_app(daemon.guard_state, daemon.request_override))

        def override(pin: str, guard: str = GUARD) -> tuple[int, dict[str, object]]:
            r = client.post(
                "/api/override",
                json={"guard": guard, "pin": pin, "reason": "送医", "direction": "in"},
            )
            daemon._handle_inputs()
            return r.status_code, r.json()

        codes = [override(WRONG) for _ in range(WRONG_PER_GUARD)]
        assert [c[1]["error"] for c in codes] == ["wrong_pin"] * (WRONG_PER_GUARD - 1) + ["locked"]
        status, locked = override(PIN)  # the right PIN, now: still locked, not even checked
        assert (status, locked["error"]) == (429, "locked")
        assert locked["zh"] == "PIN 错误次数过多，该门卫已锁定 5 分钟"
        assert "locked for 5 minutes" in str(locked["en"])
        assert override(PIN, "李师傅")[0] == 403  # another guard is not locked (wrong PIN)
        assert override("905617", "李师傅")[0] == 200  # ... and opens
        assert relay_levels(daemon)[-1] is True
        daemon.hw.relay.close_()  # the pulse is over
        status_guards = daemon.status()["guards"]
        assert status_guards == {"enrolled": 2, "locked": [GUARD], "lockouts": 1}
        alerts = [e.event for e in daemon.store.log() if e.event.kind == "alert"]
        assert [(a.reason, a.detail) for a in alerts] == [
            (
                "guard_locked",
                {"priority": "high", "guard": GUARD, "cause": "wrong_pin", "minutes": 5},
            )
        ]
        # The collector raises the alert from the event, as it does for the gate's other alerts.
        raised = AlertStore(site.store).from_event(alerts[0])
        assert raised is not None and (raised.kind, raised.priority) == ("guard_locked", "high")
        assert any(
            "wrong PINs for guard 王师傅: locked for 5 minutes" in r.getMessage()
            for r in caplog.records
        )
        assert overrides(daemon) == [{"guard": "李师傅", "reason": "送医"}]

        sim.advance(LOCK_S - 5)
        assert override(PIN)[1]["error"] == "locked"
        sim.advance(6)
        assert override(PIN)[0] == 200
        assert overrides(daemon)[-1] == {"guard": GUARD, "reason": "送医"}
        assert daemon.status()["guards"]["locked"] == []
        assert relay_levels(daemon) == [False, True, False, True]

        # A second lock in a row lasts twice as long; the right PIN above ended the series.
        for _ in range(WRONG_PER_GUARD):
            override(WRONG)
        sim.advance(LOCK_S + 1)
        for _ in range(WRONG_PER_GUARD):
            override(WRONG)
        assert "10 分钟" in str(override(PIN)[1]["zh"])
    finally:
        daemon.close()


def test_a_name_nobody_enrolled_locks_the_same_way_so_names_cannot_be_discovered(
    gate_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """The attack: five wrong PINs for a name, and a 429 "locked" meant the name is enrolled
    (an unknown name kept answering "wrong_pin"). Now both answer alike, word for word."""
    enrol(gate_dir)
    daemon = daemon_for(gate_dir)
    caplog.set_level(logging.INFO, logger="menwei.gate")
    try:
        client = guard_client(create_app(daemon.guard_state, daemon.request_override))

        def answers(guard: str) -> list[tuple[int, dict[str, object]]]:
            got = []
            for _ in range(WRONG_PER_GUARD + 1):
                r = client.post(
                    "/api/override",
                    json={"guard": guard, "pin": WRONG, "reason": "送医", "direction": "in"},
                )
                daemon._handle_inputs()
                got.append((r.status_code, r.json()))
            return got

        enrolled, unknown = answers(GUARD), answers("张师傅")
        assert unknown == enrolled
        assert [status for status, _ in unknown] == [403] * (WRONG_PER_GUARD - 1) + [429, 429]
        assert daemon.status()["guards"]["locked"] == [GUARD]  # the status names the enrolled
        assert any(
            "wrong PINs for guard 张师傅 (not enrolled): locked" in r.getMessage()
            for r in caplog.records
        )
        assert relay_levels(daemon) == [False]
    finally:
        daemon.close()


def test_concurrent_guesses_are_counted_before_any_hash(gate_dir: Path) -> None:
    enrol(gate_dir)
    daemon = daemon_for(gate_dir)
    try:
        results: list[str] = []
        start = threading.Barrier(24)

        def guess() -> None:
            start.wait()
            refused = daemon.request_override(GUARD, WRONG, "猜", "in")
            results.append("ok" if refused is None else refused.code)

        threads = [threading.Thread(target=guess) for _ in range(24)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=60)
        # Five were checked (four wrong, the fifth locks); the other 19 were refused unchecked.
        assert Counter(results) == {"wrong_pin": WRONG_PER_GUARD - 1, "locked": 20}
        assert daemon.guards.lockouts == 1
        daemon._handle_inputs()
        assert relay_levels(daemon) == [False]
    finally:
        daemon.close()


def test_attempts_in_total_are_capped_per_minute(gate_dir: Path) -> None:
    enrol(gate_dir)
    sim = SimTime(datetime.now(UTC))
    daemon = GateDaemon(
        load_config(gate_dir / "gate.toml"),
        broker="none",
        out=io.StringIO(),
        wall=sim.wall,
        monotonic=sim.monotonic,
    )
    try:
        # Names nobody has: no guard is locked, but the gate stops checking.
        codes = [
            daemon.request_override(f"猜{i}", WRONG, "猜", "in") for i in range(ATTEMPTS_PER_MINUTE)
        ]
        assert {c.code for c in codes if c is not None} == {"wrong_pin"}
        busy = daemon.request_override(GUARD, PIN, "送医", "in")
        assert busy is not None and (busy.code, busy.status) == ("busy", 429)
        daemon._handle_inputs()
        [alert] = [e.event for e in daemon.store.log() if e.event.kind == "alert"]
        assert alert.reason == "guard_locked" and alert.detail["cause"] == "rate"
        sim.advance(61)
        assert daemon.request_override(GUARD, PIN, "送医", "in") is None
    finally:
        daemon.close()


def test_no_guard_enrolled_refuses_overrides_but_not_the_exit_button(gate_dir: Path) -> None:
    daemon = daemon_for(gate_dir)
    try:
        client = guard_client(create_app(daemon.guard_state, daemon.request_override))
        assert client.get("/api/state").json()["guards_enrolled"] == 0
        body = {"guard": GUARD, "pin": PIN, "reason": "送医", "direction": "in"}
        r = client.post("/api/override", json=body)
        assert r.status_code == 503 and r.json()["error"] == "no_guards"
        assert (
            "menwei gate guard add" in r.json()["en"] and "menwei gate guard add" in r.json()["zh"]
        )
        daemon._handle_inputs()
        assert relay_levels(daemon) == [False]
        pins = daemon.hw.pins
        assert isinstance(pins, FakePins)
        pins.drive(EXIT, False)  # the exit button needs no guard
        daemon._handle_inputs()
        assert relay_levels(daemon) == [False, True]

        path = guards_path(daemon.config.data_dir)
        path.write_text("{damaged")  # a damaged list opens nothing, and says why
        r = client.post("/api/override", json=body)
        assert r.status_code == 503 and r.json()["error"] == "guards_unreadable"
        assert "guards.json: damaged" in r.json()["en"]
        path.unlink()

        enrol(gate_dir)  # while the gate runs: read again at the next attempt
        assert client.post("/api/override", json=body).status_code == 200
        assert client.get("/api/state").json()["guards_enrolled"] == 1
    finally:
        daemon.close()


def test_pins_are_kept_hashed_in_a_file_only_its_owner_reads(gate_dir: Path) -> None:
    guard = enrol(gate_dir)
    path = guards_path(load_config(gate_dir / "gate.toml").data_dir)
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    text = path.read_text(encoding="utf-8")
    assert PIN not in text and guard.pin_hash.startswith("$argon2id$v=19$m=19456,t=2,p=1$")
    assert [g.name for g in read_guards(path)] == [GUARD]
    for trivial in ("000000", "123456", "654321", "121212", "123123", "112233", "7890123"):
        with pytest.raises(GuardError, match="too easy"):
            check_pin(trivial)
    for bad in ("12345", "48291a", "４８２９１３", "1" * 13):
        with pytest.raises(GuardError, match="digits"):
            check_pin(bad)


def test_the_guard_commands(gate_dir: Path, tmp_path: Path) -> None:
    pin_file = tmp_path / "pin"
    pin_file.write_text("000000\n")
    refused = run_menwei(
        "gate", "guard", "add", str(gate_dir), GUARD, "--pin-file", str(pin_file), check=False
    )
    assert refused.returncode == 2 and "too easy" in refused.stderr
    assert "Traceback" not in refused.stderr
    no_tty = run_menwei("gate", "guard", "add", str(gate_dir), GUARD, check=False)
    assert no_tty.returncode == 2 and "--pin-file" in no_tty.stderr
    pin_file.write_text(PIN + "\n")
    added = run_menwei(
        "gate", "guard", "add", str(gate_dir), GUARD, "--pin-file", str(pin_file), "--json"
    )
    assert json.loads(added.stdout)["name"] == GUARD
    again = run_menwei(
        "gate", "guard", "add", str(gate_dir), GUARD, "--pin-file", str(pin_file), check=False
    )
    assert again.returncode == 2 and "already enrolled" in again.stderr
    listed = json.loads(run_menwei("gate", "guard", "list", str(gate_dir), "--json").stdout)
    assert [g["name"] for g in listed] == [GUARD] and "pin_hash" not in listed[0]
    assert GUARD in run_menwei("gate", "guard", "list", str(gate_dir)).stdout
    run_menwei("gate", "guard", "remove", str(gate_dir), GUARD)
    assert json.loads(run_menwei("gate", "guard", "list", str(gate_dir), "--json").stdout) == []
    gone = run_menwei("gate", "guard", "remove", str(gate_dir), GUARD, check=False)
    assert gone.returncode == 2 and "no guard named" in gone.stderr


# --- where the page listens ----------------------------------------------------------------


@pytest.mark.parametrize(
    "http", ["0.0.0.0:8000", "[::]:8000", "192.168.1.20:8000", "gate.invalid:8000"]
)
def test_a_page_beyond_loopback_is_warned_about(http: str) -> None:
    warning = beyond_loopback(http)
    assert warning is not None and warning.startswith("WARNING:") and "127.0.0.1" in warning


@pytest.mark.parametrize("http", ["127.0.0.1:8000", "[::1]:8000", "localhost:8000", "127.0.0.2:1"])
def test_loopback_is_not_warned_about(http: str) -> None:
    assert beyond_loopback(http) is None


def test_a_name_resolving_to_the_lan_is_warned_about() -> None:
    def lan(host: str) -> list[str]:
        return ["127.0.1.1", "192.168.1.20"] if host == "gate1" else []

    assert beyond_loopback("gate1:8000", resolve=lan) is not None
    assert beyond_loopback("gate1:8000", resolve=lambda h: ["127.0.1.1", "::1"]) is None


def test_check_config_warns_loudly_and_says_so_in_json(gate_dir: Path) -> None:
    enrol(gate_dir)
    toml = gate_dir / "gate.toml"
    config = toml.read_text()
    quiet = run_menwei("gate", "check-config", "--config", str(toml), "--json")
    assert json.loads(quiet.stdout)["guard_http_exposed"] is False
    assert "WARNING" not in quiet.stderr
    toml.write_text(config + '\n[guard]\nhttp = "localhost:8000"\n')
    local = run_menwei("gate", "check-config", "--config", str(toml), "--json")
    assert json.loads(local.stdout)["guard_http_exposed"] is False and not local.stderr.strip()
    toml.write_text(config + '\n[guard]\nhttp = "0.0.0.0:8000"\n')
    loud = run_menwei("gate", "check-config", "--config", str(toml), "--json")
    out = json.loads(loud.stdout)
    assert out["guard_http_exposed"] is True and out["warnings"][0].startswith("WARNING:")
    assert "WARNING: [guard] http = '0.0.0.0:8000' listens beyond this gate" in loud.stderr
    human = run_menwei("gate", "check-config", "--config", str(toml))
    assert "WARNING" in human.stderr


def test_gate_run_logs_the_warning_at_start(
    gate_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="menwei.gate")
    port = free_port()
    daemon = daemon_for(gate_dir, f'\n[guard]\nhttp = "0.0.0.0:{port}"\n')
    runner = threading.Thread(target=daemon.run)
    runner.start()
    try:
        fetch(port, "/api/state")
    finally:
        daemon.stop_event.set()
        runner.join(timeout=10)
    messages = [r.getMessage() for r in caplog.records]
    assert any("listens beyond this gate" in m for m in messages)
    assert any("No guard is enrolled" in m for m in messages)


def test_a_simulated_gate_has_the_guard_screen_commented_in(tmp_path: Path) -> None:
    """Issue 11 (a new user): `gate init --simulated` wrote no [guard], and the docs read as if
    the guard screen were on. It writes the two lines commented out; uncommented, the gate has
    its guard page, and check-config warns that no guard is enrolled (only then)."""
    Site.init(tmp_path / "srv", "sunny-garden").close()
    gate = tmp_path / "gate"
    run_menwei("gate", "init", str(gate), "--server", str(tmp_path / "srv"), "--gate", "east",
               "--simulated")  # fmt: skip
    toml = gate / "gate.toml"
    assert load_config(toml).guard.http is None
    off = run_menwei("gate", "check-config", "--config", str(toml), "--json")
    assert json.loads(off.stdout)["warnings"] == []
    text = toml.read_text("utf-8")
    assert '# [guard]\n# http = "127.0.0.1:8000"\n' in text
    toml.write_text(text.replace("# [guard]\n# http", "[guard]\nhttp"), "utf-8")
    assert load_config(toml).guard.http == "127.0.0.1:8000"
    on = run_menwei("gate", "check-config", "--config", str(toml), "--json")
    (warning,) = json.loads(on.stdout)["warnings"]
    assert warning.startswith("WARNING: No guard is enrolled") and warning in on.stderr
