"""A gate whose database lost committed transactions (its WAL truncated on a failing SD card).

The real scene: `menwei gate run` decides and syncs, is killed, its WAL is truncated, so
SQLite opens the database without the transactions the WAL held, and the gate numbers
new decisions with seqs the collector already holds. The gate must notice from the
collector's acknowledgement, move to a new epoch, say what it lost, and lose nothing more:
every event it still holds ends up at the collector exactly once, under its number.
"""

from __future__ import annotations

import contextlib
import json
import sqlite3
from collections import Counter
from pathlib import Path

from edge.store import GateStore
from menwei.mosquitto import MosquittoBroker
from menwei.reconcile import reconcile
from protocol.events import Event
from server.collector import Collector
from server.site import Site
from server.storage.engine import SQLITE_FILE
from tests import collected
from tests.e2e.helpers import (
    Proc,
    Stage,
    gate_progress,
    menwei_process,
    provision_gate,
    wait_until,
)

OFFLINE = "mqtt://127.0.0.1:1"  # nothing listens there: the gate decides offline


def passes(site: Site, unit: int, n: int) -> list[str]:
    """QR texts of `n` residents of `n` households (one person each: no household quota)."""
    rooms = [f"7-{unit}-{701 + i}" for i in range(n)]
    return [site.issue_pass(room, f"住户{room}", room=room).qr for room in rooms]


def gate_log(gate_dir: Path) -> list[Event]:
    with GateStore(gate_dir / "gate.db") as store:
        return [item.event for item in store.log()]


def stored(collector: Collector, gate: str) -> list[Event]:
    return [
        Event.from_json(body) for body in collected.events(collector.store) if body["gate"] == gate
    ]


def run_gate(
    tmp_path: Path, name: str, gate_dir: Path, *broker: str
) -> contextlib.AbstractContextManager[Proc]:
    config = str(gate_dir / "gate.toml")
    return menwei_process(tmp_path / f"{name}.log", "gate", "run", "--config", config, *broker)


def scan(stage: Stage, qrs: list[str]) -> None:
    for qr in qrs:
        stage.drop(qr)
        stage.drop(None)  # an empty frame between people


def decided(gate_dir: Path, stage: Stage, last_seq: int, *, synced: bool) -> None:
    def done() -> bool:
        p = gate_progress(gate_dir)
        return stage.empty() and p.last_seq == last_seq and (not synced or p.backlog == 0)

    wait_until(
        done, 90, lambda: f"gate not at {last_seq} (synced={synced}): {gate_progress(gate_dir)}"
    )


def lose_history(
    tmp_path: Path, site: Site, broker: str, gate: str, qrs: list[str], kept: int, lost: int
) -> tuple[Path, Stage, str]:
    """A gate decides `kept` people, stops cleanly (the WAL is checkpointed into the
    database file), decides `lost` more (committed in the WAL, acknowledged), is killed,
    and its WAL is cut to nothing, as a failing card does to the newest writes. Returns
    the gate's directory, its camera stage and its epoch."""
    gate_dir = provision_gate(tmp_path, site.dir, gate, "out", broker, resend_after_s=1.5)
    stage = Stage(gate_dir / "stage")
    with run_gate(tmp_path, f"{gate}-1", gate_dir):
        scan(stage, qrs[:kept])
        decided(gate_dir, stage, kept, synced=True)
    with run_gate(tmp_path, f"{gate}-2", gate_dir) as proc:
        scan(stage, qrs[kept : kept + lost])
        decided(gate_dir, stage, kept + lost, synced=True)
        proc.kill()
    wal = gate_dir / "gate.db-wal"
    assert wal.stat().st_size > 0, "the decisions should be in the WAL"
    with open(wal, "r+b") as f:
        f.truncate(0)
    assert gate_progress(gate_dir).last_seq == kept, "the truncated WAL took its seqs along"
    return gate_dir, stage, gate_log(gate_dir)[0].epoch


