"""The real gate process (`menwei gate run`) on a data partition that fails, from outside.

The data directory is a small tmpfs (tests/smallfs.py): it really fills up (ENOSPC from the
kernel) and is really mounted read-only (EROFS). Damaged databases are closed gate.db files
with bytes overwritten. Observed from outside only: the guard page (`/api/state`, and
`/metrics` for relay releases), the retained status on the broker, the collector's alerts,
the gate's own database read read-only, and whether the process is still alive.
"""

from __future__ import annotations

import contextlib
import json
import sqlite3
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from menwei.mosquitto import MosquittoBroker, free_port
from protocol import topics
from protocol.broker import parse_broker
from server.collector import Collector
from server.site import Site
from tests.conftest import SITE, run_menwei
from tests.e2e.helpers import (
    MqttWatcher,
    Proc,
    Stage,
    json_of,
    menwei_process,
    provision_gate,
    wait_until,
)
from tests.edge.test_storage_faults import DAMAGES, make_db
from tests.smallfs import SmallFs, move_gate_data, small_fs

SKIN_C = {"forehead_c": 34.6}


@pytest.fixture
def fs(tmp_path: Path) -> Iterator[SmallFs]:
    with small_fs(tmp_path / "data", 4096) as mounted:
        yield mounted


class Gate:
    """A provisioned simulated gate whose guard page listens on a free port."""

    def __init__(self, root: Path, site: Site, broker: MosquittoBroker) -> None:
        self.qrs = [
            site.issue_pass(f"5-1-{501 + i}", f"住户{i}", room=f"5-1-{501 + i}").qr
            for i in range(2)
        ]
        self.dir = provision_gate(root, site.dir, "east", "in", broker.url)
        self.port = free_port()
        toml = self.dir / "gate.toml"
        toml.write_text(toml.read_text() + f'\n[guard]\nhttp = "127.0.0.1:{self.port}"\n')
        self.stage = Stage(self.dir / "stage")
        self.broker = broker
        self.db = self.dir / "gate.db"

    def run(self, log: Path) -> contextlib.AbstractContextManager[Proc]:
        return menwei_process(
            log, "gate", "run", "--config", str(self.dir / "gate.toml"), "--broker", self.broker.url
        )

    def get(self, path: str) -> bytes:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.port}{path}", timeout=5) as r:
            return bytes(r.read())

    def state(self) -> dict[str, Any] | None:
        try:
            return dict(json.loads(self.get("/api/state")))
        except OSError:
            return None  # not listening yet

    def storage(self) -> dict[str, Any]:
        state = wait_until(self.state, 30, "the guard page never answered")
        return dict(state["health"]["storage"])

    def releases(self) -> float:
        families = text_string_to_metric_families(self.get("/metrics").decode())
        for family in families:
            if family.name == "menwei_gate_relay_releases":
                return float(family.samples[0].value)
        raise AssertionError("no relay release metric")

    def scan(self, i: int) -> None:
        """Show card i % 2 (a card stays in view until the next frame: alternate them)."""
        self.stage.drop(self.qrs[i % 2], SKIN_C)

    def decisions(self) -> float:
        """Decisions taken since the process started (the guard page's metrics)."""
        families = text_string_to_metric_families(self.get("/metrics").decode())
        return sum(
            s.value
            for family in families
            if family.name == "menwei_gate_decisions"
            for s in family.samples
            if s.name.endswith("_total")
        )

    def reasons(self) -> list[str]:
        """The guard screen's recent decisions, newest first."""
        state = self.state()
        return [] if state is None else [r["reason"] for r in state["recent"]]

    def logged(self, db: Path) -> list[tuple[str, str, str | None]]:
        """(kind, reason, decision) of every event in the gate's database, read-only."""
        with contextlib.closing(sqlite3.connect(f"file:{db}?mode=ro", uri=True)) as conn:
            return list(conn.execute("SELECT kind, reason, decision FROM events ORDER BY seq"))


def fault_status(watcher: MqttWatcher, state: str, kind: str | None = None) -> dict[str, Any]:
    """Wait until the gate's latest status says storage `state` (of `kind`); returns it."""
    topic = topics.status(SITE, "east")

    def latest() -> dict[str, Any] | None:
        last = watcher.last(topic)
        status = None if last is None else json_of(last)
        storage = (status or {}).get("storage") or {}
        if storage.get("state") == state and (kind is None or storage["kind"] == kind):
            return status
        return None

    def seen() -> str:
        last = watcher.last(topic)
        return f"no status with storage {state} {kind}; last: {last and last.payload[:400]!r}"

    return dict(wait_until(latest, 30, seen))


