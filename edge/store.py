"""The gate's local store: the decision log, its outbox, state and provisioned documents.

The log is the truth; the network is best effort (DESIGN.md, principle 3). A
decision, its outbox entry, the gate state after it and the clock floor are
written in one SQLite transaction with `synchronous=FULL` (WAL) before the
relay moves, so a power cut loses nothing that was acted on. The outbox holds
the sequence numbers the collector has not acknowledged; an acknowledgement
deletes them. paho's in-memory queue is never relied on.

Seqs are numbered per epoch (the database's random id, carried by every event). The
`seq` column is the event's position in this database's log, which never goes back;
the seq an event carries is its position minus the epoch's base (meta `epoch_base`, 0
for a database's first epoch). A gate that learns it lost committed history (a damaged
WAL, see `start_new_epoch`) moves to a new epoch whose base is its last confirmed
position, so its unconfirmed events are numbered 1, 2, ... again, never with numbers the
collector holds for other events.

Storage faults (a full, read-only or failing SD card, a damaged file) leave every
method as a `StorageFault` (edge/storage_fault.py), recorded in `health` for the
daemon to show; the daemon's store survives them (`resilient`) and reopens itself
(`probe`). A file that exists but is empty or not a database is refused, never
replaced: a new database is built beside its name and renamed into place, so an
empty `gate.db` is always damage, never a creation cut short.
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import secrets
import sqlite3
import threading
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, replace
from datetime import datetime
from pathlib import Path
from typing import Any, Concatenate, ParamSpec, TypeVar

from sqlite_utils import Database
from sqlite_utils.migrations import Migrations

from edge.storage_fault import (
    MIN_FREE_BYTES,
    StorageFault,
    StorageHealth,
    check_header,
    classify,
    damage,
    free_bytes,
    missing_database,
    orphan_logs,
)
from protocol.events import Event
from protocol.files import create_private

P = ParamSpec("P")
R = TypeVar("R")

migrations = Migrations("menwei-gate")


@migrations()
def m001_initial(db: Database) -> None:
    db.execute(
        """CREATE TABLE events (
            seq INTEGER PRIMARY KEY,
            uuid TEXT NOT NULL UNIQUE,
            at TEXT NOT NULL,
            kind TEXT NOT NULL,
            decision TEXT,
            reason TEXT NOT NULL,
            body TEXT NOT NULL
        )"""
    )
    db.execute("CREATE TABLE outbox (seq INTEGER PRIMARY KEY REFERENCES events(seq))")
    db.execute("CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)")
    db.execute(
        """CREATE TABLE documents (
            kind TEXT PRIMARY KEY, version INTEGER NOT NULL, received_at TEXT NOT NULL,
            raw BLOB NOT NULL
        )"""
    )


@migrations()
def m002_epoch(db: Database) -> None:
    # A database's random id: a replaced database numbers from 1 again under a new epoch.
    # One that already logged events before epochs existed keeps the empty (legacy) epoch.
    has_events = db.execute("SELECT COUNT(*) FROM events").fetchone()[0] > 0
    db.execute(
        "INSERT OR REPLACE INTO meta (key, value) VALUES ('epoch', ?)",
        ["" if has_events else secrets.token_hex(8)],
    )


@dataclass(frozen=True)
class EpochMove:
    """What `start_new_epoch` did: the numbering this gate left and the one it goes on with."""

    lost_epoch: str
    epoch: str
    confirmed_seq: int
    """The last seq of `lost_epoch` the collector had acknowledged to this gate: every event
    up to it is held by the collector exactly as the gate logged it."""
    last_seq: int
    """The last seq of `lost_epoch` this gate still held."""
    collector_seq: int
    """What the collector acknowledges for `lost_epoch` (the evidence of the loss)."""
    moved: int
    """Unconfirmed events renumbered 1..moved in `epoch` (each keeps its uuid and carries
    `detail.moved_from`: the epoch and seq it had)."""

    def detail(self) -> dict[str, Any]:
        return {
            "epoch": self.lost_epoch,
            "new_epoch": self.epoch,
            "confirmed_seq": self.confirmed_seq,
            "last_seq": self.last_seq,
            "collector_seq": self.collector_seq,
            "moved": self.moved,
        }


@dataclass(frozen=True)
class LoggedEvent:
    event: Event
    acked: bool


def _guarded(
    method: Callable[Concatenate[GateStore, P], R],
) -> Callable[Concatenate[GateStore, P], R]:
    """A store method whose storage failures become a StorageFault, recorded in `health`."""

    @functools.wraps(method)
    def guarded(self: GateStore, /, *args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return method(self, *args, **kwargs)
        except (sqlite3.Error, OSError) as exc:
            fault = classify(exc, self.path)
            if fault is None:
                raise
            self.health.failed(fault)
            if fault is exc:
                raise
            raise fault from exc

    return guarded


class GateStore:
    """Thread-safe: the gate loop appends, the sync thread reads and acknowledges.

    Opens the database at `path`, creating it when absent if `create` (provisioning, tools;
    never the daemon: a missing database is a "missing" fault there). A WAL or journal
    beside an absent database is always refused ("missing"), never replayed into a new one.
    While open, the file must stay the one opened: deleted, renamed or replaced
    (`check_file`, before every append) is a "missing" fault. `verify`: run `PRAGMA
    quick_check` at opening (the daemon at start). `resilient` (the daemon): a fault at
    opening is kept in `health` instead of raised; every call then raises it until
    `probe()` opens the database. Otherwise a fault raises StorageFault (an OSError). A
    damaged or missing database, once seen, is refused for the rest of this object's life:
    nothing more is written to it."""

    def __init__(
        self, path: Path, *, verify: bool = False, resilient: bool = False, create: bool = True
    ) -> None:
        self.path = path
        self._create = create
        self._identity: tuple[int, int] | None = None  # (st_dev, st_ino) of the open file
        self.health = StorageHealth()
        self._verify = verify
        self._lock = threading.RLock()
        self._closed = False
        self._db: Database | None = None
        self.epoch = ""
        try:
            self._open()
        except StorageFault as fault:
            if not resilient:
                raise
            self.health.failed(fault)

    @property
    def db(self) -> Database:
        """The open database; raises StorageFault while it cannot be used."""
        if self._closed:
            raise sqlite3.ProgrammingError("the gate store is closed")
        fault = self.health.fault
        if fault is not None and not fault.transient:
            raise fault.again()
        if self._db is None:
            if fault is not None:
                raise fault.again()
            raise StorageFault("io", "the database is not open", self.path)
        return self._db

    @_guarded
    def _open(self) -> None:
        with self._lock:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            check_header(self.path)
            if not self.path.exists():
                if not self._create or orphan_logs(self.path):
                    raise missing_database(self.path)
                _create(self.path)
            conn = sqlite3.connect(str(self.path), check_same_thread=False, timeout=30)
            try:
                st = os.stat(self.path)
                identity = (st.st_dev, st.st_ino)
                db = Database(conn)
                db.execute("PRAGMA journal_mode=WAL")
                db.execute("PRAGMA synchronous=FULL")
                if self._verify:
                    bad = damage(
                        db.execute("PRAGMA quick_check(10)").fetchall(), self.path, "quick_check"
                    )
                    if bad is not None:
                        raise bad
                migrations.apply(db)
                row = db.execute("SELECT value FROM meta WHERE key = 'epoch'").fetchone()
            except BaseException:
                conn.close()
                raise
            self._db = db
            self._identity = identity
            self.epoch = "" if row is None else str(row[0])

    @_guarded
    def check_file(self) -> None:
        """Is `path` still the file this store opened? Deleted or renamed (its decisions would
        go to a file nobody finds, and a new database at the path would be handed the orphaned
        WAL) or replaced by another file: a "missing" fault, recorded in `health`. Stats the
        path only (no descriptor of SQLite's file is opened or closed beside it, which would
        drop its POSIX locks); SQLite itself then keeps the WAL when the connection closes."""
        with self._lock:
            if self._identity is None:
                return
            try:
                st = os.stat(self.path)
            except FileNotFoundError:
                raise StorageFault(
                    "missing",
                    "the database file was deleted or renamed while the gate ran: nothing more "
                    "is written to it (the WAL beside its name is kept)",
                    self.path,
                ) from None
            if (st.st_dev, st.st_ino) != self._identity:
                raise StorageFault(
                    "missing",
                    "the database file was replaced by another file while the gate ran: "
                    "nothing more is written to either",
                    self.path,
                )

    @_guarded
    def probe(self, at: str) -> None:
        """Prove the database writable again while a fault lasts (the daemon retries this):
        reopen it when it is not open or the fault may have left the connection unusable
        (read-only, I/O), then commit one small write. Clears `health` on success; raises
        StorageFault otherwise. A full partition must have MIN_FREE_BYTES free first; a
        damaged database is never probed (it needs `menwei gate recover`)."""
        fault = self.health.fault
        if fault is not None and not fault.transient:
            raise fault.again()
        if fault is not None and fault.kind == "full":
            free = free_bytes(self.path.parent)
            if free is not None and free < MIN_FREE_BYTES:
                raise StorageFault(
                    "full", f"only {free} bytes free on the data partition", self.path
                )
        with self._lock:
            if self._db is None or (
                fault is not None and fault.kind in ("readonly", "io", "permission")
            ):
                self._close_connection()
                self._open()
            with self.db.atomic():
                self._set_meta("storage_probe", at)
        self.health.cleared()

    def _close_connection(self) -> None:
        db, self._db = self._db, None
        if db is not None:
            with contextlib.suppress(sqlite3.Error):  # a failing card: dropped either way
                db.close()

    def close(self) -> None:
        with self._lock:
            if not self._closed:
                self._closed = True
                self._close_connection()

    def __enter__(self) -> GateStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- the log and its outbox -------------------------------------------------------

    @_guarded
    def append(
        self, build: Callable[[int], Event], *, state: dict[str, Any] | None, clock_floor: float
    ) -> Event:
        """Log one event (built for the next seq) with its outbox entry, state and clock floor,
        atomically, after `check_file`. Returns the stored event."""
        self.check_file()
        with self._lock, self.db.atomic():
            event = self._insert(build)
            if state is not None:
                self._set_meta("state", json.dumps(state))
            if clock_floor > self.clock_floor():  # the floor never goes back (save_clock_floor)
                self._set_meta("clock_floor", repr(clock_floor))
        self.health.cleared()  # a decision committed: the storage works
        return event

    def _insert(self, build: Callable[[int], Event]) -> Event:
        """The next event and its outbox entry (inside the caller's transaction)."""
        position = self.db.execute("SELECT COALESCE(MAX(seq), 0) FROM events").fetchone()[0] + 1
        event = replace(build(position - self._base()), epoch=self.epoch)
        self.db.execute(
            "INSERT INTO events (seq, uuid, at, kind, decision, reason, body)"
            " VALUES (?, ?, ?, ?, ?, ?, ?)",
            [
                position,
                event.uuid,
                event.at,
                event.kind,
                event.decision,
                event.reason,
                json.dumps(event.to_json(), ensure_ascii=False),
            ],
        )
        self.db.execute("INSERT INTO outbox (seq) VALUES (?)", [position])
        return event

    @_guarded
    def start_new_epoch(
        self, collector_seq: int, alert: Callable[[EpochMove, int], Event] | None = None
    ) -> tuple[EpochMove, Event | None]:
        """The collector holds events of this epoch that this database lost (committed
        transactions gone with a damaged WAL): its numbers past the last confirmed seq are
        no longer this gate's to use. In one transaction: a new random epoch begins; every
        event after the last acknowledged one is renumbered 1, 2, ... in it (in log order,
        keeping its uuid, with `detail.moved_from`) and queued again; then the event
        `alert(move, seq)` builds (the gate_history_lost alert) is logged after them.
        Returns the move and the logged alert event."""
        with self._lock, self.db.atomic():
            base, confirmed = self._base(), self.acked_seq()
            lost, epoch = self.epoch, secrets.token_hex(8)
            new_base = base + confirmed
            last = self.last_seq()
            self.db.execute(
                "UPDATE events SET body = json_set(body, '$.epoch', ?, '$.seq', seq - ?,"
                " '$.detail.moved_from', json_object('epoch', ?, 'seq', seq - ?))"
                " WHERE seq > ?",
                [epoch, new_base, lost, base, new_base],
            )
            self.db.execute(
                "INSERT OR IGNORE INTO outbox (seq) SELECT seq FROM events WHERE seq > ?",
                [new_base],
            )
            self._set_meta("epoch", epoch)
            self._set_meta("epoch_base", str(new_base))
            self._set_meta("acked_seq", "0")
            self.epoch = epoch
            move = EpochMove(lost, epoch, confirmed, last, collector_seq, last - confirmed)
            event = None if alert is None else self._insert(lambda seq: alert(move, seq))
        return move, event

    @_guarded
    def purge(self, before: str) -> int:
        """Delete acknowledged events logged before `before` (ISO UTC). Never an event still in
        the outbox, and never the newest event (its seq is where numbering continues)."""
        with self._lock, self.db.atomic():
            cur = self.db.execute(
                "DELETE FROM events WHERE at < ? AND seq NOT IN (SELECT seq FROM outbox)"
                " AND seq < (SELECT MAX(seq) FROM events)",
                [before],
            )
            deleted = cur.rowcount
        if deleted:
            with self._lock:
                self.db.execute("PRAGMA incremental_vacuum")
        return int(deleted)

    @_guarded
    def unacked(self, after_seq: int, limit: int) -> list[Event]:
        """Up to `limit` queued events of the current epoch after `after_seq`, in order."""
        with self._lock:
            rows = self.db.execute(
                "SELECT e.body FROM outbox o JOIN events e ON e.seq = o.seq"
                " WHERE o.seq > ? ORDER BY o.seq LIMIT ?",
                [after_seq + self._base(), limit],
            ).fetchall()
        return [Event.from_json(json.loads(r[0])) for r in rows]

    @_guarded
    def mark_acked(self, acked_seq: int) -> int:
        """Record the collector's acknowledgement; returns how many outbox entries it cleared."""
        with self._lock, self.db.atomic():
            cur = self.db.execute("DELETE FROM outbox WHERE seq <= ?", [acked_seq + self._base()])
            if acked_seq > self.acked_seq():
                self._set_meta("acked_seq", str(acked_seq))
            return cur.rowcount

    @_guarded
    def requeue_after(self, acked_seq: int) -> int:
        """The collector acknowledges less than it did before (its store was restored from a
        backup): put every logged event after `acked_seq` back into the outbox, so it is sent
        again. Returns how many were queued again."""
        with self._lock, self.db.atomic():
            cur = self.db.execute(
                "INSERT OR IGNORE INTO outbox (seq) SELECT seq FROM events WHERE seq > ?",
                [acked_seq + self._base()],
            )
            self._set_meta("acked_seq", str(acked_seq))
            return int(cur.rowcount)

    @_guarded
    def acked_seq(self) -> int:
        """The collector's acknowledgement in the current epoch."""
        return int(self._get_meta("acked_seq") or 0)

    @_guarded
    def last_seq(self) -> int:
        """The seq of the newest event in the current epoch (0 when it has none yet)."""
        with self._lock:
            top = int(self.db.execute("SELECT COALESCE(MAX(seq), 0) FROM events").fetchone()[0])
            return max(0, top - self._base())

    @_guarded
    def uuid_at(self, seq: int) -> str | None:
        """The uuid of the current epoch's event `seq`, None if this log does not hold it."""
        found = self._column_at(seq, "uuid")
        return None if found is None else str(found)

    @_guarded
    def event_at(self, seq: int) -> Event | None:
        """The current epoch's event `seq` (acknowledged or not), None if this log does not
        hold it (never logged, or purged by retention)."""
        body = self._column_at(seq, "body")
        return None if body is None else Event.from_json(json.loads(body))

    def _column_at(self, seq: int, column: str) -> Any:
        """`column` (uuid or body) of the current epoch's event `seq`, None if not held."""
        if seq < 1:
            return None
        with self._lock:
            row = self.db.execute(
                f"SELECT {column} FROM events WHERE seq = ?",  # column: uuid or body, ours
                [seq + self._base()],
            ).fetchone()
        return None if row is None else row[0]

    def _base(self) -> int:
        """Positions in the log before the current epoch's seq 1."""
        return int(self._get_meta("epoch_base") or 0)

    @_guarded
    def backlog(self) -> int:
        with self._lock:
            return int(self.db.execute("SELECT COUNT(*) FROM outbox").fetchone()[0])

    def log(self) -> Iterator[LoggedEvent]:
        for body, acked in self._log_rows():
            yield LoggedEvent(Event.from_json(json.loads(body)), bool(acked))

    @_guarded
    def _log_rows(self) -> list[tuple[str, int]]:
        with self._lock:
            rows = self.db.execute(
                "SELECT e.body, o.seq IS NULL FROM events e LEFT JOIN outbox o ON o.seq = e.seq"
                " ORDER BY e.seq"
            ).fetchall()
        return [(str(body), int(acked)) for body, acked in rows]

    # --- state, clock and documents ----------------------------------------------------

    @_guarded
    def state(self) -> dict[str, Any] | None:
        raw = self._get_meta("state")
        return None if raw is None else dict(json.loads(raw))

    @_guarded
    def save_state(self, state: dict[str, Any]) -> None:
        with self._lock, self.db.atomic():
            self._set_meta("state", json.dumps(state))

    @_guarded
    def learnt_keys(self) -> list[dict[str, Any]]:
        """Trust keys introduced by the last accepted config (beyond the provisioned anchor)."""
        raw = self._get_meta("learnt_keys")
        return [] if raw is None else list(json.loads(raw))

    @_guarded
    def clock_floor(self) -> float:
        return float(self._get_meta("clock_floor") or 0.0)

    @_guarded
    def save_clock_floor(self, floor: float) -> None:
        with self._lock, self.db.atomic():
            if floor > self.clock_floor():
                self._set_meta("clock_floor", repr(floor))

    @_guarded
    def reset_clock_floor(self, floor: float) -> float:
        """An installer's correction when a wrong future time was persisted (the gate would
        distrust its clock until real time caught up). Returns the floor it replaced."""
        with self._lock, self.db.atomic():
            previous = self.clock_floor()
            self._set_meta("clock_floor", repr(floor))
        return previous

    @_guarded
    def save_document(
        self,
        kind: str,
        version: int,
        received_at: str,
        raw: bytes | None,
        learnt_keys: list[dict[str, Any]] | None = None,
        *,
        root: str | None = None,
        withdrawn: Mapping[str, int] | None = None,
    ) -> None:
        """Store a document (`raw` None: only the rest), in one transaction with what came
        with it: the gate's new trust root (edge.trust, JSON), the kinds its root withdrew
        (kind -> the oldest root their next document may be signed under: their rows go),
        and for a config of a server before trust roots the keys it names."""
        with self._lock, self.db.atomic():
            if root is not None:
                self._set_meta("trust_root", root)
            if withdrawn:
                floors = {**self._floors(), **withdrawn}
                self._set_meta("document_floors", json.dumps(floors, sort_keys=True))
                for gone in withdrawn:
                    self.db.execute("DELETE FROM documents WHERE kind = ?", [gone])
            if learnt_keys is not None:
                self._set_meta("learnt_keys", json.dumps(learnt_keys))
            if raw is not None:
                self.db.execute(
                    "INSERT OR REPLACE INTO documents (kind, version, received_at, raw)"
                    " VALUES (?, ?, ?, ?)",
                    [kind, version, received_at, raw],
                )

    @_guarded
    def save_trust_root(self, root: str) -> None:
        """The gate's trust root (JSON), set by provisioning (edge.provision)."""
        with self._lock, self.db.atomic():
            self._set_meta("trust_root", root)

    @_guarded
    def reset_trust(self, root: str) -> None:
        """Start again from trust root `root` (JSON): the documents held, their floors and the
        keys learnt before trust roots go (`menwei gate init --reset-trust`)."""
        with self._lock, self.db.atomic():
            self.db.execute("DELETE FROM documents")
            self.db.execute(
                "DELETE FROM meta WHERE key IN ('document_floors', 'learnt_keys', 'trust_root')"
            )
            self._set_meta("trust_root", root)

    @_guarded
    def trust_root(self) -> str | None:
        """The trust root the gate reached (edge.trust, JSON), None before its first."""
        return self._get_meta("trust_root")

    @_guarded
    def document_floors(self) -> dict[str, int]:
        """kind -> the oldest root the next document of that kind may be signed under."""
        return self._floors()

    def _floors(self) -> dict[str, int]:
        raw = self._get_meta("document_floors")
        try:
            floors = json.loads(raw) if raw else {}
            return {str(k): int(v) for k, v in floors.items()}
        except (ValueError, TypeError, AttributeError):
            return {}

    @_guarded
    def document(self, kind: str) -> bytes | None:
        with self._lock:
            row = self.db.execute("SELECT raw FROM documents WHERE kind = ?", [kind]).fetchone()
        return None if row is None else bytes(row[0])

    @_guarded
    def document_received_at(self, kind: str) -> datetime | None:
        """When the held `kind` document arrived (the gate's clock, UTC), None if unknown."""
        with self._lock:
            row = self.db.execute(
                "SELECT received_at FROM documents WHERE kind = ?", [kind]
            ).fetchone()
        try:
            t = datetime.fromisoformat(str(row[0])) if row else None
        except ValueError:
            return None
        return t if t is not None and t.tzinfo is not None else None

    def _get_meta(self, key: str) -> str | None:
        with self._lock:
            row = self.db.execute("SELECT value FROM meta WHERE key = ?", [key]).fetchone()
        return None if row is None else str(row[0])

    def _set_meta(self, key: str, value: str) -> None:
        self.db.execute("INSERT OR REPLACE INTO meta (key, value) VALUES (?, ?)", [key, value])


def _create(path: Path) -> None:
    """Build a new, empty database beside `path` and rename it into place (then fsync the
    directory), so that a `gate.db` on disk is always a complete database."""
    tmp = path.with_name(path.name + ".new")
    for leftover in (tmp, tmp.with_name(tmp.name + "-journal")):
        leftover.unlink(missing_ok=True)
    create_private(tmp)  # 0600: SQLite gives its -wal and -shm files the database's mode
    conn = sqlite3.connect(str(tmp))
    try:
        db = Database(conn)
        # Takes effect on a new file only: freed pages can then be returned after a purge.
        db.execute("PRAGMA auto_vacuum=INCREMENTAL")
        migrations.apply(db)
    finally:
        conn.close()
    fd = os.open(tmp, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)
    fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
