"""Gates, collector and a real Mosquitto together, with faults: broker down, SIGKILL of a gate,
SIGKILL of the collector, Last Will. Every test ends with a reconciliation of the gates' own
SQLite logs against the collector's store: nothing lost, nothing counted twice."""

from __future__ import annotations

import signal
from pathlib import Path

import pytest

from edge.config import load_config
from edge.store import GateStore
from menwei.mosquitto import MosquittoBroker
from menwei.reconcile import reconcile
from protocol import topics
from server.collector import Collector
from server.site import IssuedPass, Site
from server.storage.engine import SQLITE_FILE
from tests import collected
from tests.conftest import SITE, run_menwei
from tests.e2e.helpers import (
    GateThread,
    MqttWatcher,
    Stage,
    gate_progress,
    gate_seqs,
    json_of,
    menwei_process,
    provision_gate,
    server_count,
    wait_until,
)

# Short resend timer: after a collector or broker restart the gate resends what the broker
# dropped while nobody was subscribed (default 10 s; this keeps the tests short).
FAST = {"resend_after_s": 1.5, "status_interval_s": 2}


@pytest.fixture
def passes(site: Site) -> list[str]:
    return [
        site.issue_pass(f"7-1-{701 + i}", f"住户{i}号", room=f"7-1-{701 + i}").qr for i in range(3)
    ]


def server_db(site: Site) -> Path:
    return site.dir / SQLITE_FILE


def check_reconciled(site: Site, *gate_dirs: Path) -> None:
    r = reconcile([d / "gate.db" for d in gate_dirs], server_db(site))
    assert r.gate_events > 0
    assert (r.lost, r.duplicates, r.pending) == (0, 0, 0), r
    assert r.collector_events == r.gate_events, r


def wait_synced(
    gate_dir: Path, site: Site, stage: Stage | None, expect: int, timeout: float = 60
) -> int:
    """Until the stage is consumed, the gate has logged `expect` events, its backlog is 0 and
    the collector holds its whole log."""
    gate = load_config(gate_dir / "gate.toml").gate.id

    def done() -> bool:
        p = gate_progress(gate_dir)
        return (
            (stage is None or stage.empty())
            and p.last_seq == expect
            and p.backlog == 0
            and p.acked_seq == p.last_seq
            and server_count(server_db(site), gate) == p.last_seq
        )

    def state() -> str:
        p = gate_progress(gate_dir)
        frames = stage.pending() if stage else 0
        stored = server_count(server_db(site), gate)
        return f"{gate}: {p}, expected {expect}, frames left {frames}, collector {stored}"

    wait_until(done, timeout, state, interval=0.1)
    return gate_progress(gate_dir).last_seq


def feed_alternating(stage: Stage, qrs: list[str], n: int, meta: dict | None = None) -> None:
    """n frames cycling through the passes: every frame is a new scan (the code changed from
    the previous frame, also across calls: the cycle follows the stage's frame counter)."""
    for _ in range(n):
        stage.drop(qrs[stage.counter % len(qrs)], meta)


# --- (a) the happy path -------------------------------------------------------------------------


def test_decisions_reach_the_collector_exactly_once(
    tmp_path: Path,
    site: Site,
    resident: IssuedPass,
    passes: list[str],
    gate_dir: Path,
    broker: MosquittoBroker,
    collector: Collector,
) -> None:
    west = provision_gate(tmp_path, site.dir, "west", "out", broker.url, **FAST)
    east_stage, west_stage = Stage(gate_dir / "stage"), Stage(west / "stage")
    with GateThread(gate_dir, broker.url) as east_gate, GateThread(west, broker.url):
        # way in: the forehead reading first (sidecar), then the image, atomically
        for qr in (resident.qr, passes[0], resident.qr):
            east_stage.drop(qr, {"forehead_c": 34.5})
        feed_alternating(west_stage, passes, 6)
        wait_synced(gate_dir, site, east_stage, 3)
        wait_synced(west, site, west_stage, 6)
        assert "请通行" in east_gate.out.getvalue()

    with GateStore(gate_dir / "gate.db") as store:
        log = list(store.log())
    assert all(item.acked for item in log)
    assert [(i.event.decision, i.event.reason, i.event.direction) for i in log] == [
        ("allow", "ok", "in")
    ] * 3
    for item in log:
        assert item.event.temperature_c == pytest.approx(36.6, abs=0.3)
    stored = {(g, s): u for g, _e, s, u in collected.event_keys(site.store)}
    assert {(i.event.gate, i.event.seq): i.event.uuid for i in log}.items() <= stored.items()
    check_reconciled(site, gate_dir, west)


