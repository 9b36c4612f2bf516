"""The dashboard's policy page: published rules, the diff to server.toml, the try-out (the
real decision core, injected as the command line does), publishing (admins, CSRF, audit),
and each gate's config version. Starlette's TestClient against a real Site in tmp."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from typing import Any

import pytest
from starlette.testclient import TestClient

from menwei.policy_trial import run_trial
from protocol.documents import CONFIG_FILE
from server.site import Site
from server.web.accounts import AccountStore
from server.web.app import create_app
from tests import collected
from tests.e2e.helpers import make_event
from tests.server.test_policy_rollout import audit_rows, edit_policy
from tests.server.test_web import add_operators, csrf_of, logged_in
from tests.test_policy_cli import CANDIDATE, record_traffic


@pytest.fixture
def accounts(site: Site) -> AccountStore:
    return add_operators(site)


@pytest.fixture
def client(site: Site, accounts: AccountStore) -> Iterator[TestClient]:
    with TestClient(create_app(site.dir, trial=run_trial), base_url="http://testserver") as c:
        yield c


@pytest.fixture
def traffic(site: Site) -> dict[str, Any]:
    return record_traffic(site)


def text_of(html: str, element_id: str) -> str:
    m = re.search(rf'<(\w+)[^>]*id="{element_id}"[^>]*>(.*?)</\1>', html, re.S)
    assert m, f"no #{element_id} in the page"
    return re.sub(r"\s+", " ", re.sub(r"<[^>]+>", " ", m.group(2))).strip()


def gate_status(site: Site, gate: str, config: int, state: str = "online") -> None:
    collected.set_gate_status(
        site.store,
        gate,
        {"gate": gate, "site": site.site, "state": state, "versions": {"config": config}},
    )


def test_everyone_reads_the_published_rules_the_diff_and_the_rollout(
    client: TestClient, site: Site
) -> None:
    edit_policy(site.dir, **CANDIDATE)
    gate_status(site, "east", 1)
    gate_status(site, "west", 1, state="offline")
    logged_in(client, "vic")
    page = client.get("/policy")
    assert page.status_code == 200
    assert '<a href="/policy" class="on" aria-current="page">通行规则</a>' in page.text
    assert text_of(page.text, "policy-version") == "1"
    assert text_of(page.text, "rollout") == "2/2"
    assert "全部闸机已更新" in page.text
    diff = text_of(page.text, "policy-diff")
    assert "fever_threshold_c 37.3 37.6" in diff and '["06:00-20:00"] ["06:00-19:00"]' in diff
    assert "publish-form" not in page.text and "只有管理员可以发布" in page.text
    assert 'id="try-form"' in page.text  # a try-out changes nothing: viewers may run it
    en = client.get("/policy?lang=en").text
    assert "Published rules (what gates enforce)" in en and "Rollout complete" in en


def test_try_out_shows_what_would_change_on_recorded_traffic(
    client: TestClient, site: Site, traffic: dict[str, Any]
) -> None:
    edit_policy(site.dir, **CANDIDATE)
    csrf = logged_in(client, "vic")
    since = (traffic["a"].valid_from).date().isoformat()
    refused = client.post("/policy/try", data={"since": since})
    assert refused.status_code == 403
    r = client.post("/policy/try?lang=en", data={"csrf": csrf, "since": since})
    assert r.status_code == 200
    assert text_of(r.text, "trial-decisions").startswith("5")
    assert text_of(r.text, "trial-changed") == "2"
    changes = text_of(r.text, "trial-changes")
    assert "fever_recheck" in changes and "outside_window" in changes
    sample = text_of(r.text, "trial-sample")
    assert "Temperature high: please measure again Please pass" in sample
    assert "Please pass Outside the permitted outing hours" in sample
    assert "Replayed with today&#39;s register" in r.text
    bad = client.post("/policy/try", data={"csrf": csrf, "since": "last week"})
    assert bad.status_code == 400 and "YYYY-MM-DD" in bad.text
    assert site.published_policy().version == 1  # trying published nothing


def test_without_an_injected_trial_the_try_out_is_unavailable(
    site: Site, accounts: AccountStore
) -> None:
    with TestClient(create_app(site.dir), base_url="http://testserver") as c:
        csrf = logged_in(c, "ada")
        page = c.get("/policy")
        assert 'id="try-unavailable"' in page.text and 'id="try-form"' not in page.text
        r = c.post("/policy/try", data={"csrf": csrf, "since": "2026-01-01"})
        assert r.status_code == 503 and "menwei policy try" in r.text


def test_only_an_admin_publishes_with_the_csrf_token_and_it_is_audited(
    client: TestClient, site: Site
) -> None:
    edit_policy(site.dir, **CANDIDATE)
    csrf = logged_in(client, "olga")
    page = client.get("/policy")
    assert "publish-form" not in page.text
    digest = re.search(r'name="digest" value="([0-9a-f]+)"', page.text)
    assert digest is None
    r = client.post("/policy/publish", data={"csrf": csrf, "digest": "x"})
    assert r.status_code == 403
    client.post("/logout", data={"csrf": csrf})

    csrf = logged_in(client, "ada")
    page = client.get("/policy")
    digest = re.search(r'name="digest" value="([0-9a-f]+)"', page.text)
    assert digest and csrf_of(page.text) == csrf
    no_token = client.post("/policy/publish", data={"digest": digest.group(1)})
    assert no_token.status_code == 403
    assert site.published_policy().version == 1
    r = client.post(
        "/policy/publish", data={"csrf": csrf, "digest": digest.group(1)}, follow_redirects=False
    )
    assert r.status_code == 303 and r.headers["location"] == "/policy?done=published"
    assert site.published_policy().version == 2
    assert json.loads(site.bundle_path(CONFIG_FILE).read_bytes())["body"]["policy"][
        "outing_windows"
    ] == ["06:00-19:00"]
    [(who, target, detail)] = audit_rows(site, "policy_publish")
    assert (who, target) == ("ada", "config v2") and "outing_windows" in detail
    after = client.get("/policy?done=published")
    assert "新规则已发布" in after.text and 'id="policy-same"' in after.text
    assert text_of(after.text, "policy-version") == "2"
    audit = client.get("/audit").text
    assert "policy_publish" in audit and "config v2" in audit


def test_publishing_a_candidate_changed_since_the_page_or_unchanged(
    client: TestClient, site: Site
) -> None:
    edit_policy(site.dir, **CANDIDATE)
    csrf = logged_in(client, "ada")
    reviewed = re.search(r'name="digest" value="([0-9a-f]+)"', client.get("/policy").text)
    assert reviewed
    edit_policy(site.dir, fever_threshold_c=39.0)
    r = client.post("/policy/publish", data={"csrf": csrf, "digest": reviewed.group(1)})
    assert r.status_code == 409 and "请重新检查差异" in r.text
    assert site.published_policy().version == 1
    edit_policy(site.dir, fever_threshold_c=37.3, outing_windows=["06:00-20:00"])
    r = client.post("/policy/publish", data={"csrf": csrf, "digest": "0"}, follow_redirects=False)
    assert r.status_code == 409  # a stale digest is refused before "nothing to publish"


def test_a_broken_server_toml_is_shown_not_a_server_error(client: TestClient, site: Site) -> None:
    logged_in(client, "ada")
    edit_policy(site.dir, fever_treshold_c=37.5)
    page = client.get("/policy")
    assert page.status_code == 200
    assert "fever_treshold_c" in text_of(page.text, "policy-invalid")
    assert "publish-form" not in page.text


def test_rollout_counts_gates_on_the_published_version(client: TestClient, site: Site) -> None:
    edit_policy(site.dir, **CANDIDATE)
    site.publish_policy("ops")
    gate_status(site, "east", 2)
    gate_status(site, "west", 1)
    logged_in(client, "vic")
    page = client.get("/policy")
    assert text_of(page.text, "rollout") == "1/2"
    rows = text_of(page.text, "rollout-gates")
    assert "east 在线 2 已是最新" in rows and "west 在线 1 等待更新" in rows


def test_try_out_over_traffic_with_a_time_far_out_of_range_shows_it_as_stored(
    client: TestClient, site: Site, traffic: dict[str, Any]
) -> None:
    """An event of year 9999 stored before the collector refused such times: the try-out
    page shows its time as the gate sent it instead of failing for everyone."""
    far = "9999-12-31T20:00:00+00:00"
    a = traffic["a"]
    collected.insert_events(
        site.store,
        "east",
        [make_event(site.site, "east", 5, at=far, pass_id=a.pass_id, detail={"qr": a.qr})],
    )
    edit_policy(site.dir, **CANDIDATE)
    csrf = logged_in(client, "vic")
    since = (a.valid_from).date().isoformat()
    r = client.post("/policy/try", data={"csrf": csrf, "since": since})
    assert r.status_code == 200
    assert text_of(r.text, "trial-decisions").startswith("6")
    assert far in r.text
