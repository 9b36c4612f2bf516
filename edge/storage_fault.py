"""Storage faults of the gate's database: what went wrong, and what the guard and installer do.

A gate on an SD card meets four faults: its data partition is full
(SQLITE_FULL, ENOSPC), read-only (SQLITE_READONLY, EROFS: ext4 remounts a
failing card read-only), an I/O error (SQLITE_IOERR, EIO), or a damaged
database (SQLITE_CORRUPT, SQLITE_NOTADB, a zero-length or truncated file, a
directory, a failed integrity check); besides, the gate's own files can be
unreadable to it (permission: a wrong owner or mode) or missing (deleted,
renamed or replaced, perhaps while it runs). `classify` turns each into a
`StorageFault` of one kind; `StorageHealth` holds the current one for the guard
screen, the retained status and the metrics. Full, read-only, I/O and permission
faults clear by themselves (the daemon retries and resumes); a damaged or missing
database never does: the gate refuses to decide on it until it is restored or
recovered (`menwei gate recover`, docs/hardware.md).
"""

from __future__ import annotations

import errno
import os
import sqlite3
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

from protocol.reasons import Message

FaultKind = Literal["full", "readonly", "io", "permission", "corrupt", "missing"]

SQLITE_MAGIC = b"SQLite format 3\x00"
SQLITE_HEADER_BYTES = 100
MIN_FREE_BYTES = 1 << 20
"""A full partition counts as cleared only once this much is free again (bytes): a write that
happens to fit in the WAL's old frames must not end the fault only for the next one to fail."""

# SQLite's primary result codes (an extended code keeps the primary one in its low byte).
_READONLY, _IOERR, _CORRUPT, _FULL, _CANTOPEN, _NOTADB = 8, 10, 11, 13, 14, 26

_ERRNO: dict[FaultKind, int] = {
    "full": errno.ENOSPC,
    "readonly": errno.EROFS,
    "io": errno.EIO,
    "permission": errno.EACCES,
    "corrupt": errno.EUCLEAN,  # what ext4 and XFS answer for a damaged structure
    "missing": errno.ENOENT,
}
PERMANENT: frozenset[FaultKind] = frozenset({"corrupt", "missing"})
"""Faults that never clear by themselves: the gate refuses until it is recovered."""
_OS_KINDS: dict[int, FaultKind] = {
    errno.ENOSPC: "full",
    errno.EDQUOT: "full",
    errno.EFBIG: "full",
    errno.EROFS: "readonly",
    errno.EACCES: "permission",
    errno.EPERM: "permission",
    errno.EIO: "io",
    errno.EUCLEAN: "corrupt",
}

RECOVERY_STEPS_EN = (
    "stop the gate (sudo systemctl stop menwei-gate), keep the database files (copy "
    "DATA_DIR/gate.db*), run `menwei gate doctor --config GATE_TOML`, then restore a backup or "
    "run `menwei gate recover --config GATE_TOML` (the damaged file is moved aside, a new epoch "
    "starts) and start the gate again"
)


@dataclass(frozen=True)
class Advice:
    """What the guard screen says about a fault, and what fixes it (zh-CN and en)."""

    message: Message
    fix: Message


ADVICE: dict[FaultKind, Advice] = {
    "full": Advice(
        Message("数据分区已满，无法记录，暂停通行", "Data partition full: nothing can be logged"),
        Message(
            "请联系维护人员清理数据分区空间（df -h）；恢复后闸机自动继续",
            "Free space on the data partition (df -h DATA_DIR); the gate resumes by itself",
        ),
    ),
    "readonly": Advice(
        Message(
            "数据分区只读（存储卡故障？），无法记录，暂停通行",
            "Data partition read-only (SD card failing?): nothing can be logged",
        ),
        Message(
            "请联系维护人员检查存储卡（dmesg），重新挂载为可写或更换；恢复后闸机自动继续",
            "Check the card (dmesg, mount); remount it read-write or replace it; the gate "
            "resumes by itself",
        ),
    ),
    "permission": Advice(
        Message(
            "无权读写数据库文件，无法记录，暂停通行",
            "No permission to read or write the database: nothing can be logged",
        ),
        Message(
            "请联系维护人员修复权限（sudo chown menwei:menwei DATA_DIR DATA_DIR/gate.db*；"
            "chmod 600 DATA_DIR/gate.db*）；恢复后闸机自动继续",
            "Give the gate's user its files back (sudo chown menwei:menwei DATA_DIR "
            "DATA_DIR/gate.db*; chmod 600 DATA_DIR/gate.db*); the gate resumes by itself",
        ),
    ),
    "io": Advice(
        Message("存储读写错误，无法记录，暂停通行", "Storage I/O error: nothing can be logged"),
        Message(
            "请联系维护人员检查存储卡（dmesg）；恢复后闸机自动继续",
            "Check the SD card and its errors (dmesg); the gate resumes by itself once writes work",
        ),
    ),
    "corrupt": Advice(
        Message("数据库已损坏，闸机停止判定", "Database damaged: the gate does not decide"),
        Message(
            "停止闸机，保留数据库文件，运行 menwei gate doctor，再恢复备份或运行 menwei gate "
            "recover（启用新纪元）",
            RECOVERY_STEPS_EN[0].upper() + RECOVERY_STEPS_EN[1:],
        ),
    ),
    "missing": Advice(
        Message(
            "数据库文件丢失（被删除、改名或替换），闸机停止判定",
            "Database file missing (deleted, renamed or replaced): the gate does not decide",
        ),
        Message(
            "停止闸机；若 gate.db 被移走，请放回原处（与 gate.db-wal 同目录同名）再启动；否则保留"
            " DATA_DIR/gate.db* 副本，运行 menwei gate recover（启用新纪元），新闸机运行 menwei "
            "gate init",
            "Stop the gate (sudo systemctl stop menwei-gate); if gate.db was moved, put it back "
            "under its name beside gate.db-wal and start the gate; otherwise copy "
            "DATA_DIR/gate.db* aside and run `menwei gate recover --config GATE_TOML` (the "
            "leftover log is moved aside, a new epoch starts); a new gate: `menwei gate init`",
        ),
    ),
}