# --- (b) broker down ----------------------------------------------------------------------------


def test_broker_down_gate_keeps_deciding_and_delivers_later(
    tmp_path: Path,
    site: Site,
    passes: list[str],
    broker: MosquittoBroker,
    collector: Collector,
) -> None:
    gate = provision_gate(tmp_path, site.dir, "north", "out", broker.url, **FAST)
    stage = Stage(gate / "stage")
    with GateThread(gate, broker.url) as g:
        feed_alternating(stage, passes, 4)
        wait_synced(gate, site, stage, 4)

        broker.stop()
        wait_until(lambda: not g.daemon.sync.connected, 15, "gate noticed the broker is gone")
        feed_alternating(stage, passes, 9)
        wait_until(
            lambda: gate_progress(gate).last_seq == 13 and stage.empty(),
            30,
            lambda: f"gate should keep deciding offline: {gate_progress(gate)}",
        )
        p = gate_progress(gate)
        assert (p.acked_seq, p.backlog) == (4, 9), "offline decisions wait in the outbox"
        assert server_count(server_db(site)) == 4

        broker.start()  # same port, empty (no persistence): nothing retained survives
        wait_synced(gate, site, stage, 13, timeout=90)
    assert gate_seqs(gate) == list(range(1, 14))
    check_reconciled(site, gate)


# --- (c) SIGKILL of the gate mid-traffic --------------------------------------------------------


def test_gate_sigkill_mid_traffic_loses_and_doubles_nothing(
    tmp_path: Path,
    site: Site,
    passes: list[str],
    broker: MosquittoBroker,
    collector: Collector,
) -> None:
    frames = 240
    gate = provision_gate(tmp_path, site.dir, "south", "out", broker.url, **FAST)
    stage = Stage(gate / "stage")
    feed_alternating(stage, passes, frames)
    config = str(gate / "gate.toml")
    with menwei_process(tmp_path / "gate-1.log", "gate", "run", "--config", config) as first:
        wait_until(
            lambda: gate_progress(gate).last_seq >= 30 or not first.alive(),
            60,
            lambda: f"gate did not start deciding: {gate_progress(gate)}\n{first.output()}",
            interval=0.02,
        )
        assert first.alive(), first.output()
        first.kill()
    killed_at, left = gate_progress(gate), stage.pending()
    assert killed_at.last_seq < frames - 10 and left > 10, (
        f"the kill should come mid-traffic: {killed_at}, {left} frames left"
    )
    # The frame the gate held in hand when killed (read and deleted, not yet decided) has no
    # event: nobody was let through for it. Every other frame is decided exactly once.
    in_hand = (frames - left) - killed_at.last_seq
    assert in_hand in (0, 1), f"{frames - left} frames read, {killed_at.last_seq} decided"
    n = killed_at.last_seq + left

    with menwei_process(tmp_path / "gate-2.log", "gate", "run", "--config", config) as second:
        wait_synced(gate, site, stage, n, timeout=120)
        assert second.alive(), second.output()
    assert gate_seqs(gate) == list(range(1, n + 1)), "seq numbers without gaps or repeats"
    check_reconciled(site, gate)


# --- (d) SIGKILL of the collector mid-traffic ---------------------------------------------------


def test_collector_sigkill_mid_traffic_loses_and_doubles_nothing(
    tmp_path: Path, site: Site, passes: list[str], broker: MosquittoBroker
) -> None:
    gate = provision_gate(tmp_path, site.dir, "gate-d", "out", broker.url, **FAST)
    stage = Stage(gate / "stage")
    feed_alternating(stage, passes, 150)
    db = server_db(site)
    run = ("server", "run", str(site.dir), "--broker", broker.url)
    with GateThread(gate, broker.url) as g:
        with menwei_process(tmp_path / "collector-1.log", *run) as first:
            wait_until(
                lambda: server_count(db) >= 20 or not first.alive(),
                60,
                lambda: f"collector stored nothing: {gate_progress(gate)}\n{first.output()}",
                interval=0.02,
            )
            assert first.alive(), first.output()
            first.kill()
        stored_at_kill = server_count(db)
        # the gate goes on deciding; its backlog grows while nobody acknowledges
        wait_until(
            lambda: gate_progress(gate).backlog >= 10,
            60,
            lambda: f"backlog should grow without a collector: {gate_progress(gate)}",
        )
        assert server_count(db) == stored_at_kill
        with menwei_process(tmp_path / "collector-2.log", *run) as second:
            wait_synced(gate, site, stage, 150, timeout=90)
            assert second.alive(), second.output()
        assert g.daemon.sync is not None and g.daemon.sync.stats["resends"] >= 1
    assert gate_seqs(gate) == list(range(1, 151))
    check_reconciled(site, gate)


