"""The dashboard through Starlette's TestClient against a real Site in tmp.

Nothing is mocked: accounts and sessions are rows in the site's SQLite file,
events are inserted by the store as the collector would, and the live feed is
the collector's LiveFeed class.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import threading
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import func, select, update
from starlette.testclient import TestClient

from server.live import LiveFeed
from server.site import Site
from server.storage import accounts as stored_accounts
from server.storage import dashboard as stored
from server.storage.schema import gates, sessions
from server.web import i18n
from server.web.accounts import AccountStore
from server.web.app import create_app
from tests import collected
from tests.conftest import REPO, SITE
from tests.e2e.helpers import make_event, wait_until

PASSWORD = "correct horse battery"
TEMPLATES = REPO / "server" / "web" / "templates"


@pytest.fixture
def accounts(site: Site) -> AccountStore:
    return add_operators(site)


def add_operators(site: Site) -> AccountStore:
    """ada (admin), olga (operator) and vic (viewer), all with PASSWORD."""
    store = AccountStore(site.store)
    for name, role in (("ada", "admin"), ("olga", "operator"), ("vic", "viewer")):
        store.add(name, role, PASSWORD, actor="test")
    return store


@pytest.fixture
def feed() -> LiveFeed:
    return LiveFeed()


@pytest.fixture
def client(site: Site, accounts: AccountStore, feed: LiveFeed) -> Iterator[TestClient]:
    app = create_app(site.dir, feed)
    with TestClient(app, base_url="http://testserver") as c:
        yield c


def csrf_of(html: str) -> str:
    m = re.search(r'name="csrf" value="([^"]+)"', html)
    assert m, "no CSRF token in the page"
    return m.group(1)


def login(client: TestClient, name: str, password: str = PASSWORD):
    page = client.get("/login")
    return client.post(
        "/login",
        data={"name": name, "password": password, "csrf": csrf_of(page.text), "next": "/"},
        follow_redirects=False,
    )


def logged_in(client: TestClient, name: str) -> str:
    """Log in and return the session's CSRF token (from a page's forms)."""
    r = login(client, name)
    assert r.status_code == 303, r.text
    return csrf_of(client.get("/").text)


def now_local(site: Site) -> datetime:
    return datetime.now(site.config.tz).replace(microsecond=0)


def audit_log(site: Site) -> list[dict]:
    """Every audit entry, oldest first."""
    with site.store.read() as tx:
        return stored.audit_entries(tx, 10_000)[::-1]


def session_count(site: Site) -> int:
    with site.store.read() as tx:
        return int(tx.execute(select(func.count()).select_from(sessions)).scalar_one())


def store_events(site: Site, gate: str, *events_kw: dict) -> None:
    existing = collected.contiguous_seq(site.store, gate)
    events = [
        make_event(SITE, gate, existing + i + 1, at=now_local(site).isoformat(), **kw)
        for i, kw in enumerate(events_kw)
    ]
    collected.insert_events(site.store, gate, events)
    for e in events:
        site.alerts.from_event(e)


# --- logging in --------------------------------------------------------------------------


def test_pages_need_a_login_and_a_good_password_opens_a_session(client: TestClient) -> None:
    r = client.get("/alerts", follow_redirects=False)
    assert r.status_code == 303 and r.headers["location"].startswith("/login?next=/alerts")
    r = login(client, "olga")
    assert r.status_code == 303
    cookie = r.headers["set-cookie"]
    assert "menwei_session=" in cookie and "HttpOnly" in cookie and "SameSite=lax" in cookie
    page = client.get("/")
    assert page.status_code == 200 and "olga" in page.text
    assert "default-src 'self'" in page.headers["content-security-policy"]


def test_wrong_password_and_unknown_account_say_the_same(client: TestClient, site: Site) -> None:
    for name, password in (("olga", "wrong password"), ("nobody", PASSWORD)):
        r = login(client, name, password)
        assert r.status_code == 401
        assert "账号或密码错误" in r.text
        assert "menwei_session" not in r.headers.get("set-cookie", "")
    actions = [e["action"] for e in audit_log(site)]
    assert actions.count("login_failed") == 2


def test_failed_logins_are_rate_limited_per_account_and_address(client: TestClient) -> None:
    for _ in range(5):
        assert login(client, "olga", "wrong password").status_code == 401
    r = login(client, "olga")  # the right password no longer helps for 15 minutes
    assert r.status_code == 429
    assert "15 分钟" in r.text
    assert client.get("/?lang=en").status_code == 200  # still logged out: the login page
    r = login(client, "olga")
    assert "Too many failed logins" in r.text
    assert login(client, "ada").status_code == 303  # another account from here is not blocked


def test_login_form_without_its_csrf_token_is_refused(client: TestClient) -> None:
    client.get("/login")
    r = client.post("/login", data={"name": "olga", "password": PASSWORD})
    assert r.status_code == 403


REDIRECT_VARIANTS = [
    "//evil.example",
    "/\\evil.example",
    "/\t/evil.example",
    "/\n/evil.example",
    "\\evil.example",
    "\\\\evil.example",
    "https://evil.example",
    "///evil.example",
    " //evil.example",
    "/\x7f/evil.example",
]


@pytest.mark.parametrize("target", REDIRECT_VARIANTS)
def test_next_never_leads_to_another_host(client: TestClient, target: str) -> None:
    """The open redirect: `/\\evil.example` passed as a path of this app, and browsers
    follow it to evil.example (the Location after a login, the recovery codes link): a
    browser reads "\\" as "/", drops tabs and newlines and strips leading spaces, and takes
    any run of slashes after http: as the start of a host. Each variant is refused."""
    page = client.get("/login")
    r = client.post(
        "/login",
        data={"name": "olga", "password": PASSWORD, "csrf": csrf_of(page.text), "next": target},
        follow_redirects=False,
    )
    assert r.status_code == 303 and r.headers["location"] == "/"
    again = client.get("/login", params={"next": target}, follow_redirects=False)
    assert again.status_code == 303 and again.headers["location"] == "/"


@pytest.mark.parametrize("target", ["/alerts", "/feed?gate=east&day=2026-11-29", "/%5Cx"])
def test_next_keeps_paths_of_this_app(client: TestClient, target: str) -> None:
    """`/%5Cx` is a path of this host (a browser does not decode %5C into the host)."""
    r = login(client, "olga")
    assert r.status_code == 303
    again = client.get("/login", params={"next": target}, follow_redirects=False)
    assert again.status_code == 303 and again.headers["location"] == target


def test_session_expires_absolutely_and_when_idle(client: TestClient, site: Site) -> None:
    logged_in(client, "olga")
    past = (datetime.now(UTC) - timedelta(seconds=1)).isoformat()
    with site.store.write() as tx:
        tx.execute(update(sessions).values(expires_at=past))
    r = client.get("/", follow_redirects=False)
    assert r.status_code == 303 and "expired=1" in r.headers["location"]
    assert session_count(site) == 0

    logged_in(client, "olga")
    idle = (datetime.now(UTC) - timedelta(hours=1, minutes=1)).isoformat()
    with site.store.write() as tx:
        tx.execute(update(sessions).values(last_seen_at=idle))
    assert client.get("/", follow_redirects=False).status_code == 303


def test_live_stream_without_a_session_is_401_not_a_redirect(client: TestClient) -> None:
    assert client.get("/feed/stream", follow_redirects=False).status_code == 401


def test_logout_ends_the_session(client: TestClient, site: Site) -> None:
    token = logged_in(client, "vic")
    assert client.post("/logout", data={"csrf": token}, follow_redirects=False).status_code == 303
    assert client.get("/", follow_redirects=False).status_code == 303
    assert session_count(site) == 0


# --- changing things: roles, CSRF, audit ---------------------------------------------------


def fever_alert(site: Site) -> int:
    store_events(
        site,
        "east",
        {"kind": "decision", "decision": "deny", "reason": "fever", "direction": "in"},
        {"kind": "alert", "decision": None, "reason": "fever", "direction": "in"},
    )
    alerts = site.alerts.list(open_only=True)
    assert [a.kind for a in alerts] == ["fever"]
    return alerts[0].id


def test_operator_acknowledges_an_alert_with_a_note(client: TestClient, site: Site) -> None:
    alert_id = fever_alert(site)
    token = logged_in(client, "olga")
    page = client.get("/alerts")
    assert "发热" in page.text and f"/alerts/{alert_id}/ack" in page.text
    r = client.post(f"/alerts/{alert_id}/ack", data={"csrf": token, "note": "送发热门诊"})
    assert r.status_code == 200 and "告警已确认" in r.text
    alert = site.alerts.get(alert_id)
    assert alert is not None and alert.acked_by == "olga" and alert.ack_note == "送发热门诊"
    row = next(e for e in audit_log(site) if e["action"] == "alert_ack")
    assert (row["actor"], row["target"], row["detail"]) == ("olga", str(alert_id), "送发热门诊")
    again = client.post(f"/alerts/{alert_id}/ack", data={"csrf": token, "note": "x"})
    assert again.status_code == 404


def test_viewer_cannot_change_anything(client: TestClient, site: Site) -> None:
    alert_id = fever_alert(site)
    site.issue_pass("1-2-301", "王小明", room="1-2-301")
    token = logged_in(client, "vic")
    assert "/ack" not in client.get("/alerts").text  # no form to press
    r = client.post(f"/alerts/{alert_id}/ack", data={"csrf": token, "note": "n"})
    assert r.status_code == 403
    r = client.post("/households/1-2-301/quarantine", data={"csrf": token, "action": "on"})
    assert r.status_code == 403
    assert site.alerts.get(alert_id).acked_at is None  # type: ignore[union-attr]
    household = site.registry.household("1-2-301")
    assert household is None or not household.quarantined
    detail = client.get("/households/1-2-301").text
    assert "王*明" in detail and "王小明" not in detail  # viewers see masked names


def test_a_post_without_the_session_csrf_token_is_refused(client: TestClient, site: Site) -> None:
    alert_id = fever_alert(site)
    logged_in(client, "ada")
    for data in ({"note": "n"}, {"note": "n", "csrf": "forged"}):
        r = client.post(f"/alerts/{alert_id}/ack", data=data)
        assert r.status_code == 403
        assert "表单已失效" in r.text
    assert site.alerts.get(alert_id).acked_at is None  # type: ignore[union-attr]


def test_quarantine_and_release_from_the_household_page_are_audited(
    client: TestClient, site: Site
) -> None:
    site.issue_pass("2-1-502", "李四海", room="2-1-502")
    before = json.loads(site.bundle_path("register.json").read_bytes())["version"]
    token = logged_in(client, "olga")
    r = client.post(
        "/households/2-1-502/quarantine",
        data={"csrf": token, "action": "on", "until": "2030-01-01"},
    )
    assert r.status_code == 200 and "已设为居家隔离" in r.text
    household = site.registry.household("2-1-502")
    assert household is not None and household.quarantined
    assert household.quarantine_until is not None
    assert household.quarantine_until.startswith("2030-01-01")
    assert json.loads(site.bundle_path("register.json").read_bytes())["version"] > before
    r = client.post("/households/2-1-502/quarantine", data={"csrf": token, "action": "off"})
    assert "已解除隔离" in r.text
    assert not site.registry.household("2-1-502").quarantined  # type: ignore[union-attr]
    rows = [
        (e["actor"], e["action"], e["target"])
        for e in audit_log(site)
        if e["actor"] == "olga" and e["action"].startswith("household_")
    ]
    assert rows == [
        ("olga", "household_quarantine", "2-1-502"),
        ("olga", "household_release", "2-1-502"),
    ]
    audit_page = client.get("/audit").text
    assert "household_quarantine" in audit_page and "olga" in audit_page


# --- pages ---------------------------------------------------------------------------------


def test_overview_shows_gates_from_their_retained_status_and_todays_figures(
    client: TestClient, site: Site
) -> None:
    issued = site.issue_pass("3-1-101", "赵六", room="3-1-101")
    collected.set_gate_status(
        site.store,
        "east",
        {
            "gate": "east",
            "state": "online",
            "backlog": 7,
            "direction": "both",
            "versions": {"config": 4, "register": 9},
            "clock": {"trusted": False},
            "camera": {"state": "ok", "error": None},
            "storage": {
                "state": "fault",
                "kind": "full",
                "error": "database or disk is full",
                "since": "2026-03-01T08:00:00+00:00",
            },
        },
    )
    collected.set_gate_status(site.store, "west", {"gate": "west", "state": "offline"})
    ok = {"pass_id": issued.pass_id, "household": "3-1-101"}
    store_events(
        site,
        "east",
        {**ok, "direction": "out"},
        {**ok, "direction": "in"},
        {**ok, "direction": "out"},
        {"decision": "deny", "reason": "expired", "direction": "in", "pass_id": 99},
    )
    logged_in(client, "vic")
    html = client.get("/").text
    east = html[html.index('data-gate="east"') : html.index('data-gate="west"')]
    assert "在线" in east and ">7<" in east and "未同步" in east and "4 / 9" in east
    assert "已满" in east and 'title="database or disk is full"' in east  # its storage fault
    assert "离线" in html[html.index('data-gate="west"') :]
    assert re.search(r'id="count-in">1<', html) and re.search(r'id="count-out">2<', html)
    assert "通行证已过期" in html  # denials by reason, in zh-CN
    en = client.get("/?lang=en")
    assert "Pass expired" in en.text and "menwei_lang=en" in en.headers["set-cookie"]
    assert "Outside now" in client.get("/").text  # the choice sticks (cookie)


def test_overview_shows_each_gates_data_age_from_its_last_proof(
    client: TestClient, site: Site
) -> None:
    now = datetime.now(UTC)
    statuses = {
        "east": {"data_as_of": now - timedelta(minutes=6, seconds=10)},
        "west": {"data_as_of": now - timedelta(hours=30)},
        # Past its own limit (0.5 h, a policy the server has replaced since) by 2 minutes.
        "south": {"data_as_of": now - timedelta(minutes=32), "max_data_age_h": 0.5},
        "north": {"data_age_h": 2},  # a gate from before freshness statements
    }
    for gate, fields in statuses.items():
        as_of = fields.get("data_as_of")
        if isinstance(as_of, datetime):
            fields["data_as_of"] = as_of.isoformat(timespec="seconds")
        status = {"gate": gate, "state": "online", "data_age_h": 0.0, **fields}
        collected.set_gate_status(site.store, gate, status)
    logged_in(client, "vic")
    html = client.get("/").text

    def age_cell(gate: str) -> str:
        row = html[html.index(f'data-gate="{gate}"') :].split("</tr>")[0]
        return row[row.index('data-role="data-age"') :]

    assert re.search(r'class="ok">6 分钟<', age_cell("east")), age_cell("east")
    assert re.search(r'class="bad">30\.0 小时<', age_cell("west")), age_cell("west")
    assert re.search(r'class="bad">32 分钟<', age_cell("south")), age_cell("south")
    assert 'data-limit-h="0.5"' in age_cell("south")
    assert re.search(r'class="ok">2\.0 小时<', age_cell("north")), age_cell("north")
    assert "data-as-of" in age_cell("east") and "Data age" in client.get("/?lang=en").text


def test_feed_filters_and_masks_names(client: TestClient, site: Site) -> None:
    issued = site.issue_pass("4-1-201", "欧阳娜娜", room="4-1-201")
    store_events(
        site,
        "north",
        {"pass_id": issued.pass_id, "household": "4-1-201", "direction": "out"},
        {"decision": "deny", "reason": "revoked", "direction": "out", "pass_id": None},
    )
    logged_in(client, "vic")
    html = client.get("/feed").text
    assert "欧**娜" in html and "欧阳娜娜" not in html
    assert "通行证已注销" in html
    denied = client.get("/feed?decision=deny").text
    assert "通行证已注销" in denied and "欧**娜" not in denied
    assert "欧**娜" not in client.get("/feed?gate=south").text


def test_live_stream_sends_new_passages_as_server_sent_events(
    client: TestClient, site: Site, feed: LiveFeed
) -> None:
    issued = site.issue_pass("5-1-101", "孙悟空", room="5-1-101")
    logged_in(client, "vic")
    event = make_event(SITE, "east", 1, pass_id=issued.pass_id, household="5-1-101")
    denied = make_event(SITE, "east", 2, decision="deny", reason="expired")

    def publish() -> None:
        wait_until(lambda: feed.subscribers > 0, 10, "the stream did not subscribe")
        feed.publish({"type": "event", **denied.to_json()})  # filtered out: allow only
        feed.publish({"type": "status", "gate": "east", "state": "offline"})
        feed.publish({"type": "event", **event.to_json()})

    threading.Thread(target=publish, daemon=True).start()
    got: list[tuple[str, dict]] = []
    with client.stream("GET", "/feed/stream?decision=allow&lang=en") as r:
        assert r.headers["content-type"].startswith("text/event-stream")
        kind = ""
        for line in r.iter_lines():
            if line.startswith("event: "):
                kind = line[7:]
            elif line.startswith("data: "):
                got.append((kind, json.loads(line[6:])))
                if kind == "passage":
                    break
        client.app.state.dashboard.stopping.set()  # type: ignore[attr-defined]
    assert got[0] == ("status", got[0][1]) and got[0][1]["state_text"] == "offline"
    passage = got[-1][1]
    assert passage["holder"] == "孙*空" and passage["message"] == "Please pass"
    assert passage["uuid"] == event.uuid and len(got) == 2


def test_households_search_by_room_and_name_and_detail(client: TestClient, site: Site) -> None:
    a = site.issue_pass("6-2-301", "周杰伦", room="6-2-301")
    site.issue_pass("6-2-302", "蔡依林", room="6-2-302")
    store_events(site, "east", {"pass_id": a.pass_id, "household": "6-2-301", "direction": "out"})
    logged_in(client, "olga")
    by_room = client.get("/households?q=2-301").text
    assert "/households/6-2-301" in by_room and "/households/6-2-302" not in by_room
    by_name = client.get("/households?q=蔡依").text
    assert "/households/6-2-302" in by_name and "/households/6-2-301" not in by_name
    detail = client.get("/households/6-2-301").text
    assert "周杰伦" in detail  # operators see the register's names
    assert "当前在外" in detail and "1 / 2" in detail  # exits today / household_max_exits
    assert client.get("/households/nope").status_code == 404


def test_household_page_shows_the_first_and_last_valid_day_of_each_pass(
    client: TestClient, site: Site
) -> None:
    site.issue_pass(
        "6-3-101",
        "王五",
        valid_from=site.parse_time("2026-12-01"),
        valid_until=site.parse_time("2026-12-31", end=True),
    )
    site.issue_pass(
        "6-3-101",
        "赵六",
        valid_from=site.parse_time("2026-12-01T08:30"),
        valid_until=site.parse_time("2026-12-31T18:00", end=True),
    )
    logged_in(client, "olga")
    detail = client.get("/households/6-3-101").text
    assert "<td>2026-12-01 – 2026-12-31</td>" in detail  # the pass ends 2027-01-01T00:00
    assert "<td>2026-12-01 08:30 – 2026-12-31 18:00</td>" in detail  # exact times stay exact
    assert "2027-01-01" not in detail


def test_charts_are_inline_svg(client: TestClient, site: Site) -> None:
    store_events(site, "east", {"direction": "out"}, {"decision": "deny", "reason": "expired"})
    logged_in(client, "vic")
    html = client.get("/charts").text
    assert html.count("<svg") == 4 and "<script" not in html.split("</main>")[0]
    assert "通行证已过期，请到居委会换证: 1" in html and "east" in html


def test_every_string_in_both_languages_and_every_template_key_exists() -> None:
    assert all(zh and en for zh, en in i18n.STRINGS.values())
    used = set()
    for path in TEMPLATES.glob("*.html"):
        used |= set(re.findall(r't\("([a-z_.]+)"\)', path.read_text(encoding="utf-8")))
    assert used and used <= i18n.STRINGS.keys(), used - i18n.STRINGS.keys()


def test_report_downloads_csv_and_xlsx(client: TestClient, site: Site) -> None:
    reports = pytest.importorskip("server.reports")
    store_events(site, "east", {"direction": "out"}, {"direction": "in"})
    logged_in(client, "vic")
    day = now_local(site).date().isoformat()
    r = client.get(f"/reports/daily.csv?day={day}")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/csv")
    assert f"{day}.csv" in r.headers["content-disposition"]
    from datetime import date

    rows = reports.daily_report(site, date.fromisoformat(day))
    assert r.content == reports.to_csv(rows)
    x = client.get(f"/reports/daily.xlsx?day={day}")
    assert x.status_code == 200 and x.content[:2] == b"PK"
    assert client.get("/reports/daily.csv?day=yesterday").status_code == 400


# --- the command line ----------------------------------------------------------------------


def menwei(*args: str, stdin: str = "") -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "menwei.cli", *args],
        input=stdin,
        capture_output=True,
        text=True,
        timeout=60,
        cwd=REPO,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )


def test_operator_add_and_list_from_the_command_line(site: Site) -> None:
    d = str(site.dir)
    r = menwei(
        "operator", "add", d, "张主任", "--role", "admin", "--password-stdin", stdin=PASSWORD
    )
    assert r.returncode == 0, r.stderr
    short = menwei(
        "operator", "add", d, "bob", "--role", "viewer", "--password-stdin", stdin="short"
    )
    assert short.returncode == 2 and "at least 8" in short.stderr
    dup = menwei(
        "operator", "add", d, "张主任", "--role", "viewer", "--password-stdin", stdin=PASSWORD
    )
    assert dup.returncode == 2 and "already exists" in dup.stderr
    listed = json.loads(menwei("operator", "list", d, "--json").stdout)
    assert [(o["name"], o["role"]) for o in listed] == [("张主任", "admin")]
    with site.store.read() as tx:
        digest = stored_accounts.password_hash(tx, "张主任")
    assert digest is not None and digest.startswith("$argon2id$") and PASSWORD not in digest
    added = [e for e in audit_log(site) if e["action"] == "operator_add"]
    assert [e["target"] for e in added] == ["张主任"]


def test_a_gate_not_heard_from_for_minutes_is_shown_silent_not_online(
    client: TestClient, site: Site
) -> None:
    collected.set_gate_status(site.store, "east", {"gate": "east", "state": "online"})
    collected.set_gate_status(site.store, "north", {"gate": "north", "state": "online"})
    stale = (datetime.now(UTC) - timedelta(minutes=30)).isoformat()
    with site.store.write() as tx:
        tx.execute(update(gates).where(gates.c.gate == "north").values(last_seen=stale))
    logged_in(client, "ada")
    page = client.get("/").text
    assert 'state-online" data-role="state">在线</span> <strong>east' in page
    assert 'state-silent" data-role="state">失联</span> <strong>north' in page


def test_household_page_with_an_unknown_done_flag_is_not_a_server_error(
    client: TestClient, site: Site
) -> None:
    site.issue_pass("6-2-301", "周杰伦", room="6-2-301")
    logged_in(client, "olga")
    r = client.get("/households/6-2-301?done=<b>x</b>")
    assert r.status_code == 200 and "<b>x</b>" not in r.text
    assert "已设为居家隔离" in client.get("/households/6-2-301?done=quarantine").text


def test_report_of_the_last_representable_day_is_400_not_500(client: TestClient) -> None:
    logged_in(client, "vic")
    for path in ("/reports", "/reports/daily.csv", "/reports/daily.xlsx"):
        assert client.get(f"{path}?day=9999-12-31").status_code == 400, path


def test_an_expired_session_comes_back_to_the_page_with_all_its_filters(
    client: TestClient,
) -> None:
    from urllib.parse import parse_qs, urlsplit

    r = client.get("/feed?gate=east&decision=deny", follow_redirects=False)
    assert r.status_code == 303
    query = parse_qs(urlsplit(r.headers["location"]).query)
    assert query["next"] == ["/feed?gate=east&decision=deny"]
    page = client.get(r.headers["location"])
    assert 'name="next" value="/feed?gate=east&amp;decision=deny"' in page.text


def test_hourly_chart_counts_a_passage_at_a_full_hour_in_that_hour(site: Site) -> None:
    from server.web import figures

    policy = site.config.policy
    day = figures.today(policy)
    span = figures.day_span(policy, day)
    events = [
        make_event(SITE, "east", seq, at=(span.start + timedelta(hours=h)).isoformat())
        for seq, h in enumerate(range(1, 24), start=1)
    ]
    collected.insert_events(site.store, "east", events)
    with site.store.read() as tx:
        bins = figures.hourly(tx, span)
    assert [b["out"] for b in bins] == [0] + [1] * 23


def test_household_page_says_which_passes_are_not_yet_valid_expired_or_revoked(
    client: TestClient, site: Site
) -> None:
    today = now_local(site).date()
    day = timedelta(days=1)
    issue = {
        "active": (today - day, today + day),
        "not_yet_valid": (today + 5 * day, today + 5 * day),  # one day, in five days
        "expired": (today - 9 * day, today - 2 * day),
        "revoked": (today - day, today + day),
    }
    ids = {}
    for state, (first, last) in issue.items():
        ids[state] = site.issue_pass(
            "6-4-101",
            "王五",
            valid_from=site.parse_time(first.isoformat()),
            valid_until=site.parse_time(last.isoformat(), end=True),
        ).pass_id
    site.revoke_pass(ids["revoked"], "lost")
    logged_in(client, "olga")

    def states(html: str) -> dict[int, str]:
        pattern = r'<tr><td>(\d+)</td>.*?data-role="pass-state"><span[^>]*>([^<]+)<'
        rows = re.findall(pattern, html, re.S)
        return {int(pass_id): text for pass_id, text in rows}

    zh = states(client.get("/households/6-4-101").text)
    assert zh == {
        ids["active"]: "有效",
        ids["not_yet_valid"]: "尚未生效",
        ids["expired"]: "已过期",
        ids["revoked"]: "已注销",
    }
    en = states(client.get("/households/6-4-101?lang=en").text)
    assert en[ids["not_yet_valid"]] == "not yet valid" and en[ids["active"]] == "valid"
    assert en[ids["expired"]] == "expired" and en[ids["revoked"]] == "revoked"


def test_pages_render_with_a_stored_gate_status_of_the_wrong_shape(
    client: TestClient, site: Site
) -> None:
    """Statuses stored before the collector checked shapes: the overview, the policy page and
    /metrics show what is readable and leave the rest out."""
    collected.set_gate_status(
        site.store,
        "east",
        {
            "gate": "east",
            "state": "online",
            "versions": "x",
            "clock": [1],
            "camera": "ok",
            "backlog": "7",
            "at": "9999-12-31T20:00:00+00:00",
            "data_as_of": "9999-12-31T20:00:00+00:00",
            "max_data_age_h": "never",
        },
    )
    collected.set_gate_status(
        site.store,
        "north",
        {
            "gate": "north",
            "state": "online",
            "backlog": 2**70,
            "clock": {"trusted": "yes"},
            "camera": {"state": ["ok"], "error": 5},
            "versions": {"config": "one"},
            "data_age_h": 1.5,
        },
    )
    collected.set_gate_status(site.store, "west", {"gate": "west", "state": "online", "backlog": 4})
    logged_in(client, "vic")
    page = client.get("/")
    assert page.status_code == 200
    east = page.text[page.text.index('data-gate="east"') :].split("</tr>")[0]
    assert "在线" in east and "— / —" in east and 'data-role="backlog" class="">—<' in east
    north = page.text[page.text.index('data-gate="north"') :].split("</tr>")[0]
    assert "1.5 小时" in north and "['ok']" not in north
    assert ">4<" in page.text[page.text.index('data-gate="west"') :]
    policy = client.get("/policy")
    assert policy.status_code == 200 and "north" in policy.text
    metrics = client.get("/metrics")
    assert metrics.status_code == 200
    assert 'menwei_server_gate_backlog{gate="west"} 4.0' in metrics.text
    assert 'menwei_server_gate_backlog{gate="east"}' not in metrics.text
    assert 'menwei_server_gates{state="online"} 3.0' in metrics.text
