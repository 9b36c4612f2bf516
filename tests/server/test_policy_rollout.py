"""The published policy is the signed config document's; server.toml's [policy] is a candidate
until `publish_policy` signs it. Real Site in tmp, real signatures, real audit rows."""

from __future__ import annotations

import itertools
import json
import re
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from protocol import topics
from protocol.broker import parse_broker
from protocol.documents import CONFIG_FILE, decode_document
from protocol.events import encode_batch
from server.collector import Collector
from server.config import CONFIG_NAME, ServerConfigError
from server.policy_rollout import (
    CandidateChanged,
    NothingToPublish,
    RolloutError,
    policy_diff,
    policy_digest,
)
from server.reports import day_span
from server.site import Site, SiteError
from server.storage import audit
from server.visitors import VisitorError, register_visitor
from tests import collected
from tests.conftest import SITE
from tests.e2e.helpers import make_event


def edit_policy(server_dir: Path, **values: object) -> None:
    """Change keys of server.toml's [policy] as an operator edits the file (a value of a new
    key is added at the end of the table)."""
    path = server_dir / CONFIG_NAME
    text = path.read_text(encoding="utf-8")
    for key, value in values.items():
        line = f"{key} = {json.dumps(value, ensure_ascii=False)}"
        text, n = re.subn(rf"(?m)^{key} = .*$", line, text)
        if n == 0:
            head = re.search(r"(?m)^\[policy\].*$", text)
            assert head, "server.toml has no [policy] table"
            text = f"{text[: head.end()]}\n{line}{text[head.end() :]}"
    path.write_text(text, encoding="utf-8")


def config_doc(site: Site) -> dict:
    return json.loads(site.bundle_path(CONFIG_FILE).read_bytes())


def audit_rows(site: Site, action: str) -> list[tuple[str, str, str]]:
    with site.store.read() as tx:
        found = audit.entries(tx, action=action)
    return [(e.actor, e.target or "", e.detail or "") for e in reversed(found)]


def test_the_published_policy_is_the_config_documents_not_server_toml(site: Site) -> None:
    published = site.published_policy()
    assert published.version == 1 and published.key_id == 1
    assert published.policy == site.config.policy
    assert datetime.now(UTC) - published.issued_at < timedelta(minutes=5)
    edit_policy(site.dir, fever_threshold_c=37.8)
    assert site.published_policy().policy.fever_threshold_c == 37.3
    assert site.candidate_policy().fever_threshold_c == 37.8
    assert [
        c.to_json() for c in policy_diff(site.published_policy().policy, site.candidate_policy())
    ] == [{"key": "fever_threshold_c", "published": 37.3, "candidate": 37.8}]


def test_key_rotation_and_retirement_re_sign_the_published_policy_not_edits(site: Site) -> None:
    edit_policy(site.dir, household_max_out=3, outing_windows=["07:00-19:00"])
    site.rotate_key()
    doc = config_doc(site)
    assert doc["version"] == 2 and [k["key_id"] for k in doc["chain"][-1]["body"]["keys"]] == [1, 2]
    assert doc["body"]["policy"]["household_max_out"] == 1
    assert doc["body"]["policy"]["outing_windows"] == ["06:00-20:00"]
    site.retire_key(1)
    doc = config_doc(site)
    assert doc["version"] == 3 and doc["key_id"] == 2
    assert doc["body"]["policy"]["household_max_out"] == 1
    assert site.published_policy().version == 3
    assert len(policy_diff(site.published_policy().policy, site.candidate_policy())) == 2


def test_publish_signs_the_candidate_as_the_next_version_and_audits_the_diff(site: Site) -> None:
    edit_policy(site.dir, fever_threshold_c=37.5, household_max_exits_per_day=3)
    done = site.publish_policy("张主任")
    assert (done.version, done.previous_version) == (2, 1)
    assert [c.key for c in done.changes] == ["fever_threshold_c", "household_max_exits_per_day"]
    raw = site.bundle_path(CONFIG_FILE).read_bytes()
    keys = {k.key_id: k for k in site.trust_keys()}
    doc = decode_document(raw, kind="config", site=SITE, trust_keys=keys)
    assert doc.version == 2 and doc.key_id == 1  # the signing key, under trust root 1
    assert doc.body["policy"]["fever_threshold_c"] == 37.5
    assert doc.root == 1 and [k["key_id"] for k in doc.chain[-1].body["keys"]] == [1]
    assert site.published_policy().policy.household_max_exits_per_day == 3
    [(who, target, detail)] = audit_rows(site, "policy_publish")
    assert (who, target) == ("张主任", "config v2")
    assert detail == (
        "replaces config version 1; fever_threshold_c: 37.3 → 37.5;"
        " household_max_exits_per_day: 2 → 3"
    )


def test_publishing_nothing_new_is_refused_and_signs_nothing(site: Site) -> None:
    before = site.bundle_path(CONFIG_FILE).read_bytes()
    with pytest.raises(NothingToPublish, match=r"nothing to publish.*config version 1") as exc:
        site.publish_policy("ops")
    assert exc.value.version == 1
    assert site.bundle_path(CONFIG_FILE).read_bytes() == before
    assert audit_rows(site, "policy_publish") == []


def test_an_unknown_or_bad_policy_key_publishes_nothing(site: Site) -> None:
    before = site.bundle_path(CONFIG_FILE).read_bytes()
    edit_policy(site.dir, fever_treshold_c=37.5)
    with pytest.raises(ServerConfigError, match=r"unknown key\(s\) fever_treshold_c"):
        site.publish_policy("ops")
    path = site.dir / CONFIG_NAME
    path.write_text(
        path.read_text(encoding="utf-8").replace("fever_treshold_c = 37.5\n", ""), "utf-8"
    )
    edit_policy(site.dir, household_max_out=-1)
    with pytest.raises(ServerConfigError, match=r"household_max_out must be 0\.\.100, got -1"):
        site.publish_policy("ops")
    assert site.bundle_path(CONFIG_FILE).read_bytes() == before
    assert audit_rows(site, "policy_publish") == []


