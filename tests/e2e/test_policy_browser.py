"""The policy page in a real browser (headless Debian chromium, Playwright) against
`menwei server run DIR --http ...` — the command line injects the try-out — with a real
Mosquitto and a real gate (`menwei gate run`, simulated hardware).

One scene: a passage at 36.6 °C is let in; the admin lowers the fever threshold in
server.toml, sees the difference, tries it (that passage would now be asked to re-measure),
publishes it, and watches the gate report the new config version (rollout 1/1)."""

from __future__ import annotations

from pathlib import Path

import pytest
from sqlalchemy import func, select

from menwei.mosquitto import MosquittoBroker, free_port
from server.site import IssuedPass, Site
from server.storage import Store
from server.storage.schema import events
from server.web.accounts import AccountStore
from tests.e2e.helpers import Stage, menwei_process, provision_gate, wait_until
from tests.e2e.test_dashboard_browser import (  # noqa: F401 (browser: a fixture)
    CHROMIUM,
    NORMAL,
    PASSWORD,
    browser,
    http_ok,
)
from tests.server.test_policy_rollout import edit_policy

sync_api = pytest.importorskip("playwright.sync_api")
expect = sync_api.expect

pytestmark = pytest.mark.skipif(not CHROMIUM.exists(), reason="Debian chromium not installed")


def stored_decisions(store: Store) -> int:
    with store.read() as tx:
        decisions = select(func.count()).select_from(events).where(events.c.kind == "decision")
        return int(tx.execute(decisions).scalar_one())


def test_admin_tries_publishes_and_watches_the_rollout(
    tmp_path: Path,
    site: Site,
    resident: IssuedPass,
    broker: MosquittoBroker,
    request: pytest.FixtureRequest,
) -> None:
    chromium = request.getfixturevalue("browser")
    AccountStore(site.store).add("ada", "admin", PASSWORD, actor="test")
    lane = provision_gate(tmp_path, site.dir, "gate-a", "in", broker.url, status_interval_s=1)
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    run = ("server", "run", str(site.dir), "--http", f"127.0.0.1:{port}", "--broker", broker.url)
    gate_run = ("gate", "run", "--config", str(lane / "gate.toml"))
    with (
        menwei_process(tmp_path / "server.log", *run) as server,
        menwei_process(tmp_path / "gate.log", *gate_run) as gate,
    ):
        wait_until(lambda: http_ok(f"{base}/healthz"), 20, lambda: server.output())
        Stage(lane / "stage").drop(resident.qr, NORMAL)
        wait_until(lambda: stored_decisions(site.store) == 1, 60, lambda: gate.output())
        edit_policy(site.dir, fever_threshold_c=36.0)

        page = chromium.new_page(viewport={"width": 1280, "height": 900})
        page.set_default_timeout(20_000)
        page.goto(f"{base}/policy")
        page.fill("input[name=name]", "ada")
        page.fill("input[name=password]", PASSWORD)
        page.click("button[type=submit]")
        expect(page).to_have_url(f"{base}/policy")
        expect(page.locator("#policy-version")).to_have_text("1")
        expect(page.locator("#policy-diff")).to_contain_text("fever_threshold_c")
        expect(page.locator("#policy-diff")).to_contain_text("36.0")

        page.click("#try-form button[type=submit]")
        expect(page.locator("#trial-decisions")).to_have_text("1")
        expect(page.locator("#trial-changed")).to_have_text("1")
        expect(page.locator("#trial-sample")).to_contain_text("体温偏高，请稍候重新测温")

        page.click("#publish-form button[type=submit]")
        expect(page.locator("#policy-done")).to_have_text("新规则已发布")
        expect(page.locator("#policy-version")).to_have_text("2")
        expect(page.locator("#policy-same")).to_be_visible()

        def rolled_out() -> bool:
            page.goto(f"{base}/policy")
            return page.locator("#rollout").inner_text() == "1/1"

        wait_until(rolled_out, 30, lambda: f"rollout: {page.locator('#rollout').inner_text()}")
        expect(page.locator("#rollout-gates")).to_contain_text("已是最新")
        page.goto(f"{base}/audit")
        expect(page.locator("#audit")).to_contain_text("policy_publish")
        assert server.alive() and gate.alive(), server.output()
