"""Two-factor login (TOTP) on the dashboard, through Starlette's TestClient on a real Site,
and from the command line: the code after the password, counted, single-use; recovery
codes; enrolment on the account page and at login; audit rows; no-store everywhere."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pyotp
import pytest
from sqlalchemy import select
from starlette.testclient import TestClient

from server.live import LiveFeed
from server.site import Site
from server.storage import accounts as stored
from server.storage import dashboard as stored_dashboard
from server.storage.schema import recovery_codes
from server.web.accounts import CHALLENGE_TRIES, FAILS_PER_ACCOUNT_AND_ADDRESS, AccountStore
from server.web.app import create_app
from tests.conftest import run_menwei
from tests.server.test_login_limits import set_web

PASSWORD = "correct horse battery"
ADDRESS = "testclient"  # the client address Starlette's TestClient reports


def secret(uri: str) -> str:
    return str(pyotp.parse_uri(uri).secret)


@pytest.fixture
def accounts(site: Site) -> AccountStore:
    store = AccountStore(site.store, site=site.site)
    for name, role in (("ada", "admin"), ("olga", "operator"), ("vic", "viewer")):
        store.add(name, role, PASSWORD, actor="test")
    return store


def client_of(site: Site) -> TestClient:
    return TestClient(create_app(site.dir, LiveFeed()), base_url="http://testserver")


@pytest.fixture
def client(site: Site, accounts: AccountStore) -> Iterator[TestClient]:
    with client_of(site) as c:
        yield c


def field(html: str, name: str) -> str:
    m = re.search(rf'name="{name}" value="([^"]+)"', html)
    assert m, f"no {name} in the page"
    return m.group(1)


def password_step(client: TestClient, name: str, password: str = PASSWORD) -> Any:
    page = client.get("/login")
    return client.post(
        "/login",
        data={"name": name, "password": password, "csrf": field(page.text, "csrf"), "next": "/"},
        follow_redirects=False,
    )


def code_step(client: TestClient, challenge_page: str, code: str) -> Any:
    return client.post(
        "/login/code",
        data={
            "challenge": field(challenge_page, "challenge"),
            "code": code,
            "csrf": field(challenge_page, "csrf"),
            "next": "/",
        },
        follow_redirects=False,
    )


def audit(site: Site, action: str) -> list[dict[str, Any]]:
    with site.store.read() as tx:
        entries = stored_dashboard.audit_entries(tx, 10_000)
    return [e for e in reversed(entries) if e["action"] == action]


def failures(site: Site, name: str) -> int:
    with site.store.read() as tx:
        return stored.failures_since(tx, name, ADDRESS, "2000-01-01T00:00:00+00:00")[0]


def test_the_code_is_asked_after_the_password_and_counted_and_used_once(
    client: TestClient, site: Site, accounts: AccountStore
) -> None:
    uri, _codes = accounts.enable_totp("ada", actor="test")
    totp = pyotp.TOTP(secret(uri))

    first = password_step(client, "ada")
    assert first.status_code == 200 and 'action="/login/code"' in first.text
    assert "menwei_session" not in first.headers.get("set-cookie", "")
    assert client.get("/", follow_redirects=False).status_code == 303  # no session yet

    wrong = code_step(client, first.text, "000000" if totp.now() != "000000" else "111111")
    assert wrong.status_code == 401 and "验证码错误" in wrong.text
    assert failures(site, "ada") == 1  # the wrong code counts as a failed login
    assert [e["target"] for e in audit(site, "login_code_failed")] == [ADDRESS]

    code = totp.now()
    right = code_step(client, wrong.text, code)
    assert right.status_code == 303 and "menwei_session" in right.headers["set-cookie"]
    assert client.get("/").status_code == 200
    assert failures(site, "ada") == 0  # a login clears the failures of its account here
    assert audit(site, "login")[-1]["detail"] == "totp"

    # replayed in the same window, in a new login: refused
    client.cookies.clear()
    again = password_step(client, "ada")
    replay = code_step(client, again.text, code)
    assert replay.status_code == 401 and "menwei_session" not in replay.headers.get(
        "set-cookie", ""
    )
    assert failures(site, "ada") == 1


def test_a_recovery_code_logs_in_once(
    client: TestClient, site: Site, accounts: AccountStore
) -> None:
    _uri, codes = accounts.enable_totp("ada", actor="test")
    assert len(codes) == 8 and len(set(codes)) == 8
    challenge = password_step(client, "ada")
    used = code_step(client, challenge.text, codes[3].lower())  # case does not matter
    assert used.status_code == 303
    assert audit(site, "login")[-1]["detail"] == "recovery code"
    assert audit(site, "totp_recovery_used")[-1]["detail"] == "7 left"

    client.cookies.clear()
    challenge = password_step(client, "ada")
    assert code_step(client, challenge.text, codes[3]).status_code == 401
    with site.store.read() as tx:
        stored_codes = tx.execute(select(recovery_codes.c.code_sha256)).all()
    assert stored_codes and not any(c in str(stored_codes) for c in codes)  # only digests


def test_wrong_codes_count_against_the_login_limit(
    client: TestClient, site: Site, accounts: AccountStore
) -> None:
    uri, _codes = accounts.enable_totp("ada", actor="test")
    bad = "000000" if pyotp.TOTP(secret(uri)).now() != "000000" else "111111"
    page = password_step(client, "ada").text
    for _ in range(CHALLENGE_TRIES - 1):
        page = code_step(client, page, bad).text
    ended = code_step(client, page, bad)  # the challenge ends after its last try
    assert ended.status_code == 401 and "验证步骤已失效" in ended.text
    page = password_step(client, "ada").text
    for _ in range(FAILS_PER_ACCOUNT_AND_ADDRESS - CHALLENGE_TRIES):
        page = code_step(client, page, bad).text
    assert failures(site, "ada") == FAILS_PER_ACCOUNT_AND_ADDRESS
    limited = code_step(client, page, pyotp.TOTP(secret(uri)).now())  # even the right code
    assert limited.status_code == 429
    assert password_step(client, "ada").status_code == 429  # and the password


def test_a_challenge_is_for_its_address_and_expires(site: Site, accounts: AccountStore) -> None:
    uri, _codes = accounts.enable_totp("olga", actor="test")
    now = [datetime.now(UTC)]
    timed = AccountStore(site.store, clock=lambda: now[0])
    challenge = timed.login("olga", PASSWORD, "10.0.0.1").challenge
    assert challenge is not None
    code = pyotp.TOTP(secret(uri)).at(now[0])
    assert timed.second_step(challenge, code, "10.0.0.2").expired  # another address
    now[0] += timedelta(minutes=6)
    code = pyotp.TOTP(secret(uri)).at(now[0])
    assert timed.second_step(challenge, code, "10.0.0.1").expired  # 5 minutes are over
    fresh = timed.login("olga", PASSWORD, "10.0.0.1").challenge
    assert fresh is not None and timed.second_step(fresh, code, "10.0.0.1").token


def test_admins_enrol_at_login_when_the_site_requires_it(
    site: Site, accounts: AccountStore
) -> None:
    set_web(site.dir, require_totp_for_admins="true")
    with client_of(site) as client:
        assert password_step(client, "olga").status_code == 303  # not an admin: password only
        client.cookies.clear()
        enrol = password_step(client, "ada")
        assert enrol.status_code == 200 and "<svg" in enrol.text
        assert "本站要求管理员使用二次验证" in enrol.text
        shown = re.search(r'<code class="secret">([A-Z2-7 ]+)</code>', enrol.text)
        assert shown
        code = pyotp.TOTP(shown.group(1).replace(" ", "")).now()
        done = code_step(client, enrol.text, code)
        assert done.status_code == 200 and "menwei_session" in done.headers["set-cookie"]
        codes = re.findall(
            r"<code>([A-Z2-9]{4}-[A-Z2-9]{4}-[A-Z2-9]{4}-[A-Z2-9]{4})</code>", done.text
        )
        assert len(codes) == 8
        assert client.get("/").status_code == 200
    assert accounts.totp_status("ada").enabled and accounts.totp_status("ada").recovery_left == 8
    assert [e["target"] for e in audit(site, "totp_enable")] == ["ada"]


def test_enrolment_on_the_account_page_is_confirmed_by_a_first_code(
    client: TestClient, site: Site, accounts: AccountStore
) -> None:
    assert password_step(client, "vic").status_code == 303
    page = client.get("/account")
    assert page.status_code == 200 and 'action="/account/totp/setup"' in page.text
    csrf = field(page.text, "csrf")
    assert client.post("/account/totp/setup", data={"csrf": csrf}).status_code == 200
    pending = client.get("/account").text
    assert "<svg" in pending and 'action="/account/totp/confirm"' in pending
    assert not accounts.totp_status("vic").enabled  # not before a first code
    shown = re.search(r'<code class="secret">([A-Z2-7 ]+)</code>', pending)
    assert shown
    totp = pyotp.TOTP(shown.group(1).replace(" ", ""))
    wrong = client.post("/account/totp/confirm", data={"csrf": csrf, "code": "12345"})
    assert wrong.status_code == 400 and not accounts.totp_status("vic").enabled
    confirmed = client.post("/account/totp/confirm", data={"csrf": csrf, "code": totp.now()})
    assert confirmed.status_code == 200 and "恢复码" in confirmed.text
    codes = re.findall(r"<code>([A-Z2-9-]{19})</code>", confirmed.text)
    assert len(codes) == 8 and accounts.totp_status("vic").enabled
    # switched off with a recovery code
    off = client.post(
        "/account/totp/disable", data={"csrf": csrf, "code": codes[0]}, follow_redirects=False
    )
    assert off.status_code == 303 and not accounts.totp_status("vic").enabled
    assert [e["detail"] for e in audit(site, "totp_enable")] == ["account page"]
    assert [e["target"] for e in audit(site, "totp_disable")] == ["vic"]
    assert [e["detail"] for e in audit(site, "totp_recovery_used")] == ["7 left"]


def test_every_authenticated_response_and_download_is_no_store(
    client: TestClient, site: Site
) -> None:
    assert password_step(client, "vic").status_code == 303
    day = datetime.now(site.config.tz).date().isoformat()
    for path in ("/", "/alerts", "/account", f"/reports/daily.csv?day={day}", "/metrics"):
        r = client.get(path)
        assert r.status_code == 200, path
        assert r.headers["cache-control"] == "no-store", path
    xlsx = client.get(f"/reports/daily.xlsx?day={day}")
    assert xlsx.headers["cache-control"] == "no-store"
    assert "attachment" in xlsx.headers["content-disposition"]
    assert client.get("/login").headers["cache-control"] == "no-store"
    assert "cache-control" not in client.get("/static/app.css").headers


def test_totp_from_the_command_line(site: Site, accounts: AccountStore) -> None:
    d = str(site.dir)
    enabled = json.loads(run_menwei("operator", "totp", "enable", d, "ada", "--json").stdout)
    assert enabled["uri"].startswith("otpauth://totp/") and len(enabled["recovery_codes"]) == 8
    text = run_menwei("operator", "totp", "enable", d, "olga").stdout  # replaces nothing of ada's
    assert "otpauth://totp/" in text and "█" in text  # the QR code, in the terminal
    listed = {
        o["name"]: o["totp"] for o in json.loads(run_menwei("operator", "list", d, "--json").stdout)
    }
    assert listed == {"ada": True, "olga": True, "vic": False}
    challenge = accounts.login("ada", PASSWORD, "10.0.0.1").challenge
    assert challenge is not None
    code = pyotp.TOTP(secret(enabled["uri"])).now()
    assert accounts.second_step(challenge, code, "10.0.0.1").token
    off = json.loads(run_menwei("operator", "totp", "disable", d, "ada", "--json").stdout)
    assert off == {"name": "ada", "was_on": True}
    assert accounts.login("ada", PASSWORD, "10.0.0.1").token  # password only again
    missing = run_menwei("operator", "totp", "enable", d, "nobody", check=False)
    assert missing.returncode == 2 and "no operator 'nobody'" in missing.stderr
    assert [e["target"] for e in audit(site, "totp_enable")] == ["ada", "olga"]
    assert [e["target"] for e in audit(site, "totp_disable")] == ["ada"]
    # the secret is in the store only: not in the audit log
    with site.store.read() as tx:
        log = json.dumps(stored_dashboard.audit_entries(tx, 10_000))
    assert secret(enabled["uri"]) not in log