def test_a_full_data_partition_refuses_scans_alerts_at_once_and_resumes(
    tmp_path: Path, site: Site, broker: MosquittoBroker, fs: SmallFs
) -> None:
    gate = Gate(tmp_path, site, broker)
    move_gate_data(gate.dir, fs.mount)
    db = fs.mount / "gate.db"
    with (
        Collector(site, parse_broker(broker.url)) as collector,
        MqttWatcher(broker.url, topics.status(SITE, "east")) as watcher,
        gate.run(tmp_path / "gate.log") as proc,
    ):
        collector.start()
        gate.scan(0)
        wait_until(lambda: gate.reasons()[:1] == ["ok"], 60, proc.output)
        fault_status(watcher, "ok")

        fs.fill()
        for i in range(1, 40):  # the WAL's spare frames may log a few more first
            gate.scan(i)
            wait_until(lambda n=i: gate.decisions() == n + 1, 30, proc.output)
            if gate.reasons()[0] == "storage_fault":
                break
        assert gate.reasons()[0] == "storage_fault", proc.output()
        status = fault_status(watcher, "fault", "full")
        assert status["storage"]["since"] and "full" in status["storage"]["error"]
        wait_until(
            lambda: [a for a in site.alerts.list() if a.kind == "storage_fault"],
            15,
            "the collector raised no storage_fault alert",
        )
        [alert] = [a for a in site.alerts.list() if a.kind == "storage_fault"]
        assert alert.gate == "east" and alert.priority == "high"
        assert json.loads(alert.detail)["kind"] == "full"
        storage = gate.storage()
        assert storage["state"] == "fault" and storage["message"]["en"].startswith("Data partition")
        # The relay moved only for decisions the database holds.
        allowed = [e for e in gate.logged(db) if e[2] == "allow"]
        assert gate.releases() == len(allowed)
        assert proc.alive()

        fs.free()
        fault_status(watcher, "ok")  # by itself, within the retry interval
        gate.scan(i + 1)  # the other card: the last one is still in the camera's view
        wait_until(lambda: gate.reasons()[:1] == ["ok"], 30, proc.output)
        events = gate.logged(db)
        assert ("device", "storage_ok", None) in events
        assert gate.releases() == len([e for e in events if e[2] == "allow"])
        assert proc.alive()
    output = proc.output()
    assert output.count("STORAGE FAULT") == 1, output
    assert "Traceback" not in output


@pytest.mark.parametrize("fault", ["full", "readonly"])
def test_a_gate_starting_on_a_failed_partition_stays_up_refusing_and_resumes(
    tmp_path: Path, site: Site, broker: MosquittoBroker, fs: SmallFs, fault: str
) -> None:
    """What crashed in a loop under Restart=always: the first PRAGMA on a full card."""
    gate = Gate(tmp_path, site, broker)
    move_gate_data(gate.dir, fs.mount)
    if fault == "full":
        fs.fill()
    else:
        fs.read_only()
    with (
        MqttWatcher(broker.url, topics.status(SITE, "east")) as watcher,
        gate.run(tmp_path / "gate.log") as proc,
    ):
        fault_status(watcher, "fault", fault)
        assert gate.storage()["kind"] == fault
        gate.scan(0)
        wait_until(lambda: gate.reasons()[:1] == ["storage_fault"], 30, proc.output)
        assert gate.releases() == 0
        assert proc.alive()

        if fault == "full":
            fs.free()
        else:
            fs.read_write()
        fault_status(watcher, "ok")
        gate.scan(1)
        wait_until(lambda: gate.reasons()[:1] == ["ok"], 30, proc.output)
        assert gate.releases() == 1
    assert proc.proc.returncode == 0, proc.output()
    assert proc.output().count("STORAGE FAULT") == 1


@pytest.mark.parametrize(
    "damage",
    [
        "zero_length",
        "damaged_page",
        pytest.param("flipped_header", marks=pytest.mark.slow),
        pytest.param("truncated", marks=pytest.mark.slow),
    ],
)
def test_a_damaged_database_is_refused_then_recovered_into_a_new_epoch(
    tmp_path: Path, site: Site, broker: MosquittoBroker, damage: str
) -> None:
    gate = Gate(tmp_path, site, broker)
    make_db(gate.db, events=60)  # some history: pages to damage
    DAMAGES[damage](gate.db)
    damaged = gate.db.read_bytes()
    config = str(gate.dir / "gate.toml")

    with gate.run(tmp_path / "gate.log") as proc:
        storage = gate.storage()
        assert (storage["state"], storage["kind"]) == ("fault", "corrupt"), storage
        assert "menwei gate recover" in storage["fix"]["en"]
        gate.scan(0)
        wait_until(lambda: gate.reasons()[:1] == ["storage_fault"], 30, proc.output)
        assert gate.releases() == 0 and proc.alive()
        refused = run_menwei("gate", "recover", "--config", config, "--json", check=False)
        assert refused.returncode == 2 and "stop it first" in refused.stderr
    assert proc.output().count("STORAGE FAULT") == 1
    assert gate.db.read_bytes() == damaged, "never replaced, never written"

    doctor = run_menwei("gate", "doctor", "--config", config, "--json", check=False)
    [check] = [c for c in json.loads(doctor.stdout)["checks"] if c["device"] == "database"]
    assert not check["ok"] and "menwei gate recover" in check["fix"]

    result = json.loads(run_menwei("gate", "recover", "--config", config, "--json").stdout)
    aside = Path(result["moved_to"])
    assert (aside / "gate.db").read_bytes() == damaged
    assert len(result["epoch"]) == 16
    if damage == "damaged_page":  # only the events table was hit
        assert result["kept"]["documents"].keys() >= {"config", "register"}
        assert result["kept"]["state"] is True
    if "config" not in result["kept"]["documents"]:  # as docs/hardware.md says
        run_menwei("gate", "init", str(gate.dir), "--server", str(site.dir), "--gate", "east")
    again = run_menwei("gate", "recover", "--config", config, "--json", check=False)
    assert again.returncode == 2 and "sound" in again.stderr

    with gate.run(tmp_path / "gate2.log") as proc:
        assert gate.storage()["state"] == "ok"
        gate.scan(1)
        wait_until(lambda: gate.reasons()[:1] == ["ok"], 30, proc.output)
        assert gate.releases() == 1
    events = gate.logged(gate.db)
    assert events[0][:2] == ("device", "database_recovered")
    assert events[-1][:3] == ("decision", "ok", "allow")
