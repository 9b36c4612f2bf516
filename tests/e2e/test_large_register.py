"""A large compound's register, from the server through the shipped broker to a gate.

Found in an attack on the shipped setup: 30,000 passes made a 3.3 MB register, every change
re-sent it whole, and a broker with a smaller packet limit disconnected the collector at every
publish. Now the register is a compressed snapshot and a delta of what changed since
(protocol/register_documents.py). The real Mosquitto runs the shipped configuration and ACL
(tests/e2e/shipped_broker.py), `menwei server run` and `menwei gate run` are real processes: the
gate, provisioned before the register grew, receives the snapshot through the broker, then a
quarantine, a revocation and a new pass as deltas, and decides with all of them. The default
run has 20,000 passes; the `slow` one 100,000 (a large 小区).
"""

from __future__ import annotations

import contextlib
import json
import sqlite3
from pathlib import Path

import pytest

from menwei.broker_setup import BROKER_DIR
from protocol.documents import REGISTER_FILE
from protocol.register_documents import DELTA, DELTA_FILE
from server.register import RegisterRow
from server.site import Site
from server.storage import passes
from server.storage.engine import SQLITE_FILE
from tests import collected
from tests.e2e.helpers import (
    Stage,
    gate_document_versions,
    menwei_process,
    provision_gate,
    wait_until,
)
from tests.e2e.shipped_broker import ShippedBroker
from tests.e2e.test_shipped_broker import PASSWORDS, configure_collector, gate_login, new_server


def residents(count: int) -> list[RegisterRow]:
    """`count` residents, four to a household (the default cap), 800 households a building."""
    rows = []
    for i in range(count):
        flat = i // 4
        building, unit, room = flat // 800 + 1, flat % 800 // 200 + 1, flat % 200 + 101
        rows.append(
            RegisterRow(
                row=i + 2,
                household=f"{building}-{unit}-{room}",
                building=str(building),
                unit=str(unit),
                room=str(room),
                grid="g1",
                name=f"住户{i}",
                phone=f"139{i:08d}",
                role="resident",
            )
        )
    return rows


def qr_of(site: Site, household: str) -> tuple[int, str]:
    with site.store.read() as tx:
        first = passes.find(tx, household=household)[0]
    return first.pass_id, first.qr


def gate_decisions(gate_dir: Path) -> list[tuple[str, str]]:
    """(outcome, reason) of the gate's decisions, from its own log (read-only)."""
    db = f"file:{gate_dir / 'gate.db'}?mode=ro"
    with contextlib.closing(sqlite3.connect(db, uri=True, timeout=10)) as conn:
        rows = conn.execute("SELECT decision, reason FROM events WHERE kind = 'decision'")
        return [(str(d), str(r)) for d, r in rows]


def run_large_register(tmp_path: Path, count: int) -> None:
    server_dir = new_server(tmp_path)
    folder = server_dir / BROKER_DIR  # over TLS: `gate init` issues the gate's certificate
    with ShippedBroker(tmp_path / "broker", PASSWORDS, folder=folder) as broker:
        configure_collector(server_dir, broker)
        gate_dir = provision_gate(
            tmp_path,
            server_dir,
            "east",
            "both",
            broker.url,
            **gate_login(broker, "east"),
            status_interval_s=2,
        )
        assert gate_document_versions(gate_dir)["register"] == 1, "provisioned while empty"
        with Site(server_dir) as site:
            site.registry.apply_import(residents(count))
            assert site.issue_all()["issued"] == count
            snapshot = site.published_versions()["register"]
            assert not site.bundle_path(DELTA_FILE).exists()
            size = len(site.bundle_path(REGISTER_FILE).read_bytes())
            assert size < count * 20, f"{size} bytes: compressed, ~15 bytes a pass"
            _, resident = qr_of(site, "1-1-101")
            lost_id, lost = qr_of(site, "1-1-102")
            _, quarantined = qr_of(site, "1-1-103")
            collector_run = ("server", "run", str(server_dir))
            gate_run = ("gate", "run", "--config", str(gate_dir / "gate.toml"))
            with (
                menwei_process(tmp_path / "collector.log", *collector_run) as collector,
                menwei_process(tmp_path / "gate.log", *gate_run) as gate,
            ):

                def holds(wanted: dict[str, int]) -> bool:
                    held = gate_document_versions(gate_dir)
                    return all(held.get(k) == v for k, v in wanted.items())

                def state() -> str:
                    return (
                        f"gate holds {gate_document_versions(gate_dir)}\n--- gate\n"
                        f"{gate.output()}\n--- collector\n{collector.output()}\n{broker.log()}"
                    )

                wait_until(lambda: holds({"register": snapshot}), 180, state)
                # Three changes, each a delta of that snapshot (the last one holds all three).
                site.set_quarantine("1-1-103", None)
                site.revoke_pass(lost_id, "挂失")
                newcomer = site.issue_pass("9-9-901", "新住户", room="9-9-901")
                latest = site.published_versions()["register"]
                assert latest == snapshot + 3
                delta = json.loads(site.bundle_path(DELTA_FILE).read_bytes())
                assert (delta["version"], delta["body"]["base"]) == (latest, snapshot)
                assert len(site.bundle_path(DELTA_FILE).read_bytes()) < 2000
                wait_until(lambda: holds({"register": snapshot, DELTA: latest}), 90, state)

                stage = Stage(gate_dir / "stage")
                for qr, meta in (
                    (resident, {"forehead_c": 34.6, "direction": "in"}),
                    (lost, {"forehead_c": 34.6, "direction": "in"}),
                    (newcomer.qr, {"forehead_c": 34.6, "direction": "in"}),
                    (quarantined, {"direction": "out"}),
                ):
                    stage.drop(qr, meta)
                    stage.drop(None)
                wait_until(lambda: len(gate_decisions(gate_dir)) == 4, 90, state)
                assert gate_decisions(gate_dir) == [
                    ("allow", "ok"),
                    ("deny", "revoked"),
                    ("allow", "ok"),
                    ("deny", "quarantined"),
                ], state()

                def reported() -> bool:  # the version the gate reports is the delta's
                    gates = collected.gates(site.store)
                    status = [(g["status"] or {}) for g in gates if g["gate"] == "east"]
                    return bool(status) and status[0].get("versions", {}).get("register") == latest

                wait_until(reported, 60, lambda: f"{collected.gates(site.store)}\n{state()}")
                assert "refused" not in gate.output(), gate.output()
        assert (server_dir / SQLITE_FILE).exists()
        assert "oversize" not in broker.log()


def test_a_large_register_reaches_a_gate_through_the_shipped_broker(tmp_path: Path) -> None:
    run_large_register(tmp_path, 20_000)


@pytest.mark.slow
def test_a_100000_pass_register_reaches_a_gate_through_the_shipped_broker(tmp_path: Path) -> None:
    run_large_register(tmp_path, 100_000)
