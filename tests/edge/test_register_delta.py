"""A running gate receives the register as a snapshot and a delta, in whatever order.

The real daemon's document path (`GateDaemon.on_document`, as the sync thread calls it): a
delta that arrives before its snapshot waits and is applied with it; what the gate holds
survives a restart; a delta of an older snapshot, delivered again after a new one, is ignored
(not kept, not applied); and the gate decides with the register the delta made."""

from __future__ import annotations

import logging
import time
from pathlib import Path

import pytest

from drivers.camera import Frame
from drivers.sim_scene import render_card_frame
from edge.provision import provision
from edge.store import GateStore
from protocol.documents import REGISTER_FILE
from protocol.register_documents import DELTA, DELTA_FILE
from server.register import RegisterRow
from server.site import IssuedPass, Site
from tests.edge.gates import daemon_for


def population(count: int) -> list[RegisterRow]:
    return [
        RegisterRow(i + 2, f"5-1-{100 + i}", "5", "1", str(100 + i), "g", f"住户{i}", "1", role)
        for i, role in enumerate(["resident"] * count)
    ]


def decide(daemon, qr: str) -> str:  # type: ignore[no-untyped-def]
    frame = Frame(render_card_frame(qr, module_px=4.5), time.monotonic(), 0, {"forehead_c": 34.6})
    daemon.handle_frame(frame)
    return str(list(daemon.store.log())[-1].event.reason)


def test_a_delta_before_its_snapshot_waits_then_both_apply_and_survive_a_restart(
    gate_dir: Path, site: Site, resident: IssuedPass, caplog: pytest.LogCaptureFixture
) -> None:
    site.registry.apply_import(population(300))
    site.issue_all()
    snapshot = site.bundle_path(REGISTER_FILE).read_bytes()
    site.revoke_pass(resident.pass_id, "挂失")
    delta = site.bundle_path(DELTA_FILE).read_bytes()
    version = site.published_versions()["register"]
    daemon = daemon_for(gate_dir)
    try:
        before = daemon.know.register_version
        with caplog.at_level(logging.INFO, logger="menwei.gate"):
            daemon.on_document(DELTA, delta)
            assert daemon.know.register_version == before, "waits for its snapshot"
            daemon.on_document("register", snapshot)
        know = daemon.know
        assert (know.register_version, know.snapshot_version) == (version, version - 1)
        assert daemon.know.register == site.register()
        assert "waits for that snapshot" in caplog.text
        assert decide(daemon, resident.qr) == "revoked"
    finally:
        daemon.close()

    again = daemon_for(gate_dir)  # from what it stored: the snapshot and the delta
    try:
        assert again.know.register_version == version
        assert again.know.register == site.register()
        # A new snapshot; the old delta, delivered again, is superseded: ignored, not kept.
        newer = site.publish_register(snapshot=True)
        again.on_document("register", site.bundle_path(REGISTER_FILE).read_bytes())
        with caplog.at_level(logging.INFO, logger="menwei.gate"):
            again.on_document(DELTA, delta)
        assert again.know.register_version == newer.version
        assert "ignored register_delta document" in caplog.text
        assert again._waiting_delta is None
        assert decide(again, resident.qr) == "revoked"
    finally:
        again.close()


def test_gate_init_takes_the_delta_of_the_bundle_and_passes_over_a_stale_one(
    tmp_path: Path, site: Site, resident: IssuedPass
) -> None:
    """The bundle holds the snapshot and its delta; a delta of the snapshot before (left by a
    publish killed between writing the new snapshot and removing the delta) is passed over."""
    site.registry.apply_import(population(300))
    site.issue_all()
    site.revoke_pass(resident.pass_id, "挂失")
    result = provision(tmp_path / "g1", site.dir, "east", "in", simulated=True)
    assert result["versions"] == {"config": 1, "register": site.published_versions()["register"]}
    with GateStore(tmp_path / "g1" / "gate.db") as store:
        assert store.document(DELTA) == site.bundle_path(DELTA_FILE).read_bytes()

    stale = site.bundle_path(DELTA_FILE).read_bytes()
    cut = site.publish_register(snapshot=True)
    site.bundle_path(DELTA_FILE).write_bytes(stale)
    assert site.published_versions()["register"] == cut.version
    result = provision(tmp_path / "g2", site.dir, "west", "in", simulated=True)
    assert result["versions"] == {"config": 1, "register": cut.version}
    with GateStore(tmp_path / "g2" / "gate.db") as store:
        assert store.document(DELTA) is None
