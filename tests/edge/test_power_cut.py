"""Power cuts while the gate commits decisions: the database stays whole, and every relay
command has a committed row that survives.

The real GateDaemon (simulated camera-less scans, the MLX90614 driver on its simulated
bus, the recording GPIO) decides through the real GateStore, which opens its SQLite file
through tests/edge/powercut.py: a disk that loses what was not fsynced. At a random
write/sync the power goes; afterwards the disk holds what was synced plus a random part of
what was not (each 512-byte piece of each pending write kept or not). Then:
`PRAGMA integrity_check` is ok, every person the relay was pulsed for has a surviving
allow row, the store opens again and the numbering goes on without a gap.
"""

from __future__ import annotations

import contextlib
import random
import shutil
import sqlite3
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from drivers.gpio import FakePins
from edge.daemon import GateDaemon
from edge.decision import Scan
from edge.provision import provision
from edge.store import GateStore
from server.site import Site
from tests.edge.gates import daemon_for
from tests.edge.powercut import PowerCutDisk, install

RELAY = 17
PEOPLE = 8  # decisions per round: each resident enters once


@dataclass(frozen=True)
class Template:
    gate_dir: Path
    qrs: list[tuple[str, int]]  # (QR text, pass id)


@pytest.fixture(scope="module")
def template(tmp_path_factory: pytest.TempPathFactory) -> Template:
    root = tmp_path_factory.mktemp("powercut")
    with Site.init(root / "server", "test-site") as site:
        issued = [
            site.issue_pass(f"3-1-{301 + i}", f"住户{i}", room=f"3-1-{301 + i}")
            for i in range(PEOPLE)
        ]
        gate_dir = root / "gate"
        provision(gate_dir, site.dir, "east", "in", simulated=True)
    toml = gate_dir / "gate.toml"
    # A short pulse, waited out after each decision: every allowed person is one pulse. One
    # thermometer sample: no waiting between samples.
    text = toml.read_text()
    for section, extra in (("gpio", "relay_pulse_s = 0.02"), ("thermometer", "samples = 1")):
        head = f'[{section}]\nbackend = "simulated"\n'
        assert head in text, "gate.toml layout changed"
        text = text.replace(head, f"{head}{extra}\n")
    toml.write_text(text)
    return Template(gate_dir, [(p.qr, p.pass_id) for p in issued])


@pytest.fixture(scope="module")
def disk(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PowerCutDisk]:
    # Raises RuntimeError (a failed test, not a skip) where the tool cannot work.
    before = set(Path.cwd().iterdir())
    shim = install(PowerCutDisk(tmp_path_factory.mktemp("rounds")))
    assert shim.disk is not None
    yield shim.disk
    shim.uninstall()
    # Once, files named by garbage pointers ("\x02-shm") appeared in the working directory: a
    # path the shim handed SQLite's unix VFS was not the one SQLite asked for.
    stray = sorted(p.name for p in set(Path.cwd().iterdir()) - before if p.name.endswith("shm"))
    assert not stray, f"the power-cut VFS left files in {Path.cwd()}: {stray}"


def pulses(pins: FakePins) -> int:
    return sum(1 for _t, pin, value in pins.history if pin == RELAY and value)


@dataclass(frozen=True)
class Round:
    gate_dir: Path
    pulsed: list[int]  # pass ids the relay was released for, in order
    decided: int  # scans decided with a working store (not refused as storage_fault)
    cut: bool


