"""The collector's store is restored from yesterday's backup: the gates send again what it lost.

Nothing is lost as long as the gates still hold the events (their retention is far longer
than a backup interval): a gate whose acknowledgement stays below what it had seen queues
every later event again.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from menwei.mosquitto import MosquittoBroker
from protocol.broker import parse_broker
from server.collector import Collector
from server.site import Site
from server.storage.engine import SQLITE_FILE
from tests import collected
from tests.e2e.helpers import GateThread, Stage, gate_progress, provision_gate, wait_until


def start_collector(site_dir: Path, broker: MosquittoBroker) -> tuple[Site, Collector]:
    site = Site(site_dir)
    collector = Collector(site, parse_broker(broker.url))
    collector.start()
    wait_until(collector.connected.is_set, 15, "collector did not connect")
    return site, collector


def stop_collector(site: Site, collector: Collector) -> None:
    collector.close()
    site.close()


def test_gates_resend_what_a_restored_collector_store_lost(
    tmp_path: Path, site: Site, broker: MosquittoBroker
) -> None:
    qrs = [
        site.issue_pass(f"9-1-{901 + i}", f"住户{i}", room=f"9-1-{901 + i}").qr for i in range(3)
    ]
    site_dir = site.dir
    site.close()
    gate_dir = provision_gate(tmp_path, site_dir, "west", "out", broker.url, resend_after_s=1.5)
    stage = Stage(gate_dir / "stage")

    def synced(n: int) -> None:
        wait_until(
            lambda: (
                stage.empty()
                and gate_progress(gate_dir).last_seq == n
                and gate_progress(gate_dir).backlog == 0
            ),
            60,
            lambda: f"not synced at {n}: {gate_progress(gate_dir)}",
        )

    def scan(*indexes: int) -> None:
        for i in indexes:
            stage.drop(qrs[i])
            stage.drop(None)

    with GateThread(gate_dir, broker.url) as gate:
        server, collector = start_collector(site_dir, broker)
        scan(0, 1, 2)
        synced(3)
        stop_collector(server, collector)
        backup = tmp_path / "backup.db"
        shutil.copyfile(site_dir / SQLITE_FILE, backup)  # the nightly backup: events 1..3

        server, collector = start_collector(site_dir, broker)
        scan(0, 1, 2)
        synced(6)
        stop_collector(server, collector)
        for suffix in ("-wal", "-shm"):
            (site_dir / f"{SQLITE_FILE}{suffix}").unlink(missing_ok=True)
        shutil.copyfile(backup, site_dir / SQLITE_FILE)  # the server is restored: 4..6 are gone

        server, collector = start_collector(site_dir, broker)
        try:
            scan(0)
            synced(7)
            assert sorted(
                s for g, _e, s, _u in collected.event_keys(server.store) if g == "west"
            ) == [
                1,
                2,
                3,
                4,
                5,
                6,
                7,
            ]
            sync = gate.daemon.sync
            assert sync is not None and sync.stats["requeued"] == 3  # 4..6; 7 was still queued
            assert collected.conflicts(server.store) == []
        finally:
            stop_collector(server, collector)
