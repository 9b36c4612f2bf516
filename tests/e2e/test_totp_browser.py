"""Two-factor login in a real browser: headless Debian chromium driven by Playwright,
against the dashboard on real uvicorn (DashboardServer, as `menwei server run --http`
serves it) and a real store.

One scene: an admin logs in with the password, sets up TOTP on the account page (the QR
code is drawn under the page's strict CSP), confirms it with the app's code, sees the
recovery codes once, logs out, and logs in again with the password and then a recovery code;
a recovery code works once in place of a code, and the app's next code logs in.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime

import pyotp
import pytest

from server.site import Site
from server.web.accounts import AccountStore
from tests.e2e.helpers import wait_until
from tests.e2e.test_dashboard_browser import CHROMIUM, browser  # noqa: F401 (a fixture)
from tests.server.test_login_limits import served

sync_api = pytest.importorskip("playwright.sync_api")
expect = sync_api.expect
PASSWORD = "gatekeeper-2026"

pytestmark = pytest.mark.skipif(not CHROMIUM.exists(), reason="Debian chromium not installed")


def test_an_admin_sets_up_totp_and_logs_in_with_a_code(
    site: Site, request: pytest.FixtureRequest
) -> None:
    chromium = request.getfixturevalue("browser")
    AccountStore(site.store).add("ada", "admin", PASSWORD, actor="test")
    with served(site) as (base, _server):
        page = chromium.new_page()
        page.set_default_timeout(20_000)
        refused: list[str] = []
        page.on("console", lambda m: refused.append(m.text) if "Content Security" in m.text else 0)

        def password_step() -> None:
            page.goto(f"{base}/login?lang=en")
            page.fill("input[name=name]", "ada")
            page.fill("input[name=password]", PASSWORD)
            page.click("button[type=submit]")

        password_step()
        page.click("header a.op")
        expect(page).to_have_url(f"{base}/account")
        page.click("text=Set up two-factor login")
        qr = page.locator(".qr svg")
        expect(qr).to_be_visible()
        box = qr.bounding_box()
        assert box is not None and box["width"] > 100 and box["height"] > 100
        secret = page.locator("code.secret").inner_text().replace(" ", "")
        totp = pyotp.TOTP(secret)
        enrolled_step = totp.timecode(datetime.now(UTC))
        page.fill("input[name=code]", totp.at(datetime.now(UTC)))
        page.click("text=Confirm and switch on")
        expect(page.locator("h1")).to_have_text("Recovery codes")
        codes = page.locator("ul.recovery code").all_inner_texts()
        assert len(codes) == 8 and all(
            re.fullmatch(r"[A-Z2-9]{4}(-[A-Z2-9]{4}){3}", c) for c in codes
        )
        page.click("text=Continue")
        expect(page.locator(".recovery-left")).to_have_text("8")

        page.click("header button.link")  # log out
        password_step()
        expect(page.locator("h1")).to_have_text("Two-factor login")
        page.fill("input[name=code]", codes[0])
        page.click("button[type=submit]")
        expect(page.locator("header a.op")).to_contain_text("ada")

        page.click("header button.link")
        password_step()
        page.fill("input[name=code]", codes[0])  # spent
        page.click("button[type=submit]")
        expect(page.locator("[role=alert]")).to_have_text("Wrong code")
        # the code that switched TOTP on is spent: the app's next one (≤ 30 s away) logs in
        wait_until(lambda: totp.timecode(datetime.now(UTC)) > enrolled_step, 45, "no new TOTP step")
        page.fill("input[name=code]", totp.now())
        page.click("button[type=submit]")
        expect(page.locator("header a.op")).to_contain_text("ada")
        assert refused == []