def test_a_candidate_edited_after_review_is_not_published(site: Site) -> None:
    edit_policy(site.dir, fever_threshold_c=37.5)
    reviewed = policy_digest(site.candidate_policy())
    edit_policy(site.dir, fever_threshold_c=39.0)
    with pytest.raises(CandidateChanged, match="review"):
        site.publish_policy("ada", expect_digest=reviewed)
    assert site.published_policy().version == 1
    assert (
        site.publish_policy("ada", expect_digest=policy_digest(site.candidate_policy())).version
        == 2
    )


def test_a_forged_bundle_config_is_not_taken_for_the_published_policy(site: Site) -> None:
    doc = config_doc(site)
    doc["body"]["policy"]["fever_threshold_c"] = 41.0  # edited without the key
    site.bundle_path(CONFIG_FILE).write_text(json.dumps(doc), encoding="utf-8")
    with pytest.raises(RolloutError, match="signature does not verify"):
        site.published_policy()


def test_server_side_rules_follow_the_published_policy(site: Site) -> None:
    """The pass cap at issue, the visitor fever threshold and report days: as gates have them."""
    edit_policy(site.dir, passes_per_household_max=1, fever_threshold_c=38.5, day_starts_at="00:00")
    site.issue_pass("1-1-101", "甲", room="1-1-101")
    site.issue_pass("1-1-101", "乙", room="1-1-101")  # the published cap (4) applies, not 1
    site.registry.ensure_household("2-1-201")
    with pytest.raises(VisitorError, match=r"at or above 37\.3"):
        register_visitor(site, "访客", "13800138000", "探亲", "2-1-201", 37.8, 2, by="t")
    day = datetime(2026, 3, 1).date()
    assert day_span(site, day)[0].hour == 4
    site.publish_policy("ops")
    with pytest.raises(SiteError, match=r"cap 1"):
        site.issue_pass("1-1-101", "丙", room="1-1-101")
    visitor, _ = register_visitor(site, "访客", "13800138000", "探亲", "2-1-201", 37.8, 2, by="t")
    assert visitor.id
    assert day_span(site, day)[0].hour == 0


def test_the_collector_checks_conflicts_against_the_published_policy(site: Site) -> None:
    """Two members out at once through two gates: a conflict under the published one-out rule,
    although server.toml already says two (not published, so no gate enforces it)."""
    edit_policy(site.dir, household_max_out=2)
    at = datetime(2026, 3, 2, 9, 0, tzinfo=site.config.tz)
    collector = Collector(site, parse_broker("mqtt://127.0.0.1:9"))  # not started: handle() only
    try:
        for gate, pass_id, minute in (("east", 1, 0), ("west", 2, 5)):
            event = make_event(
                SITE, gate, 1, pass_id=pass_id, at=(at + timedelta(minutes=minute)).isoformat()
            )
            collector.handle(topics.events(SITE, gate), encode_batch(gate, [event]))
        assert [c["kind"] for c in collected.conflicts(site.store)] == ["household_over_quota"]
        site.publish_policy("ops")
        for gate, pass_id, minute in (("east", 3, 10), ("west", 4, 15)):
            later = at + timedelta(days=1, minutes=minute)
            event = make_event(SITE, gate, 2, pass_id=pass_id, at=later.isoformat())
            collector.handle(topics.events(SITE, gate), encode_batch(gate, [event]))
        assert len(collected.conflicts(site.store)) == 1  # two out at once is now the rule
    finally:
        collector.close()


def test_statements_come_at_least_twice_per_published_data_age_limit(tmp_path: Path):
    """server.toml is checked against its own candidate; gates enforce the published policy.
    Published 0.5 h, then server.toml back to 24 h with an hour between statements: the
    collector still re-affirms every 15 minutes, and again at once after its clock steps back."""
    from datetime import UTC, datetime, timedelta

    from protocol.broker import parse_broker
    from server.collector import Collector

    Site.init(tmp_path / "s", SITE).close()
    edit_policy(tmp_path / "s", max_data_age_h=0.5)
    with Site(tmp_path / "s") as site:
        site.publish_policy("test")
    edit_policy(tmp_path / "s", max_data_age_h=24.0)
    text = (tmp_path / "s" / CONFIG_NAME).read_text(encoding="utf-8")
    (tmp_path / "s" / CONFIG_NAME).write_text(
        text.replace("freshness_interval_s = 300", "freshness_interval_s = 3600"), "utf-8"
    )
    clock = [datetime(2026, 12, 1, 8, 0, tzinfo=UTC)]
    with Site(tmp_path / "s", clock=lambda: clock[0]) as site:
        assert site.config.server.freshness_interval_s == 3600
        collector = Collector(site, parse_broker("mqtt://127.0.0.1:1"))
        assert collector.freshness_interval() == timedelta(minutes=15)
        serials = []
        for minutes in (0, 10, 16, 20, 31, -60):  # the last: the clock stepped back an hour
            clock[0] = datetime(2026, 12, 1, 8, 0, tzinfo=UTC) + timedelta(minutes=minutes)
            collector._reaffirm()
            serials.append(json.loads(site.bundle_path("freshness.json").read_bytes())["version"])
    issued = [b > a for a, b in itertools.pairwise(serials)]
    assert issued == [False, True, False, True, True], serials
