"""`menwei policy show|diff|try|publish` on a real server directory with recorded traffic.

The traffic is stored the way the collector stores it (events with the scanned text in
`detail.qr`); `try` replays it through the gates' real decision core. The commands run
in-process through `menwei.cli.main` (the same parser and exit codes as the shell), the
gate ones (`gate init`, `gate replay`) as subprocesses, as an installer runs them.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from menwei.cli import main
from protocol.documents import CONFIG_FILE
from server.policy_rollout import NOTHING_TO_PUBLISH_EXIT
from server.site import Site
from tests import collected
from tests.conftest import SITE, run_menwei
from tests.e2e.helpers import make_event
from tests.server.test_policy_rollout import audit_rows, edit_policy

CANDIDATE = {"fever_threshold_c": 37.6, "outing_windows": ["06:00-19:00"]}


@dataclass
class Out:
    code: int
    out: str
    err: str

    def json(self) -> Any:
        return json.loads(self.out)


@pytest.fixture
def menwei(capsys: pytest.CaptureFixture[str]):  # type: ignore[no-untyped-def]
    def run(*args: str) -> Out:
        capsys.readouterr()
        code = main(list(args))
        got = capsys.readouterr()
        return Out(code, got.out, got.err)

    return run


@pytest.fixture
def traffic(site: Site) -> dict[str, Any]:
    return record_traffic(site)


def record_traffic(site: Site) -> dict[str, Any]:
    """Two days ago at two gates: A out 08:00, in 10:00, out again 19:30; B in at 09:00 with
    37.4 °C (asked to re-measure); C out the next morning, revoked since; an exit-button
    opening (nothing scanned). Recorded decisions are what the published policy gives."""
    start = datetime.now(site.config.tz) - timedelta(days=10)
    a, b, c = (
        site.issue_pass(h, n, valid_from=start, room=h)
        for h, n in (("1-1-101", "甲"), ("2-1-201", "乙"), ("3-1-301", "丙"))
    )
    day = (datetime.now(site.config.tz) - timedelta(days=2)).replace(second=0, microsecond=0)

    def at(hour: int, minute: int = 0, days: int = 0) -> str:
        return (day.replace(hour=hour, minute=minute) + timedelta(days=days)).isoformat()

    scans = {
        "east": [
            (a, "out", at(8), None, "allow", "ok"),
            (a, "in", at(10), 36.5, "allow", "ok"),
            (None, "out", at(12), None, "allow", "exit_request"),
            (a, "out", at(19, 30), None, "allow", "ok"),
        ],
        "west": [
            (b, "in", at(9), 37.4, "deny", "fever_recheck"),
            (c, "out", at(8, days=1), None, "allow", "ok"),
        ],
    }
    for gate, rows in scans.items():
        events = [
            make_event(
                SITE,
                gate,
                seq,
                at=when,
                direction=direction,
                temperature_c=temp,
                decision=decision,
                reason=reason,
                pass_id=None if p is None else p.pass_id,
                household=None if p is None else p.household,
                detail={"qr": None if p is None else p.qr},
            )
            for seq, (p, direction, when, temp, decision, reason) in enumerate(rows, 1)
        ]
        collected.insert_events(site.store, gate, events)
    site.revoke_pass(c.pass_id, "moved out")
    return {"a": a, "b": b, "c": c, "at": at}


def test_show_the_published_policy_and_whether_server_toml_differs(site: Site, menwei) -> None:
    d = str(site.dir)
    shown = menwei("policy", "show", d, "--json")
    assert shown.code == 0
    got = shown.json()
    assert (got["version"], got["key_id"], got["differs"], got["differences"]) == (1, 1, False, 0)
    assert got["policy"]["fever_threshold_c"] == 37.3 and len(got["policy"]) == 14
    assert datetime.fromisoformat(got["issued_at"]).tzinfo is not None
    edit_policy(site.dir, **CANDIDATE)
    got = menwei("policy", "show", d, "--json").json()
    assert (got["version"], got["differs"], got["differences"]) == (1, True, 2)
    assert got["policy"]["outing_windows"] == ["06:00-20:00"]  # still the published one
    human = menwei("policy", "show", d).out
    assert "published policy: config version 1, issued " in human and "(Asia/Shanghai)" in human
    assert 'outing_windows              = ["06:00-20:00"]' in human
    assert "server.toml [policy] differs in 2 key(s): not published yet" in human


def test_diff_key_by_key(site: Site, menwei) -> None:
    d = str(site.dir)
    assert menwei("policy", "diff", d, "--json").json() == []
    assert "nothing to publish" in menwei("policy", "diff", d).out
    edit_policy(site.dir, **CANDIDATE)
    assert menwei("policy", "diff", d, "--json").json() == [
        {"key": "fever_threshold_c", "published": 37.3, "candidate": 37.6},
        {"key": "outing_windows", "published": ["06:00-20:00"], "candidate": ["06:00-19:00"]},
    ]
    assert menwei("policy", "diff", d).out.splitlines() == [
        "published (config version 1) → server.toml [policy]:",
        "  fever_threshold_c: 37.3 → 37.6",
        '  outing_windows: ["06:00-20:00"] → ["06:00-19:00"]',
    ]


def test_try_replays_recorded_traffic_under_both_policies(
    site: Site, traffic: dict[str, Any], menwei
) -> None:
    edit_policy(site.dir, **CANDIDATE)
    r = menwei("policy", "try", str(site.dir), "--json")
    assert r.code == 0, r.err
    got = r.json()
    assert got["candidate"] == "server.toml [policy]" and got["published_version"] == 1
    assert (got["decisions"], got["skipped"], got["truncated"]) == (5, 1, False)
    assert got["gates"] == ["east", "west"]
    assert got["changed"] == 2
    assert got["changes"] == [
        {"from": "fever_recheck", "to": "ok", "count": 1},
        {"from": "ok", "to": "outside_window", "count": 1},
    ]
    assert got["by_reason"] == {
        "fever_recheck": {"published": 1, "candidate": 0},
        "ok": {"published": 3, "candidate": 3},
        "outside_window": {"published": 0, "candidate": 1},
        "revoked": {"published": 1, "candidate": 1},
    }
    a, b = traffic["a"], traffic["b"]
    assert got["sample"] == [
        {
            "gate": "west",
            "at": traffic["at"](9),
            "pass_id": b.pass_id,
            "direction": "in",
            "published": {"decision": "deny", "reason": "fever_recheck"},
            "candidate": {"decision": "allow", "reason": "ok"},
        },
        {
            "gate": "east",
            "at": traffic["at"](19, 30),
            "pass_id": a.pass_id,
            "direction": "out",
            "published": {"decision": "allow", "reason": "ok"},
            "candidate": {"decision": "deny", "reason": "outside_window"},
        },
    ]
    # C was let out, then revoked: today's register refuses it under both policies.
    assert got["not_reproduced"] == 1
    assert any("revoked" in n for n in got["notes"])

    human = menwei("policy", "try", str(site.dir)).out
    assert "replayed 5 decisions of 2 gate(s) (east, west)" in human
    assert "decisions that would change: 2" in human
    assert "  ok → outside_window: 1" in human and "  fever_recheck → ok: 1" in human
    assert f"east pass {a.pass_id} out: allow ok → deny outside_window" in human
    assert "not replayed: 1 decisions without a scanned text" in human
    assert "note: replayed with today's register" in human


def test_try_a_policy_file_since_and_limits(
    site: Site, traffic: dict[str, Any], menwei, tmp_path: Path
) -> None:
    d = str(site.dir)
    table = tmp_path / "table.toml"
    table.write_text("[policy]\nfever_threshold_c = 37.6\n", encoding="utf-8")
    got = menwei("policy", "try", d, "--policy", str(table), "--json").json()
    assert got["candidate"] == str(table)
    assert got["changes"] == [{"from": "fever_recheck", "to": "ok", "count": 1}]
    bare = tmp_path / "bare.toml"
    bare.write_text('outing_windows = ["06:00-19:00"]\n', encoding="utf-8")
    got = menwei("policy", "try", d, "--policy", str(bare), "--json").json()
    assert got["changes"] == [{"from": "ok", "to": "outside_window", "count": 1}]
    table.write_text('[policy]\noutings_windows = ["06:00-19:00"]\n', encoding="utf-8")
    bad = menwei("policy", "try", d, "--policy", str(table), "--json")
    assert bad.code == 2 and "unknown key(s) outings_windows" in bad.err and bad.out == ""
    missing = menwei("policy", "try", d, "--policy", str(tmp_path / "nope.toml"))
    assert missing.code == 2 and "nope.toml: cannot read" in missing.err
    since = menwei("policy", "try", d, "--since", "yesterday")
    assert since.code == 2 and "--since: 'yesterday' is not a date" in since.err
    today = datetime.now(site.config.tz).date().isoformat()
    got = menwei("policy", "try", d, "--since", today, "--json").json()
    assert (got["decisions"], got["changed"]) == (0, 0)
    assert (
        "no recorded decisions to replay since" in menwei("policy", "try", d, "--since", today).out
    )
    latest = menwei("policy", "try", d, "--policy", str(bare), "--max-events", "2", "--json").json()
    assert latest["truncated"] and latest["decisions"] == 2  # C's exit, A's 19:30 exit
    assert latest["first_at"] == traffic["at"](19, 30)
    with pytest.raises(SystemExit):
        menwei("policy", "try", d, "--max-events", "0")


def test_publish_signs_writes_the_bundle_and_audits(site: Site, menwei) -> None:
    d = str(site.dir)
    nothing = menwei("policy", "publish", d, "--json")
    assert nothing.code == NOTHING_TO_PUBLISH_EXIT == 3
    assert nothing.json() == {"published": False, "version": 1, "changes": []}
    assert "nothing to publish" in nothing.err
    edit_policy(site.dir, **CANDIDATE)
    done = menwei("policy", "publish", d, "--json")
    assert done.code == 0, done.err
    got = done.json()
    assert (got["published"], got["version"], got["previous_version"]) == (True, 2, 1)
    assert [c["key"] for c in got["changes"]] == ["fever_threshold_c", "outing_windows"]
    bundle = json.loads(site.bundle_path(CONFIG_FILE).read_bytes())
    assert bundle["version"] == 2 and bundle["body"]["policy"]["fever_threshold_c"] == 37.6
    [(who, target, detail)] = audit_rows(site, "policy_publish")
    assert target == "config v2" and who and "fever_threshold_c: 37.3 → 37.6" in detail
    edit_policy(site.dir, household_max_out=2)
    human = menwei("policy", "publish", d).out
    assert "published: config version 3 (replaces 2)" in human
    assert "  household_max_out: 1 → 2" in human and "within seconds" in human


def test_an_unknown_policy_key_is_a_clear_error_and_publishes_nothing(site: Site, menwei) -> None:
    before = site.bundle_path(CONFIG_FILE).read_bytes()
    edit_policy(site.dir, fever_treshold_c=37.5)
    for action in ("publish", "show", "diff", "try"):
        r = menwei("policy", action, str(site.dir), "--json")
        assert r.code == 2, action
        assert "unknown key(s) fever_treshold_c" in r.err and "Traceback" not in r.err
    assert site.bundle_path(CONFIG_FILE).read_bytes() == before
    assert audit_rows(site, "policy_publish") == []


def test_gate_init_after_publish_gets_the_new_version_and_replay_decides_by_it(
    site: Site, traffic: dict[str, Any], tmp_path: Path
) -> None:
    gate = tmp_path / "gate"
    init = ("gate", "init", str(gate), "--server", str(site.dir), "--gate", "east")
    assert json.loads(run_menwei(*init, "--simulated", "--json").stdout)["versions"]["config"] == 1
    script = tmp_path / "evening.jsonl"
    script.write_text(
        json.dumps({"at": traffic["at"](19, 30), "qr": traffic["a"].qr, "direction": "out"}) + "\n",
        encoding="utf-8",
    )
    replay = ("gate", "replay", "--config", str(gate / "gate.toml"), "--json", str(script))
    assert json.loads(run_menwei(*replay).stdout)["reason"] == "ok"

    edit_policy(site.dir, **CANDIDATE)
    run_menwei("policy", "publish", str(site.dir))
    assert json.loads(run_menwei(*init, "--json").stdout)["versions"]["config"] == 2
    assert json.loads(run_menwei(*replay).stdout)["reason"] == "outside_window"


def test_try_prints_a_time_out_of_range_as_stored_not_a_traceback(
    site: Site, traffic: dict[str, Any], menwei
) -> None:
    """An event of year 9999 stored before the collector refused such times has no local
    time: the text output shows it as the gate sent it."""
    far = "9999-12-31T20:00:00+00:00"
    a = traffic["a"]
    collected.insert_events(
        site.store,
        "east",
        [make_event(SITE, "east", 5, at=far, pass_id=a.pass_id, detail={"qr": a.qr})],
    )
    r = menwei("policy", "try", str(site.dir))
    assert r.code == 0, r.err
    assert "replayed 6 decisions of 2 gate(s) (east, west), " in r.out
    assert f" – {far} (Asia/Shanghai)" in r.out
