"""The visitor register: validation, fever refusal, the pass at a gate, retention, the web page.

Nothing is mocked: a real Site in tmp, the real command line in a subprocess, the real
decision core through `menwei gate scan|replay`, the dashboard through TestClient.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import func, select, update
from starlette.testclient import TestClient

from edge.provision import provision
from server.register import RegisterRow
from server.site import Site
from server.storage.schema import audit, passes, visitors
from server.visitors import VisitorError, VisitorStore, purge_visitors, register_visitor
from server.web.accounts import AccountStore
from server.web.app import create_app
from tests.conftest import run_menwei
from tests.server.test_web import PASSWORD, logged_in

HOST = "3-2-501"


@pytest.fixture
def host(site: Site) -> str:
    site.registry.apply_import(
        [RegisterRow(2, HOST, "3", "2", "501", "A", "张三", "13812345678", "resident")]
    )
    return HOST


def pass_count(site: Site) -> int:
    with site.store.read() as tx:
        return int(tx.scalar(select(func.count()).select_from(passes)) or 0)


def audited(site: Site, action: str, *columns: Any) -> tuple[Any, ...]:
    """The columns of the one audit entry of `action`."""
    with site.store.read() as tx:
        (row,) = tx.execute(select(*columns).where(audit.c.action == action)).all()
    return tuple(row)


def visit(site: Site, **kw: Any):
    args: dict[str, Any] = {
        "name": "王小五",
        "phone": "139 1234 5678",
        "reason": "送药",
        "host_household": HOST,
        "temperature_c": 36.5,
        "hours": 4,
        "by": "guard-li",
    }
    args.update(kw)
    return register_visitor(site, **args)


# --- registering --------------------------------------------------------------------------


def test_a_visitor_gets_a_short_visitor_pass_for_the_host_household(site: Site, host: str):
    before = datetime.now(site.config.tz).replace(microsecond=0)
    visitor, issued = visit(site, hours=2)

    assert (visitor.name, visitor.phone, visitor.host_household) == ("王小五", "13912345678", HOST)
    assert (visitor.pass_id, visitor.registered_by, visitor.purged_at) == (
        issued.pass_id,
        "guard-li",
        None,
    )
    assert (issued.role, issued.household) == ("visitor", HOST)
    assert before <= issued.valid_from and issued.valid_until - issued.valid_from == timedelta(
        hours=2
    )
    entry = site.register().passes[issued.pass_id]
    assert (entry.display_name, entry.room, entry.role) == ("王*五", "3-2-501", "visitor")
    # Not counted against the household's pass cap.
    assert site.active_passes(HOST, before) == 0
    (target, detail) = audited(site, "visitor_register", audit.c.target, audit.c.detail)
    assert target == str(visitor.id) and f"pass {issued.pass_id}" in detail
    assert "王" not in detail and "13912345678" not in detail  # the audit log outlives retention


@pytest.mark.parametrize(
    ("change", "key"),
    [
        ({"name": "  "}, "visitor.err.name"),
        ({"name": "x" * 65}, "visitor.err.name"),
        ({"phone": "12345"}, "visitor.err.phone"),
        ({"phone": "12912345678"}, "visitor.err.phone"),
        ({"reason": ""}, "visitor.err.reason"),
        ({"host_household": "9-9-999"}, "visitor.err.host_unknown"),
        ({"host_household": "bad household!"}, "visitor.err.host_unknown"),
        ({"temperature_c": 33.9}, "visitor.err.temperature"),
        ({"temperature_c": 43.1}, "visitor.err.temperature"),
        ({"hours": 0}, "visitor.err.hours"),
        ({"hours": 25}, "visitor.err.hours"),
    ],
)
def test_bad_registrations_are_refused_with_a_reason_and_issue_nothing(
    site: Site, host: str, change: dict[str, Any], key: str
):
    with pytest.raises(VisitorError) as refused:
        visit(site, **change)
    assert refused.value.key == key
    assert pass_count(site) == 0
    assert VisitorStore(site.store).since(datetime.now(UTC) - timedelta(days=1)) == []


def test_landlines_and_plus86_mobiles_are_accepted(site: Site, host: str):
    assert visit(site, phone="010-12345678")[0].phone == "010-12345678"
    assert visit(site, phone="+86 138-1234-5678")[0].phone == "13812345678"


def test_a_visitor_with_fever_gets_no_pass_but_the_clinic_and_an_alert(site: Site, host: str):
    threshold = site.config.policy.fever_threshold_c
    with pytest.raises(VisitorError) as refused:
        visit(site, temperature_c=threshold)
    assert refused.value.key == "visitor.err.fever"
    assert "fever clinic" in str(refused.value) and "发热门诊" in str(refused.value)
    assert pass_count(site) == 0
    (alert,) = site.alerts.list()
    assert (alert.kind, alert.household, alert.priority) == ("fever", HOST, "high")
    assert "王" not in alert.detail
    assert visit(site, temperature_c=threshold - 0.1)[1].role == "visitor"


def test_no_visitors_for_a_household_under_quarantine(site: Site, host: str):
    site.set_quarantine(HOST, None, by="olga")
    with pytest.raises(VisitorError) as refused:
        visit(site)
    assert refused.value.key == "visitor.err.host_quarantined"
    site.set_quarantine(HOST, None, on=False, by="olga")
    assert visit(site)[0].host_household == HOST


# --- at the gate --------------------------------------------------------------------------


def test_the_visitor_pass_lets_in_once_and_out_once(tmp_path: Path, site: Site, host: str):
    png = tmp_path / "visitor.png"
    out = run_menwei(
        "visitor",
        "register",
        str(site.dir),
        "--name",
        "王小五",
        "--phone",
        "13912345678",
        "--reason",
        "送药",
        "--host",
        HOST,
        "--temperature",
        "36.4",
        "--hours",
        "2",
        "--png",
        str(png),
        "--json",
    )
    issued = json.loads(out.stdout)
    assert issued["host"] == HOST and issued["visitor_id"] == 1
    gate = tmp_path / "gate"
    provision(gate, site.dir, "east", "in", simulated=True)
    config = str(gate / "gate.toml")

    scan = run_menwei(
        "gate", "scan", "--config", config, "--temperature", "36.5", "--json", str(png)
    )
    (first,) = json.loads(scan.stdout)
    assert (first["decision"], first["reason"], first["pass_id"]) == (
        "allow",
        "ok",
        issued["pass_id"],
    )

    t = datetime.now(UTC) + timedelta(minutes=1)
    qr = issued["qr"]
    script = tmp_path / "visit.jsonl"
    lines = [
        {"at": t, "qr": issued["qr"], "direction": "in", "temperature": 36.5},
        {
            "at": t + timedelta(minutes=1),
            "qr": issued["qr"],
            "direction": "in",
            "temperature": 36.5,
        },
        {"at": t + timedelta(minutes=30), "qr": issued["qr"], "direction": "out"},
        {"at": t + timedelta(minutes=31), "qr": issued["qr"], "direction": "out"},
        {"at": t + timedelta(minutes=40), "qr": qr, "direction": "in", "temperature": 36.5},
        {"at": t + timedelta(hours=3), "qr": issued["qr"], "direction": "in", "temperature": 36.5},
    ]
    script.write_text(
        "\n".join(json.dumps({**x, "at": x["at"].isoformat()}) for x in lines) + "\n",
        encoding="utf-8",
    )
    replay = run_menwei("gate", "replay", "--config", config, str(script), "--json")
    reasons = [json.loads(x)["reason"] for x in replay.stdout.splitlines()]
    # One entry and one exit; a second exit is already refused by anti-passback (hard).
    assert reasons == ["ok", "visitor_used", "ok", "anti_passback", "visitor_used", "expired"]


def test_the_command_line_refuses_a_fever_with_the_clinic(site: Site, host: str):
    proc = run_menwei(
        "visitor",
        "register",
        str(site.dir),
        *("--name", "王小五", "--phone", "13912345678", "--reason", "送药"),
        *("--host", HOST, "--temperature", "38.2"),
        check=False,
    )
    assert proc.returncode == 2
    assert "fever clinic" in proc.stderr and "发热门诊" in proc.stderr


# --- retention ----------------------------------------------------------------------------


def test_purge_erases_name_and_phone_only_after_expiry_plus_n_days(site: Site, host: str):
    visitor, issued = visit(site, hours=1)
    expired = issued.valid_until
    register_before = site.summary()["register"]

    assert purge_visitors(site, 30, now=expired + timedelta(days=30, minutes=-1)) == 0
    assert VisitorStore(site.store).get(visitor.id) == visitor
    assert purge_visitors(site, 30, by="ada", now=expired + timedelta(days=30, minutes=1)) == 1

    kept = VisitorStore(site.store).get(visitor.id)
    assert kept is not None
    assert (kept.name, kept.phone, kept.purged_at is not None) == ("", "", True)
    assert (kept.reason, kept.host_household, kept.temperature_c, kept.pass_id) == (
        "送药",
        HOST,
        36.5,
        issued.pass_id,
    )
    with site.store.read() as tx:
        name = tx.scalar(select(passes.c.name).where(passes.c.pass_id == issued.pass_id))
    assert name == "访客"
    assert site.summary()["register"] > register_before  # gates lose the masked name too
    assert "王" not in site.bundle_path("register.json").read_text(encoding="utf-8")
    assert purge_visitors(site, 30, now=expired + timedelta(days=60)) == 0  # once


def test_purge_from_the_command_line(site: Site, host: str):
    visit(site)
    out = run_menwei("visitor", "purge", str(site.dir), "--older-than-days", "0", "--json")
    assert json.loads(out.stdout) == {"purged": 0, "older_than_days": 0}  # still valid


# --- the dashboard ------------------------------------------------------------------------


@pytest.fixture
def client(site: Site, host: str) -> Iterator[TestClient]:
    store = AccountStore(site.store)
    for name, role in (("olga", "operator"), ("vic", "viewer")):
        store.add(name, role, PASSWORD, actor="test")
    with TestClient(create_app(site.dir), base_url="http://testserver") as c:
        yield c


FORM = {
    "name": "王小五",
    "phone": "13912345678",
    "reason": "送药",
    "host": HOST,
    "temperature": "36.6",
    "hours": "3",
}


def test_operator_registers_and_sees_the_pass_large_with_a_print_button(
    client: TestClient, site: Site
):
    token = logged_in(client, "olga")
    page = client.get("/visitors")
    assert page.status_code == 200 and 'action="/visitors"' in page.text

    r = client.post("/visitors", data={**FORM, "csrf": token}, follow_redirects=False)

    assert r.status_code == 303
    shown = client.get(r.headers["location"])
    assert shown.status_code == 200
    assert '<svg viewBox="0 0' in shown.text and 'class="qr"' in shown.text
    assert '<script src="/static/visitors.js"></script>' in shown.text
    assert "<script>" not in shown.text  # the CSP allows no inline script
    assert "王*五" in shown.text and "王小五" not in shown.text
    assert "window.print" in client.get("/static/visitors.js").text
    assert "@media print" in client.get("/static/visitors.css").text
    listed = client.get("/visitors").text
    assert "王小五" in listed and "13912345678" in listed and "olga" in listed
    (actor,) = audited(site, "visitor_register", audit.c.actor)
    assert actor == "olga"


def test_the_form_needs_its_csrf_token(client: TestClient, site: Site):
    logged_in(client, "olga")
    assert client.post("/visitors", data=FORM).status_code == 403
    assert client.post("/visitors", data={**FORM, "csrf": "forged"}).status_code == 403
    assert pass_count(site) == 0


def test_a_fever_on_the_form_sends_to_the_fever_clinic(client: TestClient, site: Site):
    token = logged_in(client, "olga")
    r = client.post("/visitors", data={**FORM, "temperature": "38.0", "csrf": token})
    assert r.status_code == 400
    assert "体温异常，请前往发热门诊" in r.text and 'value="王小五"' in r.text
    r = client.post("/visitors?lang=en", data={**FORM, "phone": "123", "csrf": token})
    assert r.status_code == 400 and "Bad phone" in r.text
    assert pass_count(site) == 0


def test_the_pass_page_shows_when_the_visitor_pass_ends(client: TestClient, site: Site):
    visitor, issued = visit(site, hours=3)
    logged_in(client, "olga")
    tz = site.config.tz
    end = issued.valid_until.astimezone(tz)
    # A pass ending during a day shows that time; one ending as a day ends shows the day.
    shown = (
        (end - timedelta(seconds=1)).date().isoformat()
        if (end.hour, end.minute, end.second) == (0, 0, 0)
        else f"{end:%Y-%m-%d %H:%M}"
    )
    assert (
        f"{issued.valid_from:%Y-%m-%d %H:%M} – {shown}"
        in client.get(f"/visitors/{visitor.id}").text
    )

    # Ending at the start of a local day (the day after tomorrow): the last valid day is shown.
    tomorrow = datetime.now(tz).date() + timedelta(days=1)
    midnight = datetime.combine(tomorrow + timedelta(days=1), datetime.min.time(), tz)
    with site.store.write() as tx:
        tx.execute(
            update(passes)
            .where(passes.c.pass_id == issued.pass_id)
            .values(valid_until=int(midnight.timestamp()))
        )
    page = client.get(f"/visitors/{visitor.id}").text
    assert f" – {tomorrow.isoformat()}</p>" in page
    assert midnight.date().isoformat() not in page


def test_viewers_see_masked_visitors_and_may_not_register_or_see_a_pass(
    client: TestClient, site: Site
):
    visitor, _ = visit(site)
    token = logged_in(client, "vic")
    page = client.get("/visitors")
    assert page.status_code == 200
    assert "王*五" in page.text and "139****5678" in page.text
    assert "王小五" not in page.text and 'action="/visitors"' not in page.text
    assert client.post("/visitors", data={**FORM, "csrf": token}).status_code == 403
    assert client.get(f"/visitors/{visitor.id}").status_code == 403
    assert pass_count(site) == 1


def test_the_collector_erases_expired_visitors_by_the_configured_retention(site: Site, host: str):
    from protocol.broker import parse_broker
    from server.collector import Collector

    old, _ = visit(site)
    fresh, _ = visit(site, name="李小六")
    long_ago = int((datetime.now(UTC) - timedelta(days=31)).timestamp())
    with site.store.write() as tx:
        tx.execute(update(visitors).where(visitors.c.id == old.id).values(valid_until=long_ago))
    collector = Collector(site, parse_broker("mqtt://127.0.0.1:1"))  # never started: no broker
    assert site.config.privacy.visitor_retention_days == 30
    assert collector.purge_personal_data() == 1
    store = VisitorStore(site.store)
    assert store.get(old.id).name == "" and store.get(fresh.id).name == "李小六"
