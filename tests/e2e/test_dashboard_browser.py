"""The dashboard in a real browser: headless Debian chromium driven by Playwright, against
`menwei server run DIR --http ...` with a real Mosquitto and real gates (`menwei gate run`,
simulated hardware) reading camera frames of real signed passes.

One scene, in order: log in; both gates online; a gate SIGKILLed goes offline (its Last
Will) without reloading; a passage appears in the live feed without reloading; a fever
(recheck, then fever) raises an alert that is acknowledged with a note; the daily report
downloads with the day's figures.
"""

from __future__ import annotations

import csv
import io
import json
import re
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from edge.config import load_config
from menwei.mosquitto import MosquittoBroker, free_port
from server.site import IssuedPass, Site
from server.storage import Store
from server.storage.dashboard import gates_seen
from server.web.accounts import AccountStore
from tests.e2e.helpers import Stage, menwei_process, provision_gate, wait_until

sync_api = pytest.importorskip("playwright.sync_api")
expect = sync_api.expect

CHROMIUM = Path("/usr/bin/chromium")
ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-dev-shm-usage",
    "--disable-background-networking",
    "--disable-component-update",
    "--no-first-run",
    "--disable-sync",
]
PASSWORD = "gatekeeper-2026"
NORMAL = {"forehead_c": 34.5}  # the simulated sensor plus the gate's offset: about 36.5 °C
FEVER = {"forehead_c": 36.5}  # about 38.5 °C: re-measured, then refused with an alert

pytestmark = pytest.mark.skipif(not CHROMIUM.exists(), reason="Debian chromium not installed")


@pytest.fixture
def browser() -> Iterator[object]:
    with sync_api.sync_playwright() as p:
        b = p.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=ARGS)
        try:
            yield b
        finally:
            b.close()


def gate_states(store: Store) -> dict[str, str]:
    with store.read() as tx:
        seen = gates_seen(tx)
    return {g.gate: json.loads(g.status).get("state", "") for g in seen if g.status}


def http_ok(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as r:
            return bool(r.status == 200)
    except OSError:
        return False


def test_operator_watches_gates_feed_alerts_and_downloads_the_report(
    tmp_path: Path, site: Site, resident: IssuedPass, broker: MosquittoBroker, browser: object
) -> None:
    feverish = site.issue_pass("1-1-102", "李发热", room="1-1-102")
    AccountStore(site.store).add("ada", "admin", PASSWORD, actor="test")
    lane = provision_gate(tmp_path, site.dir, "gate-a", "in", broker.url, keepalive_s=2)
    doomed = provision_gate(tmp_path, site.dir, "gate-b", "in", broker.url, keepalive_s=2)
    assert load_config(lane / "gate.toml").mqtt.keepalive_s == 2
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    run = ("server", "run", str(site.dir), "--http", f"127.0.0.1:{port}", "--broker", broker.url)

    def gate(name: str, d: Path):  # type: ignore[no-untyped-def]
        return menwei_process(
            tmp_path / f"{name}.log", "gate", "run", "--config", str(d / "gate.toml")
        )

    with (
        menwei_process(tmp_path / "server.log", *run) as server,
        gate("gate-a", lane) as gate_a,
        gate("gate-b", doomed) as gate_b,
    ):
        wait_until(lambda: http_ok(f"{base}/healthz"), 20, lambda: server.output())
        wait_until(
            lambda: gate_states(site.store) == {"gate-a": "online", "gate-b": "online"},
            30,
            lambda: f"gates not online: {gate_states(site.store)}\n{gate_a.output()}",
        )
        page = browser.new_page(viewport={"width": 1280, "height": 860})  # type: ignore[attr-defined]
        page.set_default_timeout(20_000)

        # log in (zh-CN by default)
        page.goto(f"{base}/")
        expect(page).to_have_url(f"{base}/login?next=/")
        page.fill("input[name=name]", "ada")
        page.fill("input[name=password]", PASSWORD)
        page.click("button[type=submit]")
        expect(page.locator("header .op")).to_contain_text("ada")

        # an overview with both gates online; then one is killed: offline, no reload
        state_b = page.locator('tr[data-gate="gate-b"] [data-role="state"]')
        expect(page.locator('tr[data-gate="gate-a"] [data-role="state"]')).to_have_text("在线")
        expect(state_b).to_have_text("在线")
        gate_b.kill()
        expect(state_b).to_have_text("离线", timeout=20_000)
        assert gate_a.alive() and server.alive()

        # a new passage appears in the live feed without reloading
        page.goto(f"{base}/feed")
        expect(page.locator("#live-state")).to_have_class("pill live")
        stage = Stage(lane / "stage")
        stage.drop(resident.qr, NORMAL)
        row = page.locator("#feed tbody tr").first
        expect(row).to_contain_text("张*丰")
        expect(row).to_contain_text("请通行")
        expect(row).to_contain_text("gate-a")
        assert "张三丰" not in page.content()

        # a fever: re-measured, then refused, and an alert to acknowledge
        stage.drop(feverish.qr, FEVER)
        expect(page.locator("#feed tbody tr").first).to_contain_text("体温异常，请前往发热门诊")
        page.goto(f"{base}/alerts")
        alert = page.locator('li.alert[data-kind="fever"]')
        expect(alert).to_have_count(1)
        alert.locator("input[name=note]").fill("已通知社区医生")
        alert.locator("button[type=submit]").click()
        expect(page.locator(".flash.good")).to_be_visible()
        page.goto(f"{base}/alerts?all=1")
        expect(page.locator('li.alert[data-kind="fever"] .ack')).to_contain_text("已通知社区医生")

        # the daily report, downloaded as the operator would
        page.goto(f"{base}/reports")
        with page.expect_download() as download:
            page.click("#download-csv")
        path = download.value.path()
        rows = list(csv.DictReader(io.StringIO(Path(path).read_text(encoding="utf-8-sig"))))
        site_row = next(r for r in rows if r["level"] == "site")
        assert int(site_row["passages_in"]) == 1, rows
        assert int(site_row["fever_alerts"]) == 1, rows
        assert int(site_row["denials:fever"]) == 1 and int(site_row["denials:fever_recheck"]) == 1
        assert server.alive(), server.output()

        # the overview after all that: counted, one gate offline, nothing open
        page.goto(f"{base}/")
        expect(page.locator("#count-in")).to_have_text("1")
        expect(state_b).to_have_text("离线")
        page.screenshot(path=str(tmp_path / "overview.png"), full_page=True)

        # a gate's data age keeps growing on an open page (no reload) and turns red past
        # max_data_age_h (24 h): the browser's clock is moved 25 hours on
        page.clock.install()
        page.goto(f"{base}/")
        age = page.locator('tr[data-gate="gate-a"] [data-role="data-age"] span')
        expect(age).to_have_text(re.compile(r"^\d+ 分钟$"))
        expect(age).to_have_class("ok")
        page.clock.fast_forward("25:00:00")
        expect(age).to_have_class("bad")
        expect(age).to_have_text(re.compile(r"^25\.\d 小时$"))
        # SIGTERM with a live stream open: the collector and the dashboard stop cleanly
        assert server.stop() == 0, server.output()

    acked = [(a.acked_by, a.ack_note) for a in site.alerts.list() if a.kind == "fever"]
    assert acked == [("ada", "已通知社区医生")]
