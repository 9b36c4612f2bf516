"""The guard page in a real browser (headless Debian chromium, Playwright) against the real
gate daemon and its guard server (simulated hardware, the relay a recording GPIO fake).

One scene: the page loads under its strict CSP without a single violation; a wrong PIN is
refused on screen in Chinese and English and the relay stays shut; the right PIN opens
the gate, is logged under the guard's name and shown; and another page that frames the
guard page gets nothing (frame-ancestors 'none').
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from drivers.gpio import FakePins
from edge.daemon import GateDaemon
from tests.e2e.test_dashboard_browser import CHROMIUM, browser  # noqa: F401 (a fixture)
from tests.edge.gates import GUARD, PIN, enrol, served

sync_api = pytest.importorskip("playwright.sync_api")
expect = sync_api.expect

pytestmark = pytest.mark.skipif(not CHROMIUM.exists(), reason="Debian chromium not installed")

RELAY = 17
# Runs before the page's own script (Playwright injects it past the CSP): every violation
# the page meets is kept where the test can read it.
WATCH_CSP = """
window.__csp = [];
document.addEventListener('securitypolicyviolation',
  (e) => window.__csp.push(`${e.violatedDirective} ${e.blockedURI}`));
"""


def relay_levels(daemon: GateDaemon) -> list[bool]:
    pins = daemon.hw.pins
    assert isinstance(pins, FakePins)
    return [value for _t, pin, value in pins.history if pin == RELAY]


def overrides(daemon: GateDaemon) -> list[dict[str, object]]:
    return [e.event.detail for e in daemon.store.log() if e.event.kind == "override"]


def test_a_guard_opens_with_a_pin_under_a_strict_csp(
    gate_dir: Path, request: pytest.FixtureRequest
) -> None:
    chromium = request.getfixturevalue("browser")
    enrol(gate_dir)
    with served(gate_dir) as (daemon, port):
        url = f"http://127.0.0.1:{port}/"
        context = chromium.new_context()
        page = context.new_page()
        console: list[str] = []
        page.on("console", lambda m: console.append(f"{m.type}: {m.text}"))
        page.on("pageerror", lambda e: console.append(f"pageerror: {e}"))
        page.add_init_script(WATCH_CSP)
        deadline = time.monotonic() + 20
        while True:  # the server starts on its own thread
            try:
                page.goto(url)
                break
            except sync_api.Error:
                assert time.monotonic() < deadline, "the guard page never answered"
                time.sleep(0.2)
        expect(page.locator("#health")).to_contain_text("摄像头 Camera")  # the script ran
        expect(page.locator("#big")).to_have_text("请出示通行证")
        expect(page.locator("#enrol")).to_be_hidden()
        assert page.locator("#pin").get_attribute("inputmode") == "numeric"
        assert page.locator("#pin").get_attribute("type") == "password"

        page.fill("#guard", GUARD)
        page.fill("#pin", "739150")
        page.fill("#reason", "送医")
        page.click("button[type=submit]")
        expect(page.locator("#msg")).to_have_text("门卫姓名或 PIN 不正确\nWrong guard name or PIN")
        expect(page.locator("#pin")).to_have_value("")  # never left on the screen
        assert relay_levels(daemon) == [False] and overrides(daemon) == []

        page.fill("#pin", PIN)
        page.click("button[type=submit]")
        expect(page.locator("#msg")).to_contain_text("已开门并记录")
        expect(page.locator("#zh")).to_have_text("门卫人工放行")
        deadline = time.monotonic() + 20
        while not overrides(daemon):
            assert time.monotonic() < deadline, "the override was not logged"
            time.sleep(0.1)
        assert overrides(daemon) == [{"guard": GUARD, "reason": "送医"}]
        assert relay_levels(daemon)[:2] == [False, True]

        violations = page.evaluate("window.__csp")
        assert violations == [], violations
        # The one error: the browser's note on the wrong PIN's answer (403), as designed.
        errors = [c for c in console if c.startswith(("error", "pageerror"))]
        assert errors == [
            "error: Failed to load resource: the server responded with a status of 403 (Forbidden)"
        ], console

        # Another page frames the guard page (clickjacking): the browser refuses it.
        framer = context.new_page()
        framed: list[str] = []
        framer.on("console", lambda m: framed.append(m.text))
        framer.set_content(f'<iframe id="g" src="{url}" width="800" height="600"></iframe>')
        deadline = time.monotonic() + 20
        while not any("frame-ancestors" in m for m in framed):
            assert time.monotonic() < deadline, f"framing was not refused: {framed}"
            framer.wait_for_timeout(100)
        inner = framer.frame_locator("#g")
        assert inner.locator("#override").count() == 0
        context.close()