OVERRIDE_REFUSED = Message(
    "存储故障，人工放行无法记录：请用机械钥匙开门并在纸质台账登记",
    "Storage fault: an override cannot be recorded. Open with the mechanical key and write it "
    "in the paper log",
)


class StorageFault(OSError):
    """The gate's database cannot be used: `kind` says how, `error` is what SQLite or the
    kernel said, `path` the database. An OSError with the matching errno (ENOSPC, EROFS, EIO,
    EUCLEAN for a damaged database), so the command line reports it as one clear line."""

    def __init__(self, kind: FaultKind, error: str, path: Path) -> None:
        super().__init__(_ERRNO[kind], error)
        self.kind: FaultKind = kind
        self.error = error
        self.path = path

    @property
    def advice(self) -> Advice:
        return ADVICE[self.kind]

    @property
    def transient(self) -> bool:
        """Full, read-only, permission and I/O faults clear by themselves; a damaged or
        missing database does not."""
        return self.kind not in PERMANENT

    def again(self) -> StorageFault:
        """The same fault as a new exception (raising one object again and again would grow
        its traceback)."""
        return StorageFault(self.kind, self.error, self.path)

    def __str__(self) -> str:
        return f"{self.path}: {self.error} ({self.advice.message.en}). Fix: {self.advice.fix.en}"


def classify(exc: BaseException, path: Path) -> StorageFault | None:
    """The storage fault `exc` is, or None when it is something else (a programming error, a
    constraint): SQLite errors by their result code, OS errors by errno. A failure to open a
    file or an I/O error is refined by the file system it happened on (read-only, full)."""
    if isinstance(exc, StorageFault):
        return exc
    kind: FaultKind | None
    if isinstance(exc, sqlite3.Error):
        code = getattr(exc, "sqlite_errorcode", None)
        if not isinstance(code, int):
            return None
        primary = code & 0xFF
        if primary in (_CORRUPT, _NOTADB):
            kind = "corrupt"
        elif primary == _FULL:
            kind = "full"
        elif primary == _READONLY:
            kind = permission_fault(path) or "readonly"
        elif primary in (_IOERR, _CANTOPEN):
            kind = filesystem_fault(path.parent) or permission_fault(path) or "io"
        else:
            return None
        return StorageFault(kind, str(exc), path)
    if isinstance(exc, OSError):
        kind = _OS_KINDS.get(exc.errno or 0)
        if kind is None or kind == "io":
            kind = filesystem_fault(path.parent) or kind or "io"
        return StorageFault(kind, exc.strerror or str(exc), path)
    return None


def permission_fault(path: Path) -> FaultKind | None:
    """ "permission" when this process may not read and write the database `path` (or create
    files beside it, which SQLite's WAL needs), else None."""
    for target, mode in ((path, os.R_OK | os.W_OK), (path.parent, os.W_OK | os.X_OK)):
        if target.exists() and not os.access(target, mode):
            return "permission"
    return None


def free_bytes(directory: Path) -> int | None:
    """Bytes free for an unprivileged writer on the file system holding `directory` (None when
    it cannot be asked)."""
    try:
        st = os.statvfs(directory)
    except OSError:
        return None
    return st.f_bavail * st.f_frsize


def filesystem_fault(directory: Path) -> FaultKind | None:
    """ "readonly" or "full" when the file system holding `directory` is, else None."""
    try:
        st = os.statvfs(directory)
    except OSError:
        return None
    if st.f_flag & os.ST_RDONLY:
        return "readonly"
    if st.f_bavail * st.f_frsize < MIN_FREE_BYTES:
        return "full"
    return None


