"""`menwei gate recover`: a new database for a gate whose database is damaged.

A damaged `gate.db` (a failed integrity check, a zero-length or unreadable file, a
directory), or one that is gone while its WAL or journal is left beside its name,
is never replaced silently: the daemon refuses to decide on it (edge/storage_fault.py).
With the gate stopped, recovery moves the database files aside, untouched, into
`DATA_DIR/damaged-YYYYmmdd-HHMMSS/` (for a restore or forensics) and creates a new
database: a new epoch, so its numbering restarts without clashing with the seqs the
collector holds (the collector raises `gate_reset`). What can still be read is carried
over when it can be trusted: the signed documents (verified again from the trust
file, whose root their chains move forward: edge.trust), the clock floor (it only
moves forward) and the gate's state (who is out).
Events not yet sent stay in the moved file; the result says how many. The new
database's first event, `database_recovered`, tells the collector what was lost.

The running daemon holds a shared lock on its data directory (`hold_data_dir`);
recovery takes it exclusively, so it never moves a database from under a running gate.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import shutil
import sqlite3
import tempfile
import time
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from edge.clock import GateClock
from edge.config import GateConfig
from edge.decision import state_from_json
from edge.knowledge import Knowledge
from edge.provision import DOC_FILES, load_knowledge, trust_anchor
from edge.recording import simple_event
from edge.storage_fault import StorageFault, inspect_database, missing_database, orphan_logs
from edge.store import GateStore
from edge.trust import receive, save_received
from protocol.errors import ProtocolError

DB_SUFFIXES = ("", "-wal", "-shm", "-journal")
"""The database and the files SQLite keeps beside it: they move together."""


class RecoveryError(ProtocolError):
    """The database cannot or need not be recovered (the gate runs, it is sound, ...)."""


class DataDirLock:
    """A flock on the data directory; `close()` releases it. Idempotent."""

    def __init__(self, fd: int | None) -> None:
        self._fd = fd

    def close(self) -> None:
        fd, self._fd = self._fd, None
        if fd is not None:
            os.close(fd)


def hold_data_dir(data_dir: Path) -> DataDirLock:
    """The daemon's shared lock on its data directory, held while it runs. Waits only while a
    recovery runs (seconds). A directory that cannot be opened is no lock (the store reports
    the storage fault)."""
    try:
        fd = os.open(data_dir, os.O_RDONLY | os.O_DIRECTORY)
    except OSError:
        return DataDirLock(None)
    fcntl.flock(fd, fcntl.LOCK_SH)
    return DataDirLock(fd)


def _exclusive(data_dir: Path) -> DataDirLock:
    try:
        fd = os.open(data_dir, os.O_RDONLY | os.O_DIRECTORY)
    except OSError as exc:
        raise RecoveryError(
            f"{data_dir}: cannot open the data directory ({exc.strerror})"
        ) from None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise RecoveryError(
            f"a gate daemon is running on {data_dir}: stop it first "
            "(sudo systemctl stop menwei-gate)"
        ) from None
    return DataDirLock(fd)


def recover(config: GateConfig, *, wall: float | None = None) -> dict[str, Any]:
    """Move a damaged database aside and start a new one (see the module docstring).

    Returns {"database", "damage", "moved_to", "moved", "previous": {"epoch", "last_seq",
    "acked_seq", "unsent"}, "kept": {"documents", "clock_floor", "state"}, "not_kept",
    "epoch", "next"}; a value the damaged file would not give is null. Raises RecoveryError
    when the gate runs, the database is sound, absent with no log beside it, or its storage
    (not the file) is at fault: that clears by itself."""
    path = config.db_path
    lock = _exclusive(config.data_dir)
    try:
        if not path.exists():
            if not orphan_logs(path):
                raise RecoveryError(
                    f"{path}: no database and no log beside it: nothing to recover; put a "
                    "moved database back, or provision the gate again (`menwei gate init`)"
                )
            fault: StorageFault | None = missing_database(path)
        else:
            fault = inspect_database(path, full=True)
        if fault is None:
            raise RecoveryError(f"{path}: integrity_check ok: the database is sound, kept as is")
        if fault.transient:
            raise RecoveryError(f"the file is not damaged, its storage is at fault: {fault}")
        stamp = datetime.fromtimestamp(time.time() if wall is None else wall, UTC)
        aside = config.data_dir / f"damaged-{stamp:%Y%m%d-%H%M%S}"
        aside.mkdir()
        moved = []
        for suffix in DB_SUFFIXES:
            src = path.with_name(path.name + suffix)
            if src.exists():
                os.replace(src, aside / src.name)
                moved.append(src.name)
        old = _salvage(aside / path.name)
        with GateStore(path) as store:
            kept, not_kept = _carry_over(config, store, old)
            _log_recovery(config, store, old, aside, fault)
            epoch = store.epoch
    finally:
        lock.close()
    return {
        "database": str(path),
        "damage": fault.error,
        "moved_to": str(aside),
        "moved": moved,
        "previous": {k: old.get(k) for k in ("epoch", "last_seq", "acked_seq", "unsent")},
        "kept": kept,
        "not_kept": not_kept,
        "epoch": epoch,
        "next": "start the gate (sudo systemctl start menwei-gate); documents not kept arrive "
        "from the broker, or run `menwei gate init` again from the server's bundle",
    }


def _salvage(db: Path) -> dict[str, Any]:
    """Whatever the damaged database still answers, each item on its own (None otherwise)."""
    found: dict[str, Any] = {}
    queries = {
        "epoch": "SELECT value FROM meta WHERE key = 'epoch'",
        "acked_seq": "SELECT CAST(value AS INTEGER) FROM meta WHERE key = 'acked_seq'",
        "clock_floor": "SELECT CAST(value AS REAL) FROM meta WHERE key = 'clock_floor'",
        "state": "SELECT value FROM meta WHERE key = 'state'",
        "last_seq": "SELECT MAX(seq) FROM events",
        "unsent": "SELECT COUNT(*) FROM outbox",
    }
    # Read a copy: even a read-only open lets SQLite delete or rewrite the WAL beside a
    # database (it discards the WAL of a zero-length file), and the set-aside files are the
    # only copy of what the gate decided.
    with tempfile.TemporaryDirectory(prefix="menwei-salvage-") as scratch:
        copy = Path(scratch) / db.name
        for suffix in ("", "-wal", "-shm"):
            original = db.with_name(db.name + suffix)
            if original.is_file():
                shutil.copyfile(original, copy.with_name(copy.name + suffix))
        return _read_salvage(copy, queries, found)


def _read_salvage(db: Path, queries: dict[str, str], found: dict[str, Any]) -> dict[str, Any]:
    try:
        conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=5)
    except sqlite3.Error:
        return {"documents": []}
    with contextlib.closing(conn):
        for key, sql in queries.items():
            try:
                row = conn.execute(sql).fetchone()
            except sqlite3.Error:
                continue
            found[key] = None if row is None else row[0]
        try:
            found["documents"] = [
                (str(kind), bytes(raw))
                for kind, raw in conn.execute("SELECT kind, raw FROM documents")
            ]
        except sqlite3.Error:
            found["documents"] = []
    return found


def _carry_over(
    config: GateConfig, store: GateStore, old: dict[str, Any]
) -> tuple[dict[str, Any], dict[str, str]]:
    """Store what can be trusted from the damaged database; returns (kept, not kept: why)."""
    site, anchor = trust_anchor(config)
    know = Knowledge(site, dict(anchor.keys), root=anchor)
    held = dict(old.get("documents") or [])
    documents: dict[str, int] = {}
    not_kept: dict[str, str] = {}
    for kind in DOC_FILES:  # in the order a gate applies them
        raw = held.get(kind)
        if raw is None:
            continue
        try:
            got = receive(know, kind, raw)
        except ProtocolError as exc:
            not_kept[kind] = str(exc)
            continue
        if got.changed:
            save_received(store, got, raw, datetime.now(UTC))
        know = got.know
        if got.applied:
            documents[kind] = got.doc.version
    floor = old.get("clock_floor")
    if isinstance(floor, float) and floor > 0:
        store.save_clock_floor(floor)
    state_kept = False
    raw_state = old.get("state")
    if isinstance(raw_state, str):
        try:
            state = json.loads(raw_state)
            state_from_json(state)  # only a state the gate can read is kept
            store.save_state(dict(state))
            state_kept = True
        except (ValueError, TypeError, KeyError, AttributeError) as exc:
            not_kept["state"] = f"unreadable: {exc}"
    kept = {
        "documents": documents,
        "clock_floor": datetime.fromtimestamp(floor, UTC).isoformat(timespec="seconds")
        if isinstance(floor, float) and floor > 0
        else None,
        "state": state_kept,
    }
    return kept, not_kept


def _log_recovery(
    config: GateConfig, store: GateStore, old: dict[str, Any], aside: Path, fault: StorageFault
) -> None:
    know = load_knowledge(config, store)
    now = GateClock.configured(config.clock, store.clock_floor()).now()
    detail = {
        "previous_epoch": old.get("epoch"),
        "previous_last_seq": old.get("last_seq"),
        "previous_acked_seq": old.get("acked_seq"),
        "unsent": old.get("unsent"),
        "moved_to": aside.name,
        "damage": fault.error[:300],
    }
    event = simple_event(
        "device",
        "database_recovered",
        site=config.gate.site,
        gate=config.gate.id,
        now=now,
        know=know,
        detail=detail,
    )
    store.append(lambda seq: replace(event, seq=seq), state=None, clock_floor=now.utc.timestamp())