# --- (e) the retained status topic and the Last Will --------------------------------------------


def test_status_is_online_then_offline_by_last_will_and_by_clean_stop(
    tmp_path: Path, site: Site, broker: MosquittoBroker
) -> None:
    gate = provision_gate(tmp_path, site.dir, "gate-e", "out", broker.url, keepalive_s=2)
    topic = topics.status(SITE, "gate-e")
    config = str(gate / "gate.toml")

    def state(want: str):
        return lambda m: json_of(m).get("state") == want

    with MqttWatcher(broker.url, topic) as w:
        with menwei_process(tmp_path / "gate-1.log", "gate", "run", "--config", config) as p:
            online = json_of(w.wait_for(topic, state("online"), 30, "online status"))
            assert online["gate"] == "gate-e" and online["site"] == SITE
            assert {"backlog", "last_seq", "acked_seq", "versions"} <= online.keys()
            seen = len(w.on(topic))
            p.kill()
        w.wait_for(topic, state("offline"), 15, "offline by the Last Will after SIGKILL")
        assert all(json_of(m)["state"] == "online" for m in w.on(topic)[:seen])

    # retained: an operator connecting now sees the gate offline
    with MqttWatcher(broker.url, topic) as late:
        m = late.wait_for(topic, lambda m: True, 10, "retained status")
        assert m.retain and json_of(m)["state"] == "offline"

    with MqttWatcher(broker.url, topic) as w:
        with menwei_process(tmp_path / "gate-2.log", "gate", "run", "--config", config) as p:
            w.wait_for(topic, state("online"), 30, "online again after restart")
            assert p.stop() == 0, p.output()  # SIGTERM: a clean stop says offline itself
        w.wait_for(topic, state("offline"), 15, "offline after a clean stop")


# --- (f) the demo ---------------------------------------------------------------------------


def test_demo_json_contract() -> None:
    import json

    proc = run_menwei("demo", "--gates", "2", "--seconds", "6", "--json", timeout=150)
    summary = json.loads(proc.stdout.strip().splitlines()[-1])
    keys = {"decisions", "allowed", "denied", "by_reason", "collector_events", "lost", "duplicates"}
    assert keys <= summary.keys(), summary
    assert summary["lost"] == 0 and summary["duplicates"] == 0, summary
    assert summary["allowed"] > 0 and summary["denied"] > 0, summary
    assert summary["decisions"] == summary["allowed"] + summary["denied"]
    by_reason = summary["by_reason"]
    assert {"bad_signature", "expired"} <= by_reason.keys(), by_reason
    assert {"fever", "fever_recheck"} & by_reason.keys(), by_reason
    assert summary["collector_events"] >= summary["decisions"]


def test_frozen_gate_goes_offline_by_keepalive_and_online_again_on_reconnect(
    tmp_path: Path, site: Site, broker: MosquittoBroker
) -> None:
    """SIGSTOP: the TCP connection stays open but the gate sends nothing (a hung Pi, a cut
    cable without FIN). The broker's keepalive check fires the Last Will. After SIGCONT the
    gate reconnects and must say "online" again at once, not at its next periodic status
    (set to 10 minutes here, so only the reconnect can announce it)."""
    gate = provision_gate(
        tmp_path, site.dir, "gate-f", "out", broker.url, keepalive_s=2, status_interval_s=600
    )
    topic = topics.status(SITE, "gate-f")

    def state(want: str):
        return lambda m: json_of(m).get("state") == want

    with MqttWatcher(broker.url, topic) as w:
        config = str(gate / "gate.toml")
        with menwei_process(tmp_path / "gate.log", "gate", "run", "--config", config) as p:
            w.wait_for(topic, state("online"), 30, "online status")
            p.proc.send_signal(signal.SIGSTOP)
            try:
                w.wait_for(topic, state("offline"), 20, "offline by keepalive expiry")
                n = len(w.on(topic))
            finally:
                p.proc.send_signal(signal.SIGCONT)
            wait_until(
                lambda: any(json_of(m)["state"] == "online" for m in w.on(topic)[n:]),
                30,
                lambda: f"gate did not announce online after reconnecting\n{p.output()}",
            )
            assert p.alive(), p.output()