def test_a_gate_that_lost_committed_history_moves_to_a_new_epoch_and_loses_nothing_more(
    tmp_path: Path, site: Site, broker: MosquittoBroker, collector: Collector
) -> None:
    qrs = passes(site, 1, 14)
    # Seqs 1..3 reach the database file itself; 4..7 are committed and acknowledged, and
    # lost with the WAL.
    gate_dir, stage, epoch = lose_history(tmp_path, site, broker.url, "west", qrs, 3, 4)
    held = {(e.epoch, e.seq): e.uuid for e in stored(collector, "west")}
    assert sorted(held) == [(epoch, s) for s in range(1, 8)]

    # The gate restarts where no broker answers and decides 5 people: seqs 4..8 again, of
    # other events. Then it comes back online.
    with run_gate(tmp_path, "gate-3", gate_dir, "--broker", OFFLINE):
        scan(stage, qrs[7:12])
        decided(gate_dir, stage, 8, synced=False)
    before = {e.uuid for e in gate_log(gate_dir)}
    with run_gate(tmp_path, "gate-4", gate_dir) as gate:
        wait_until(
            lambda: any(a.kind == "gate_history_lost" for a in site.alerts.list()),
            60,
            lambda: f"no gate_history_lost alert; gate said:\n{gate.output()}",
        )
        scan(stage, qrs[12:14])
        decided(gate_dir, stage, 8, synced=True)  # 5 moved + the alert + 2 new decisions
        output = gate.output()

    log = gate_log(gate_dir)
    new_epoch = log[-1].epoch
    assert new_epoch != epoch and len(new_epoch) == 16
    assert [(e.epoch, e.seq) for e in log] == [(epoch, s) for s in (1, 2, 3)] + [
        (new_epoch, s) for s in range(1, 9)
    ]
    assert {e.uuid for e in log[:8]} == before, "the gate kept every event it still had"
    moved = [e.detail["moved_from"] for e in log[3:8]]
    assert moved == [{"epoch": epoch, "seq": s} for s in range(4, 9)]
    alert_event = log[8]
    assert (alert_event.kind, alert_event.reason) == ("alert", "gate_history_lost")
    assert alert_event.detail == {
        "priority": "high",
        "epoch": epoch,
        "new_epoch": new_epoch,
        "confirmed_seq": 3,
        "last_seq": 8,
        "collector_seq": 7,
        "moved": 5,
    }
    assert "FAULT" in output and new_epoch in output

    # At the collector: the events the gate lost (4..7 of the old epoch) are still there,
    # unchanged; every event the gate holds is stored exactly once, under its number or as
    # an alias of where it was stored first; no uuid twice.
    events = stored(collector, "west")
    assert {(e.epoch, e.seq): e.uuid for e in events if e.epoch == epoch and e.seq <= 7} == held
    uuids = Counter(e.uuid for e in events)
    assert max(uuids.values()) == 1
    assert {e.uuid for e in log} <= set(uuids)
    keys = {(e, s, u) for g, e, s, u in collected.event_keys(collector.store) if g == "west"}
    keys |= {(e, s, u) for g, e, s, u in collected.alias_keys(collector.store) if g == "west"}
    assert {(e.epoch, e.seq, e.uuid) for e in log} <= keys
    assert (
        gate_progress(gate_dir).acked_seq == 8
        and collected.contiguous_seq(collector.store, "west") == 8
    )
    assert reconcile([gate_dir / "gate.db"], site.dir / SQLITE_FILE).lost == 0

    (alert,) = [a for a in site.alerts.list() if a.kind == "gate_history_lost"]
    assert alert.priority == "high" and alert.gate == "west"
    assert f"epoch {epoch} seq 4..7 held by the collector, not by the gate" in alert.detail
    assert [a for a in site.alerts.list() if a.kind == "gate_reset"] == []
    # Reused seqs the gate sent before it heard the ack are kept once each, however often
    # they came.
    reused = Counter(
        c["seq"] for c in collected.conflicts(collector.store) if c["kind"] == "seq_reused"
    )
    assert set(reused) <= {4, 5, 6, 7} and all(n == 1 for n in reused.values())


