"""Data age is the time since the gate last had signed proof that its documents are current.

A real Mosquitto, the real collector and a real gate daemon share one simulated clock
(tests/e2e/simtime.py). A quiet day with no document change does not degrade a connected
gate (the collector re-affirms its documents every freshness_interval_s); a gate whose
server goes silent for longer than max_data_age_h asks the guard (rule data_age), and is
itself again as soon as the server speaks.
"""

from __future__ import annotations

import functools
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from edge.daemon import GateDaemon
from menwei.mosquitto import MosquittoBroker
from protocol.broker import parse_broker
from server.collector import Collector
from server.site import IssuedPass, Site
from tests.conftest import SITE
from tests.e2e.helpers import GateThread, Stage, provision_gate, wait_until
from tests.e2e.session_ca import use_session_ca
from tests.e2e.simtime import SimTime
from tests.e2e.sitelife import heard_since, scan

HOUSEHOLD = "7-1-701"


def start_collector(site: Site, broker: MosquittoBroker) -> Collector:
    c = Collector(site, parse_broker(broker.url), client_id=f"collector-{id(site)}")
    c.document_check_s = 0.1
    c.start()
    wait_until(c.connected.is_set, 15, "collector did not connect")
    return c


@pytest.fixture
def sim() -> SimTime:
    return SimTime(datetime.now(UTC))


@pytest.fixture
def world(
    tmp_path: Path, broker: MosquittoBroker, sim: SimTime
) -> Iterator[tuple[Site, GateThread, Stage, IssuedPass]]:
    Site.init(tmp_path / "server", SITE).close()
    use_session_ca(tmp_path / "server")
    site = Site(tmp_path / "server", clock=sim.utc)
    resident = site.issue_pass(HOUSEHOLD, "周一", room=HOUSEHOLD)
    gate_dir = provision_gate(tmp_path, site.dir, "east", "in", broker.url, status_interval_s=1)
    gate = GateThread(gate_dir, broker.url, sim=sim).start()
    try:
        yield site, gate, Stage(gate_dir / "stage"), resident
    finally:
        gate.stop()
        site.close()


def test_a_quiet_day_keeps_a_connected_gate_deciding_and_silence_degrades_it(
    world: tuple[Site, GateThread, Stage, IssuedPass], broker: MosquittoBroker, sim: SimTime
):
    site, gate, stage, resident = world
    policy = gate.daemon.know.policy
    assert policy.max_data_age_h == 24
    documents_issued = gate.daemon.know.register_issued_at
    assert documents_issued is not None

    collector = start_collector(site, broker)
    try:
        # A quiet day and a half: no pass, no revocation, no policy change.
        for _ in range(36):
            sim.advance(3600)
            wait_until(
                functools.partial(heard_since, gate, sim.utc() - timedelta(minutes=5)),
                15,
                "the gate did not receive a new freshness statement",
            )
        assert gate.daemon.know.register_issued_at == documents_issued, "nothing changed"
        assert sim.utc() - documents_issued > timedelta(hours=35)
        decision = scan(gate, stage, sim, resident.qr, forehead_c=34.6)
        assert (decision["decision"], decision["reason"]) == ("allow", "ok"), decision
        status = gate.daemon.status()
        assert status["data_age_h"] < 0.1
        assert gate.daemon.guard_state()["health"]["data_stale"] is False
        assert collector.stats["freshness"] >= 36
    finally:
        collector.close()

    # The server is gone (the broker and the gate's connection are not): a day passes.
    sim.advance(25 * 3600)
    decision = scan(gate, stage, sim, resident.qr, forehead_c=34.6)
    assert (decision["decision"], decision["reason"]) == ("deny", "guard_confirm"), decision
    assert decision["detail"]["rule"] == "data_age"
    assert gate.daemon.status()["data_age_h"] > 24
    assert gate.daemon.guard_state()["health"]["data_stale"] is True

    # The server is back: its first statement makes the gate current again.
    collector = start_collector(site, broker)
    try:
        wait_until(
            lambda: gate.daemon.status()["data_age_h"] < 0.1, 15, "no statement after restart"
        )
        decision = scan(gate, stage, sim, resident.qr, forehead_c=34.6)
        assert (decision["decision"], decision["reason"]) == ("allow", "ok"), decision
    finally:
        collector.close()


def test_a_restarted_gate_keeps_its_proof(
    world: tuple[Site, GateThread, Stage, IssuedPass], broker: MosquittoBroker, sim: SimTime
):
    site, gate, _, _ = world
    collector = start_collector(site, broker)
    try:
        before = sim.utc()
        sim.advance(30 * 3600)  # the collector may re-affirm at once: `before` is earlier
        since = before + timedelta(hours=30) - timedelta(seconds=1)
        wait_until(functools.partial(heard_since, gate, since), 15, "no statement")
    finally:
        collector.close()
    gate.stop()
    # What the gate held when it stopped (a register refreshed for the new day may have
    # brought one more statement after the one waited for).
    held = gate.daemon.know.statement
    assert held is not None and held.issued_at > since
    serial = held.serial
    # Restarted without a network: what it proved before is still proven.
    again = GateDaemon(gate.daemon.config, broker="none", wall=sim.wall, monotonic=sim.monotonic)
    try:
        assert again.know.statement is not None
        assert again.know.statement.serial == serial
        assert again.status()["data_age_h"] < 0.1
        assert again.status()["freshness"]["serial"] == serial
    finally:
        again.close()