def run_round(template: Template, disk: PowerCutDisk, name: str, cut_at: int | None) -> Round:
    """Copy the provisioned gate, arm the cut, let the daemon decide PEOPLE entries, close."""
    gate_dir = Path(disk.root) / name
    shutil.copytree(template.gate_dir, gate_dir)
    disk.arm(cut_at)
    pulsed: list[int] = []
    decided = 0
    daemon: GateDaemon | None = None
    with contextlib.suppress(Exception):  # the power went while it opened its store
        daemon = daemon_for(gate_dir)
    if daemon is not None:
        pins = daemon.hw.pins
        assert isinstance(pins, FakePins)
        for qr, pass_id in template.qrs:
            before = pulses(pins)
            try:
                decision = daemon.handle_scan(Scan(qr, "in"), {"forehead_c": 34.6})
                # The power gone, the store fails: the daemon refuses (storage_fault).
                decided += decision.reason != "storage_fault"
            except Exception:  # whatever the daemon does without storage, it must not pulse
                pass
            if pulses(pins) > before:
                pulsed.append(pass_id)
            daemon.hw.relay.safe()  # the pulse is over before the next person
        with contextlib.suppress(Exception):
            daemon.close()
        daemon.store.close()  # idempotent; a close that failed above leaves it open
    return Round(gate_dir, pulsed, decided, disk.cut)


def check_after_cut(r: Round) -> list[int]:
    """The invariants; returns the pass ids of the allow rows that survived."""
    db = r.gate_dir / "gate.db"
    with contextlib.closing(sqlite3.connect(f"file:{db}?vfs=unix", uri=True)) as conn:
        assert conn.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
        allowed = [
            int(row[0])
            for row in conn.execute(
                "SELECT json_extract(body, '$.pass_id') FROM events"
                " WHERE kind = 'decision' AND decision = 'allow' ORDER BY seq"
            )
        ]
    missing = [p for p in r.pulsed if p not in allowed]
    assert not missing, f"relay pulsed for {missing} without a surviving allow row"
    with GateStore(db) as store:  # the real store opens what the cut left, and goes on
        logged = [item.event.seq for item in store.log()]
        assert logged == list(range(1, len(logged) + 1))
        assert store.backlog() == len(logged)  # offline: nothing was acknowledged
    return allowed


def calibrate(template: Template, disk: PowerCutDisk) -> int:
    """Operations of a whole round without a cut: where cuts can fall."""
    r = run_round(template, disk, "calibration", None)
    ops = disk.ops
    disk.restore(random.Random(0), 1.0)
    assert r.pulsed == [p for _qr, p in template.qrs], "every resident should be let in"
    assert check_after_cut(r) == r.pulsed
    return ops


def power_cuts(template: Template, disk: PowerCutDisk, rounds: int, seed: int) -> None:
    ops = calibrate(template, disk)
    rng = random.Random(seed)
    cut_before_end = survived = 0
    for i in range(rounds):
        r = run_round(template, disk, f"cut-{i}", rng.randint(1, ops))
        keep = rng.choice((0.0, 0.5, rng.random()))
        disk.restore(rng, keep)
        allowed = check_after_cut(r)
        cut_before_end += r.cut and r.decided < PEOPLE
        survived += len(allowed)
    assert cut_before_end >= rounds // 2, "most cuts should fall while people are decided"
    assert survived > 0


def test_unsynced_writes_are_lost_by_this_disk(disk: PowerCutDisk) -> None:
    """The tool has teeth: without fsync (synchronous=OFF) committed rows do not survive."""
    db = Path(disk.root) / "teeth.db"
    disk.arm(None)
    with contextlib.closing(sqlite3.connect(db)) as conn:
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=FULL")
        conn.execute("CREATE TABLE t (x)")
        conn.commit()
        conn.execute("PRAGMA synchronous=OFF")
        for i in range(10):
            conn.execute("INSERT INTO t VALUES (?)", [i])
            conn.commit()
        disk.arm(1)  # the power goes before anything else reaches the disk
    disk.restore(random.Random(0), 0.0)
    with contextlib.closing(sqlite3.connect(f"file:{db}?vfs=unix", uri=True)) as conn:
        assert conn.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
        assert conn.execute("SELECT COUNT(*) FROM t").fetchone() == (0,)


def test_power_cuts_while_deciding_keep_every_opening_on_record(
    template: Template, disk: PowerCutDisk
) -> None:
    power_cuts(template, disk, rounds=30, seed=15)


@pytest.mark.slow
def test_many_power_cuts_while_deciding(template: Template, disk: PowerCutDisk) -> None:
    power_cuts(template, disk, rounds=1000, seed=1515)