def test_an_ack_beyond_the_last_seq_at_start_names_the_lost_range(
    tmp_path: Path, site: Site, broker: MosquittoBroker, collector: Collector
) -> None:
    """Restarted straight online: the retained ack says 6, the database ends at 2."""
    qrs = passes(site, 2, 7)
    gate_dir, stage, epoch = lose_history(tmp_path, site, broker.url, "east", qrs, 2, 4)
    with run_gate(tmp_path, "gate-3", gate_dir):
        # Online first: the retained ack, compared at connect, makes the alert (a scan decided
        # before the gate connects would come first, a race this test is not about).
        wait_until(
            lambda: any(e.kind == "alert" for e in gate_log(gate_dir)),
            60,
            "the gate did not find the lost range when it connected",
        )
        scan(stage, qrs[6:7])
        decided(gate_dir, stage, 2, synced=True)  # the alert, then one decision

    log = gate_log(gate_dir)
    new_epoch = log[-1].epoch
    assert [(e.epoch, e.seq, e.kind) for e in log] == [
        (epoch, 1, "decision"),
        (epoch, 2, "decision"),
        (new_epoch, 1, "alert"),
        (new_epoch, 2, "decision"),
    ]
    assert log[2].reason == "gate_history_lost"
    (alert,) = [a for a in site.alerts.list() if a.kind == "gate_history_lost"]
    assert alert.detail.startswith(f"epoch {epoch} seq 3..6 held by the collector, not by")
    assert collected.conflicts(collector.store) == []
    with contextlib.closing(sqlite3.connect(site.dir / SQLITE_FILE)) as conn:
        rows = conn.execute(
            "SELECT epoch, seq, body FROM events WHERE gate = 'east' ORDER BY epoch = ?, seq",
            [new_epoch],
        ).fetchall()
    assert [(e, s) for e, s, _ in rows] == [(epoch, s) for s in range(1, 7)] + [
        (new_epoch, 1),
        (new_epoch, 2),
    ]
    assert json.loads(rows[-2][2])["detail"]["moved"] == 0


def test_history_lost_is_found_when_the_broker_lost_the_retained_ack(
    tmp_path: Path, site: Site, broker: MosquittoBroker, collector: Collector
) -> None:
    """A site-wide power cut: the broker comes back without its retained messages (no ack to
    compare at start), and the gate, back at seq 3, decides offline past the collector's 7
    before it comes online. The collector sees seqs 4..7 sent again for other events: it
    acknowledges seq 4 with the event it holds there, never the gate's own later events, and
    the gate moves to a new epoch; nothing is lost (found by an attacker session: before,
    the collector acknowledged the gate's seq 11 and ten decisions lived only in conflicts)."""
    qrs = passes(site, 3, 15)
    gate_dir, stage, epoch = lose_history(tmp_path, site, broker.url, "north", qrs, 3, 4)
    broker.stop()
    broker.start()  # persistence off, as after a power cut before its autosave: no retained ack
    with run_gate(tmp_path, "gate-3", gate_dir, "--broker", OFFLINE):
        scan(stage, qrs[7:15])
        decided(gate_dir, stage, 11, synced=False)
    wait_until(collector.connected.is_set, 30, "the collector did not reconnect")
    with run_gate(tmp_path, "gate-4", gate_dir) as gate:
        wait_until(
            lambda: any(a.kind == "gate_history_lost" for a in site.alerts.list()),
            60,
            lambda: f"no gate_history_lost alert; gate said:\n{gate.output()}",
        )
        wait_until(lambda: gate_progress(gate_dir).backlog == 0, 60, "the gate did not sync")

    log = gate_log(gate_dir)
    assert log[-1].epoch != epoch
    assert reconcile([gate_dir / "gate.db"], site.dir / SQLITE_FILE).lost == 0
    uuids = Counter(e.uuid for e in stored(collector, "north"))
    assert {e.uuid for e in log} <= set(uuids) and max(uuids.values()) == 1
    (alert,) = [a for a in site.alerts.list() if a.kind == "gate_history_lost"]
    assert f"epoch {epoch} seq 4..7 held by the collector, not by the gate" in alert.detail
