"""A gate whose database is replaced (a dead SD card, re-provisioned) numbers from 1 again.

Its events are a new epoch at the collector: stored beside the old ones, acknowledged on
their own, no seq conflict, one alert for operators — and the gate's outbox empties.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from edge.store import GateStore
from menwei.mosquitto import MosquittoBroker
from protocol import topics
from protocol.events import Ack
from server.collector import Collector
from server.site import Site
from tests import collected
from tests.e2e.helpers import GateThread, Stage, gate_progress, provision_gate, wait_until


def run_until_acked(gate_dir: Path, broker: MosquittoBroker, qrs: list[str]) -> str:
    stage = Stage(gate_dir / "stage")
    with GateThread(gate_dir, broker.url):
        for qr in qrs:
            stage.drop(qr)
            stage.drop(None)  # an empty frame between people
        wait_until(
            lambda: (
                stage.empty()
                and gate_progress(gate_dir).last_seq == len(qrs)
                and gate_progress(gate_dir).backlog == 0
            ),
            60,
            lambda: f"gate not synced: {gate_progress(gate_dir)}",
        )
    with GateStore(gate_dir / "gate.db") as store:
        return store.epoch


def test_a_replaced_gate_database_is_a_new_epoch_not_a_conflict(
    tmp_path: Path, site: Site, broker: MosquittoBroker, collector: Collector
) -> None:
    qrs = [
        site.issue_pass(f"8-1-{801 + i}", f"住户{i}", room=f"8-1-{801 + i}").qr for i in range(3)
    ]
    gate_dir = provision_gate(tmp_path, site.dir, "north", "out", broker.url)
    first = run_until_acked(gate_dir, broker, qrs)

    # The SD card dies: the installer provisions the same gate again on a new card.
    shutil.rmtree(gate_dir)
    gate_dir = provision_gate(tmp_path, site.dir, "north", "out", broker.url)
    second = run_until_acked(gate_dir, broker, qrs[:2])

    assert first != second and len(second) == 16
    keys = sorted((e, s) for g, e, s, _u in collected.event_keys(site.store) if g == "north")
    assert keys == sorted([(first, 1), (first, 2), (first, 3), (second, 1), (second, 2)])
    assert collected.conflicts(site.store) == []
    resets = [a for a in site.alerts.list() if a.kind == "gate_reset"]
    assert len(resets) == 1 and first in resets[0].detail and second in resets[0].detail
    assert gate_progress(gate_dir).acked_seq == 2


def test_a_gate_ignores_the_retained_ack_of_its_previous_database(
    tmp_path: Path, site: Site, broker: MosquittoBroker
) -> None:
    """No collector here: only the old, retained ack speaks. The new database must not
    take its seq 99 for its own."""
    from tests.e2e.helpers import mqtt_client, publish

    qr = site.issue_pass("8-2-801", "王五", room="8-2-801").qr
    gate_dir = provision_gate(tmp_path, site.dir, "south", "out", broker.url)
    client = mqtt_client(broker.url)
    try:
        publish(client, topics.ack(site.site, "south"), Ack("south", 99, "0" * 16).encode(), True)
    finally:
        client.loop_stop()
        client.disconnect()
    stage = Stage(gate_dir / "stage")
    with GateThread(gate_dir, broker.url) as gate:
        stage.drop(qr)
        sync = gate.daemon.sync
        assert sync is not None
        wait_until(lambda: sync.stats["foreign_acks"] >= 1, 30, "the retained ack never came")
        wait_until(lambda: gate_progress(gate_dir).last_seq == 1, 30, "no decision")
        wait_until(lambda: sync.stats["batches"] >= 1, 30, "nothing sent")
        assert sync.stats["bad_messages"] == 0
    progress = gate_progress(gate_dir)
    assert (progress.acked_seq, progress.backlog) == (0, 1)
