"""The gate's store and daemon when the storage fails: a data partition that really fills up
(a small tmpfs: ENOSPC from the kernel), one mounted read-only, and damaged database files
(zero length, a flipped header, truncated, a damaged page).

Every fault becomes a decision: deny `storage_fault`, relay shut, the fault on the guard
screen, in the status and the metrics, one log line; the gate resumes when the fault clears,
and a damaged database is refused, never replaced.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import sqlite3
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from drivers.gpio import FakePins
from edge.config import load_config
from edge.daemon import GateDaemon
from edge.decision import Scan
from edge.doctor import check_database
from edge.guard_page import create_app
from edge.metrics import gate_registry
from edge.provision import EXIT_NOT_PROVISIONED, provision
from edge.recovery import RecoveryError, hold_data_dir, recover
from edge.storage_fault import MIN_FREE_BYTES, StorageFault, classify, inspect_database
from edge.store import GateStore
from server.site import IssuedPass, Site
from tests.conftest import REPO, run_menwei
from tests.edge.gates import GUARD, PIN, daemon_for, guard_client
from tests.edge.test_store import builder
from tests.smallfs import SmallFs, move_gate_data, small_fs

RELAY, EXIT = 17, 24
SKIN_C = {"forehead_c": 34.6}  # a forehead that reads as a normal body temperature


def relay_levels(pins: object) -> list[bool]:
    assert isinstance(pins, FakePins)
    return [value for _t, pin, value in pins.history if pin == RELAY]


@pytest.fixture
def fs(tmp_path: Path) -> Iterator[SmallFs]:
    with small_fs(tmp_path / "data", 4096) as mounted:
        yield mounted


def make_db(path: Path, events: int = 30) -> None:
    """A gate database with some history, closed cleanly (no WAL left beside it)."""
    with GateStore(path) as store:
        for i in range(events):
            store.append(builder(), state={"n": i}, clock_floor=1000.0 + i)
    assert not path.with_name(path.name + "-wal").exists()


# --- the store ------------------------------------------------------------------------------


def test_a_full_partition_refuses_writes_keeps_reads_and_clears_only_with_room(
    fs: SmallFs,
) -> None:
    db = fs.mount / "gate.db"
    make_db(db, events=3)
    with GateStore(db, verify=True, resilient=True) as store:
        fs.fill()
        with pytest.raises(StorageFault) as raised:
            for _ in range(50):  # the WAL's free frames may take a few before the card is full
                store.append(builder(), state=None, clock_floor=0.0)
        assert raised.value.kind == "full" and raised.value.errno == 28  # ENOSPC
        fault = store.health.fault
        assert fault is not None and fault.kind == "full"
        assert store.health.to_json()["state"] == "fault"
        logged = store.last_seq()  # reads still work on a full card
        assert logged >= 3 and store.backlog() == logged

        with pytest.raises(StorageFault, match="bytes free"):
            store.probe("2026-11-29T08:00:00+00:00")  # no room yet: still a fault
        assert store.health.fault is not None

        fs.free()
        assert fs.free_bytes() >= MIN_FREE_BYTES
        store.probe("2026-11-29T08:00:05+00:00")
        assert store.health.fault is None and store.health.episodes == 1
        event = store.append(builder(), state=None, clock_floor=0.0)
        assert event.seq == logged + 1
    assert inspect_database(db) is None  # a full card damaged nothing


def test_a_read_only_partition_at_start_is_a_fault_that_clears_when_writable(
    fs: SmallFs,
) -> None:
    db = fs.mount / "gate.db"
    make_db(db, events=2)
    fs.read_only()
    store = GateStore(db, verify=True, resilient=True)
    try:
        fault = store.health.fault
        assert fault is not None and fault.kind == "readonly"
        with pytest.raises(StorageFault):
            store.last_seq()
        with pytest.raises(StorageFault):
            store.probe("2026-11-29T08:00:00+00:00")
        fs.read_write()
        store.probe("2026-11-29T08:00:05+00:00")  # reopened: the old connection was read-only
        assert store.health.fault is None
        assert store.append(builder(), state=None, clock_floor=0.0).seq == 3
    finally:
        store.close()


def test_without_resilient_a_fault_at_opening_raises_one_clear_oserror(fs: SmallFs) -> None:
    db = fs.mount / "gate.db"
    make_db(db, events=1)
    fs.read_only()
    with pytest.raises(OSError, match="read-only") as raised:
        GateStore(db)
    assert isinstance(raised.value, StorageFault) and raised.value.errno == 30  # EROFS


def damage_zero_length(db: Path) -> None:
    db.write_bytes(b"")


def damage_header(db: Path) -> None:
    with db.open("r+b") as f:
        f.write(b"SQLite format 4")  # one flipped byte in the magic string


def damage_truncated(db: Path) -> None:
    os.truncate(db, db.stat().st_size // 2)


def damage_page(db: Path) -> None:
    """Overwrite the first KiB of the events table's root page (a b-tree page) with garbage;
    the other tables (documents, meta) stay readable."""
    with contextlib.closing(sqlite3.connect(db)) as conn:
        (root,) = conn.execute(
            "SELECT rootpage FROM sqlite_master WHERE name = 'events'"
        ).fetchone()
        (size,) = conn.execute("PRAGMA page_size").fetchone()
    with db.open("r+b") as f:
        f.seek((root - 1) * size)
        f.write(bytes(range(256)) * 4)


DAMAGES = {
    "zero_length": damage_zero_length,
    "flipped_header": damage_header,
    "truncated": damage_truncated,
    "damaged_page": damage_page,
}


@pytest.mark.parametrize("damage", DAMAGES, ids=list(DAMAGES))
def test_a_damaged_database_is_refused_and_never_replaced(tmp_path: Path, damage: str) -> None:
    db = tmp_path / "gate.db"
    make_db(db, events=60)
    DAMAGES[damage](db)
    before = db.read_bytes()

    with pytest.raises(StorageFault) as raised:
        GateStore(db, verify=True)
    assert raised.value.kind == "corrupt"
    store = GateStore(db, verify=True, resilient=True)
    try:
        fault = store.health.fault
        assert fault is not None and fault.kind == "corrupt" and not fault.transient
        for call in (store.last_seq, store.backlog, lambda: store.probe("now")):
            with pytest.raises(StorageFault):
                call()
        assert store.health.cleared() is False  # nothing but a recovery ends it
    finally:
        store.close()
    assert db.read_bytes() == before, "a damaged database is kept as it is"
    found = inspect_database(db)
    assert found is not None and found.kind == "corrupt"


def test_a_new_database_is_built_beside_its_name_and_renamed_into_place(tmp_path: Path) -> None:
    db = tmp_path / "gate.db"
    with GateStore(db) as store:
        assert len(store.epoch) == 16
    assert sorted(p.name for p in tmp_path.iterdir()) == ["gate.db"]
    assert db.read_bytes()[:16] == b"SQLite format 3\0"
    assert inspect_database(db) is None


# --- the daemon -----------------------------------------------------------------------------


def storage_gate(gate_dir: Path, data: Path) -> GateDaemon:
    move_gate_data(gate_dir, data)
    return daemon_for(gate_dir)


def scan_until_refused(daemon: GateDaemon, passes: list[IssuedPass]) -> list[str]:
    """Scan entries (alternating passes) until one is refused for storage; the reasons."""
    reasons = []
    for i in range(40):
        p = passes[i % len(passes)]
        reasons.append(daemon.handle_scan(Scan(p.qr, "in"), dict(SKIN_C)).reason)
        if reasons[-1] == "storage_fault":
            return reasons
    raise AssertionError(f"never refused for storage: {reasons}")


def test_a_full_partition_refuses_scans_keeps_the_relay_shut_and_resumes(
    site: Site, gate_dir: Path, resident: IssuedPass, fs: SmallFs, caplog: pytest.LogCaptureFixture
) -> None:
    other = site.issue_pass("1-1-102", "李四", room="1-1-102")
    daemon = storage_gate(gate_dir, fs.mount)
    pins = daemon.hw.pins
    caplog.set_level(logging.INFO, logger="menwei.gate")
    try:
        assert daemon.handle_scan(Scan(resident.qr, "in"), dict(SKIN_C)).reason == "ok"
        assert relay_levels(pins) == [False, True]
        time.sleep(daemon.config.gpio.relay_pulse_s + 0.3)  # the pulse ends: locked again
        assert relay_levels(pins) == [False, True, False]
        logged = daemon.store.last_seq()

        fs.fill()
        reasons = scan_until_refused(daemon, [other, resident])
        allowed_while_filling = reasons.count("ok")
        daemon._watch_storage()  # the loop's turn: show the fault once
        for _ in range(3):
            time.sleep(0.05)
            refused = daemon.handle_scan(Scan(resident.qr, "in"), dict(SKIN_C))
            assert (refused.decision, refused.reason) == ("deny", "storage_fault")
            daemon._watch_storage()
        # Nothing opened that was not logged: one release per committed allow.
        assert relay_levels(pins).count(True) == 1 + allowed_while_filling
        assert daemon.store.last_seq() == logged + allowed_while_filling
        assert daemon.hw.indicator.current == "fault"
        health = daemon.guard_state()["health"]["storage"]
        assert (health["state"], health["kind"]) == ("fault", "full")
        assert health["message"]["zh"].startswith("数据分区已满")
        assert daemon.guard_state()["last"]["reason"] == "storage_fault"
        assert daemon.status()["storage"]["state"] == "fault"
        assert daemon.status()["storage"]["since"]
        faults = [r for r in caplog.records if "STORAGE FAULT" in r.getMessage()]
        assert len(faults) == 1, "one log line per fault, not one per scan"
        assert "df -h" in faults[0].getMessage()
        metrics = gate_registry(daemon)
        assert metrics.get_sample_value("menwei_gate_storage_ok") == 0
        assert metrics.get_sample_value("menwei_gate_storage_fault", {"kind": "full"}) == 1
        assert (
            metrics.get_sample_value(
                "menwei_gate_decisions_total",
                {"reason": "storage_fault", "decision": "deny", "direction": "in"},
            )
            == 4
        )
        # The guard cannot override (it would not be recorded); the exit button still opens.
        refusal = daemon.request_override(GUARD, PIN, "快递", "in")
        assert refusal is not None and "mechanical key" in refusal.message.en
        assert isinstance(pins, FakePins)
        pins.drive(EXIT, False)
        daemon._handle_inputs()
        assert relay_levels(pins)[-1] is True

        fs.free()
        time.sleep(1.1)  # a scan retries the store at most every second
        assert daemon.handle_scan(Scan(other.qr, "in"), dict(SKIN_C)).reason == "ok"
        daemon._watch_storage()
        assert daemon.store.health.fault is None
        assert daemon.status()["storage"]["state"] == "ok"
        assert daemon.hw.indicator.current == "idle"
        assert gate_registry(daemon).get_sample_value("menwei_gate_storage_ok") == 1
        rows = [(e.event.kind, e.event.reason, e.event.detail) for e in daemon.store.log()]
        kind, reason, detail = rows[-1]
        assert (kind, reason) == ("device", "storage_ok")
        assert detail["fault"] == "full" and detail["refused"] == 4
        assert detail["unlogged_exits"] == 1
        assert rows[-2][1] == "ok"
        assert any("storage works again" in r.getMessage() for r in caplog.records)
    finally:
        daemon.close()


@pytest.mark.parametrize("damage", ["zero_length", "damaged_page"])
def test_a_damaged_database_at_start_refuses_every_scan_without_crashing(
    gate_dir: Path, resident: IssuedPass, damage: str, caplog: pytest.LogCaptureFixture
) -> None:
    db = gate_dir / "gate.db"
    with GateStore(db) as store:  # some history first, so there are pages to damage
        for i in range(60):
            store.append(builder(), state=None, clock_floor=1000.0 + i)
    DAMAGES[damage](db)
    before = db.read_bytes()
    caplog.set_level(logging.INFO, logger="menwei.gate")
    daemon = daemon_for(gate_dir)
    try:
        fault = daemon.store.health.fault
        assert fault is not None and fault.kind == "corrupt"
        daemon._watch_storage()
        for _ in range(2):
            d = daemon.handle_scan(Scan(resident.qr, "in"), dict(SKIN_C))
            assert (d.decision, d.reason) == ("deny", "storage_fault")
            daemon._watch_storage()
        assert relay_levels(daemon.hw.pins) == [False]
        storage = daemon.guard_state()["health"]["storage"]
        assert storage["kind"] == "corrupt" and "menwei gate recover" in storage["fix"]["en"]
        assert storage["message"]["zh"] == "数据库已损坏，闸机停止判定"
        assert daemon.status()["last_seq"] is None  # not read from a damaged file
        faults = [r for r in caplog.records if "STORAGE FAULT" in r.getMessage()]
        assert len(faults) == 1 and "does not decide" in faults[0].getMessage()
    finally:
        daemon.close()
    assert db.read_bytes() == before, "the damaged file is kept untouched"


def test_the_guard_page_shows_the_fault_and_refuses_an_override(
    gate_dir: Path, resident: IssuedPass
) -> None:
    (gate_dir / "gate.db").write_bytes(b"")  # an SD card that lost the file's contents
    daemon = daemon_for(gate_dir)
    try:
        client = guard_client(create_app(daemon.guard_state, daemon.request_override))
        storage = client.get("/api/state").json()["health"]["storage"]
        assert (storage["state"], storage["kind"]) == ("fault", "corrupt")
        assert storage["since_local"] and storage["fix"]["zh"].startswith("停止闸机")
        r = client.post(
            "/api/override",
            json={"guard": GUARD, "pin": PIN, "reason": "送医", "direction": "in"},
        )
        assert r.status_code == 503 and "机械钥匙" in r.json()["zh"]
        daemon._handle_inputs()
        assert relay_levels(daemon.hw.pins) == [False]
        # the page knows how to show it
        assert "STORAGE FAULT" in client.get("/static/guard_page.js").text
    finally:
        daemon.close()
    assert (gate_dir / "gate.db").read_bytes() == b""


# --- recovery and the doctor ------------------------------------------------------------------


def test_recover_refuses_while_the_gate_runs_and_for_a_sound_database(
    gate_dir: Path, resident: IssuedPass
) -> None:
    config = load_config(gate_dir / "gate.toml")
    with pytest.raises(RecoveryError, match="integrity_check ok"):
        recover(config)
    damage_header(config.db_path)
    running = hold_data_dir(config.data_dir)
    try:
        with pytest.raises(RecoveryError, match="stop it first"):
            recover(config)
    finally:
        running.close()
    result = recover(config)
    assert result["kept"]["documents"] == {}  # the header hid everything
    assert result["moved"] == ["gate.db"]
    assert inspect_database(config.db_path) is None


def test_recover_keeps_the_wal_of_a_database_emptied_by_a_crash(
    gate_dir: Path, resident: IssuedPass
) -> None:
    """After a file-system error and fsck: gate.db is 0 bytes, its WAL holds the decisions.
    recover sets both aside byte for byte (reading them must not let SQLite drop the WAL)."""
    config = load_config(gate_dir / "gate.toml")
    daemon = daemon_for(gate_dir)
    try:
        for _ in range(3):
            daemon.handle_scan(Scan(resident.qr, "in"), dict(SKIN_C))
    finally:
        daemon.close()
    db = config.db_path
    wal = db.with_name(db.name + "-wal")
    with contextlib.closing(sqlite3.connect(db)) as conn:  # work in the WAL, not checkpointed
        conn.execute("PRAGMA wal_autocheckpoint=0")
        conn.execute("INSERT INTO meta (key, value) VALUES ('wal-only', 'x')")
        conn.commit()
        crash_wal = wal.read_bytes()
    db.write_bytes(b"")  # what the crash and fsck left: an empty file beside its WAL
    wal.write_bytes(crash_wal)
    assert wal.stat().st_size > 0
    wal_before = wal.read_bytes()
    result = recover(config)
    assert "gate.db-wal" in result["moved"], result
    found = list(config.data_dir.glob("damaged-*/gate.db-wal"))
    assert len(found) == 1 and found[0].read_bytes() == wal_before, result


def test_the_doctor_reads_the_whole_database_and_warns_of_a_small_partition(
    gate_dir: Path, fs: SmallFs
) -> None:
    sound = check_database(load_config(gate_dir / "gate.toml"))
    assert sound.ok and "integrity ok" in sound.detail
    move_gate_data(gate_dir, fs.mount)
    small = check_database(load_config(gate_dir / "gate.toml"))
    assert not small.ok and "below 64 MiB" in small.detail and "df -h" in small.fix
    damage_header(fs.mount / "gate.db")
    damaged = check_database(load_config(gate_dir / "gate.toml"))
    assert not damaged.ok and "damaged" in damaged.detail
    assert "menwei gate recover" in damaged.fix


# --- a database deleted, renamed or replaced; one that is not a file ---------------------------


def wal_of(db: Path) -> Path:
    return db.with_name(db.name + "-wal")


@pytest.mark.parametrize("how", ["deleted", "renamed", "replaced"])
def test_a_database_gone_while_the_gate_runs_is_a_fault_and_its_wal_is_never_replayed(
    gate_dir: Path, resident: IssuedPass, how: str, caplog: pytest.LogCaptureFixture
) -> None:
    """The decisions since the rename live only in the WAL beside the old name: the running
    gate stops deciding at once, and neither it nor the next start makes a new gate.db."""
    db = gate_dir / "gate.db"
    caplog.set_level(logging.INFO, logger="menwei.gate")
    daemon = daemon_for(gate_dir)
    try:
        for _ in range(3):
            assert daemon.handle_scan(Scan(resident.qr, "in"), dict(SKIN_C)).reason == "ok"
        logged = daemon.store.last_seq()
        time.sleep(daemon.config.gpio.relay_pulse_s + 0.3)  # the pulse ends: locked again
        levels = relay_levels(daemon.hw.pins)
        assert levels[-1] is False
        if how == "deleted":
            db.unlink()
        elif how == "renamed":
            db.rename(gate_dir / "gate.db.bak")
        else:
            other = gate_dir / "other" / "gate.db"
            make_db(other, events=1)
            os.replace(other, db)  # another database under the name
        daemon._watch_storage()  # the loop's periodic check notices before any scan
        fault = daemon.store.health.fault
        assert fault is not None and fault.kind == "missing", fault
        d = daemon.handle_scan(Scan(resident.qr, "in"), dict(SKIN_C))
        assert (d.decision, d.reason) == ("deny", "storage_fault")
        assert relay_levels(daemon.hw.pins) == levels  # nothing opened after it
        assert daemon.status()["storage"]["kind"] == "missing"
        storage = daemon.guard_state()["health"]["storage"]
        assert storage["message"]["zh"].startswith("数据库文件丢失")
        assert "gate.db-wal" in storage["fix"]["en"]
        faults = [r for r in caplog.records if "STORAGE FAULT (missing)" in r.getMessage()]
        assert len(faults) == 1
    finally:
        daemon.close()
    if how == "replaced":
        assert inspect_database(db) is None  # the other file is left as it was
        return
    wal = wal_of(db)
    assert not db.exists() and wal.exists(), "SQLite keeps the WAL of a moved database"
    wal_before = wal.read_bytes()
    again = daemon_for(gate_dir)
    try:
        fault = again.store.health.fault
        assert fault is not None and fault.kind == "missing" and "gate.db-wal" in fault.error
        d = again.handle_scan(Scan(resident.qr, "in"), dict(SKIN_C))
        assert (d.decision, d.reason) == ("deny", "storage_fault")
    finally:
        again.close()
    assert not db.exists(), "the daemon never creates gate.db beside an orphaned WAL"
    assert wal.read_bytes() == wal_before
    if how == "renamed":  # the documented fix: put it back beside its WAL
        (gate_dir / "gate.db.bak").rename(db)
        back = daemon_for(gate_dir)
        try:
            assert back.store.health.fault is None
            assert back.store.last_seq() == logged
        finally:
            back.close()
        return
    with pytest.raises(StorageFault, match=r"gate\.db-wal"):  # nor does provisioning
        GateStore(db)
    assert wal.read_bytes() == wal_before and not db.exists()
    result = recover(load_config(gate_dir / "gate.toml"))
    assert "gate.db-wal" in result["moved"] and "gate.db" not in result["moved"]
    found = list(gate_dir.glob("damaged-*/gate.db-wal"))
    assert len(found) == 1 and found[0].read_bytes() == wal_before
    assert inspect_database(db) is None


def test_the_daemon_never_creates_a_missing_database_only_gate_init_does(
    site: Site, gate_dir: Path, resident: IssuedPass
) -> None:
    db = gate_dir / "gate.db"
    db.unlink()  # deleted while the gate was stopped
    daemon = daemon_for(gate_dir)
    try:
        fault = daemon.store.health.fault
        assert fault is not None and fault.kind == "missing" and not fault.transient
        d = daemon.handle_scan(Scan(resident.qr, "in"), dict(SKIN_C))
        assert (d.decision, d.reason) == ("deny", "storage_fault")
    finally:
        daemon.close()
    assert not db.exists()
    with pytest.raises(RecoveryError, match="no log beside it"):
        recover(load_config(gate_dir / "gate.toml"))
    provision(gate_dir, site.dir, "east", "in", simulated=True)  # the installer's choice
    assert inspect_database(db) is None
    daemon = daemon_for(gate_dir)
    try:
        assert daemon.handle_scan(Scan(resident.qr, "in"), dict(SKIN_C)).reason == "ok"
    finally:
        daemon.close()


def test_a_directory_named_gate_db_is_not_a_database_and_recover_moves_it_aside(
    gate_dir: Path,
) -> None:
    config = load_config(gate_dir / "gate.toml")
    db = config.db_path
    db.unlink()
    db.mkdir()
    fault = inspect_database(db)
    assert fault is not None and fault.kind == "corrupt" and "directory" in fault.error
    daemon = daemon_for(gate_dir)
    try:
        fault = daemon.store.health.fault
        assert fault is not None and fault.kind == "corrupt"
    finally:
        daemon.close()
    result = recover(config)
    assert result["moved"] == ["gate.db"]
    assert inspect_database(db) is None


def test_permission_denied_is_its_own_fault_with_the_chown_fix(tmp_path: Path) -> None:
    """A wrong owner or mode (the kernel's EACCES/EPERM), not a failing card."""
    db = tmp_path / "gate.db"
    for err in (errno.EACCES, errno.EPERM):
        fault = classify(PermissionError(err, os.strerror(err)), db)
        assert fault is not None and fault.kind == "permission" and fault.transient
        assert "chown menwei:menwei" in fault.advice.fix.en and "SD" not in str(fault)


def test_gate_run_with_a_damaged_trust_file_exits_once_with_the_fix_and_systemd_does_not_loop(
    site: Site, gate_dir: Path
) -> None:
    """trust.json emptied by an fsck: one clear line, exit 78, which the unit does not restart."""
    trust = gate_dir / "trust.json"
    trust.write_bytes(b"")
    proc = run_menwei(
        "gate", "run", "--config", str(gate_dir / "gate.toml"), "--broker", "none",
        "--until-eof", check=False, timeout=60,
    )  # fmt: skip
    assert proc.returncode == EXIT_NOT_PROVISIONED == 78, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in proc.stderr, proc.stderr
    assert "trust.json: damaged" in lines[0] and "menwei gate init" in lines[0]
    unit = (REPO / "systemd" / "menwei-gate.service").read_text(encoding="utf-8")
    assert f"RestartPreventExitStatus={EXIT_NOT_PROVISIONED}\n" in unit
    provision(gate_dir, site.dir, "east", "in", simulated=True)  # the fix it names
    assert trust.read_bytes() == (site.dir / "bundle" / "trust.json").read_bytes()
