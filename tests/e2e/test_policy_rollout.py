"""A policy change reaches a running gate: edit server.toml, `menwei policy publish` (a real
subprocess), and the collector sends the new config document on its retained topic; the
gate (the real daemon on a thread, simulated hardware, a real Mosquitto) applies it, decides
by it, and reports the new config version in its status, which the collector stores."""

from __future__ import annotations

import json
from pathlib import Path

from menwei.mosquitto import MosquittoBroker
from protocol.broker import parse_broker
from server.collector import Collector
from server.site import IssuedPass, Site
from tests import collected
from tests.conftest import run_menwei
from tests.e2e.helpers import GateThread, Stage, provision_gate, wait_until
from tests.server.test_policy_rollout import edit_policy

NORMAL = {"forehead_c": 34.5}  # the simulated sensor plus the gate's offset: about 36.6 °C


def stored_reasons(site: Site) -> list[str]:
    return [e["reason"] for e in collected.events(site.store) if e["kind"] == "decision"]


def gate_config_version(site: Site, gate: str) -> int | None:
    for row in collected.gates(site.store):
        if row["gate"] == gate and row["status"]:
            return row["status"].get("versions", {}).get("config")
    return None


def test_a_published_policy_reaches_a_running_gate_and_changes_its_decisions(
    tmp_path: Path, site: Site, resident: IssuedPass, broker: MosquittoBroker
) -> None:
    neighbour = site.issue_pass("1-1-102", "李四", room="1-1-102")
    gate = provision_gate(tmp_path, site.dir, "east", "in", broker.url, status_interval_s=1)
    stage = Stage(gate / "stage")
    with Collector(site, parse_broker(broker.url)) as collector:
        collector.start()
        wait_until(collector.connected.is_set, 15, "collector did not connect to the broker")
        with GateThread(gate, broker.url) as g:
            wait_until(lambda: g.daemon.sync.connected, 30, "gate did not connect")
            stage.drop(resident.qr, NORMAL)
            wait_until(
                lambda: stored_reasons(site) == ["ok"],
                60,
                lambda: f"first entry not stored as ok: {stored_reasons(site)}",
            )
            assert g.daemon.know.config_version == 1

            edit_policy(site.dir, fever_threshold_c=36.0)
            published = json.loads(run_menwei("policy", "publish", str(site.dir), "--json").stdout)
            assert published["version"] == 2
            wait_until(
                lambda: g.daemon.know.config_version == 2,
                30,
                lambda: f"gate still on config {g.daemon.know.config_version}",
            )
            assert g.daemon.know.policy.fever_threshold_c == 36.0

            # A neighbour's card between: the camera counts a card held in view once. Each
            # high reading is re-measured at once (the same reading): a confirmed fever.
            stage.drop(neighbour.qr, NORMAL)
            stage.drop(resident.qr, NORMAL)
            fevers = ["ok", "fever_recheck", "fever", "fever_recheck", "fever"]
            wait_until(
                lambda: stored_reasons(site) == fevers,
                60,
                lambda: f"entries not refused as fevers: {stored_reasons(site)}",
            )
            decisions = [e for e in collected.events(site.store) if e["kind"] == "decision"]
            r, n = resident.pass_id, neighbour.pass_id
            assert [e["pass_id"] for e in decisions] == [r, n, n, r, r]
            assert [e["versions"]["config"] for e in decisions] == [1, 2, 2, 2, 2]
            for e in decisions:  # the same reading: a fever only by the new rule
                assert 36.0 <= e["temperature_c"] < 37.3
            # The rollout as the dashboard shows it: the gate's status names the new version.
            wait_until(
                lambda: gate_config_version(site, "east") == 2,
                30,
                lambda: f"gate status says config {gate_config_version(site, 'east')}",
            )