def check_header(path: Path) -> None:
    """Refuse a database file that exists but cannot be one: empty (zero length), shorter than
    SQLite's 100-byte header, not starting with its magic string, or a directory. An absent
    file is no fault here (`GateStore` decides whether it may be created). Raises
    StorageFault ("corrupt", or what reading it failed with: "permission", "io", ...)."""
    if path.is_dir():
        raise StorageFault(
            "corrupt", "not a database file: a directory has the database's name", path
        )
    try:
        with path.open("rb") as f:
            head = f.read(SQLITE_HEADER_BYTES)
    except FileNotFoundError:
        return
    except OSError as exc:
        raise classify(exc, path) or exc from None
    if not head:
        raise StorageFault(
            "corrupt",
            "the database file is empty (0 bytes): its history was lost, it is not a new "
            "database and is not replaced",
            path,
        )
    if len(head) < SQLITE_HEADER_BYTES or not head.startswith(SQLITE_MAGIC):
        raise StorageFault(
            "corrupt", f"not a SQLite database (bad header, {len(head)} bytes read)", path
        )


DB_LOGS = ("-wal", "-journal")
"""The logs SQLite keeps beside a database: with the database gone, the only copy of its last
transactions (a WAL replayed into a new file would be taken for damage, and consumed)."""


def orphan_logs(path: Path) -> list[str]:
    """Names of the WAL or rollback journal beside `path` (present with or without it)."""
    return [p.name for p in (path.with_name(path.name + s) for s in DB_LOGS) if p.exists()]


def missing_database(path: Path) -> StorageFault:
    """The fault for a database that is absent where one was (or must be)."""
    left = orphan_logs(path)
    if left:
        error = (
            f"the database file is missing but {', '.join(left)} is there (the only copy of the "
            "latest decisions): no new database is created and the log is left untouched"
        )
    else:
        error = (
            "the database file is missing (deleted, renamed or never provisioned): the daemon "
            "never creates one, only `menwei gate init` does, so no history is silently replaced"
        )
    return StorageFault("missing", error, path)


def inspect_database(path: Path, *, full: bool = True, limit: int = 10) -> StorageFault | None:
    """Read the whole database: `PRAGMA integrity_check` (`full`) or `quick_check`, reporting
    up to `limit` problems, after `check_header`. Returns the fault (None when it is sound).
    Writes nothing; the file must exist."""
    try:
        check_header(path)
    except StorageFault as bad_file:
        return bad_file
    pragma = "integrity_check" if full else "quick_check"
    try:
        conn = sqlite3.connect(str(path), timeout=10)
        try:
            rows = conn.execute(f"PRAGMA {pragma}({int(limit)})").fetchall()
        finally:
            conn.close()
    except sqlite3.Error as exc:
        unreadable = classify(exc, path)
        if unreadable is None:
            raise
        return unreadable
    return damage(rows, path, pragma)


def damage(rows: list[Any], path: Path, pragma: str) -> StorageFault | None:
    """The fault an integrity or quick check's result rows report (None for a sound file)."""
    problems = [str(r[0]) for r in rows]
    if problems == ["ok"]:
        return None
    text = "; ".join(" ".join(p.split()) for p in problems)
    return StorageFault("corrupt", f"{pragma} failed: {text[:400]}", path)


class StorageHealth:
    """The current storage fault of one store, shared by the threads that use it.

    `changes` counts transitions (fault begins, changes kind, clears), so a watcher acts once
    per transition, not once per failed call. A damaged database stays a fault: nothing but
    a recovery (a new process on a sound file) clears it."""

    def __init__(self, wall: Callable[[], float] = time.time) -> None:
        self._wall = wall
        self._lock = threading.Lock()
        self.fault: StorageFault | None = None
        self.since: float | None = None
        """Wall time (seconds) when the current fault began."""
        self.changes = 0
        self.episodes = 0
        """Faults since start (each one that began while the store was sound)."""
        self.cleared_fault: tuple[StorageFault, float] | None = None
        """The last fault that cleared, with when it began."""

    def failed(self, fault: StorageFault) -> None:
        with self._lock:
            current = self.fault
            if current is not None and (current.kind == fault.kind or not current.transient):
                return
            if current is None:
                self.episodes += 1
                self.since = self._wall()
            self.fault = fault
            self.changes += 1

    def cleared(self) -> bool:
        """A write committed: a transient fault is over. Returns True when one was."""
        with self._lock:
            fault = self.fault
            if fault is None or not fault.transient:
                return False
            self.cleared_fault = (fault, self.since or self._wall())
            self.fault = None
            self.since = None
            self.changes += 1
            return True

    def to_json(self) -> dict[str, Any]:
        """The status field: {"state": "ok"|"fault", "kind", "error", "since" (ISO UTC)}."""
        with self._lock:
            fault, since = self.fault, self.since
        if fault is None:
            return {"state": "ok", "kind": None, "error": None, "since": None}
        return {
            "state": "fault",
            "kind": fault.kind,
            "error": fault.error,
            "since": None if since is None else iso_utc(since),
        }


def iso_utc(t: float) -> str:
    return datetime.fromtimestamp(t, UTC).isoformat(timespec="seconds")
