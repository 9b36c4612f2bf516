"""A disk that forgets what was not fsynced: power cuts for SQLite, in this process.

A shim VFS (after SQLite's own crash-test VFS, src/test6.c) registered, through ctypes,
in the very libsqlite3 the `sqlite3` module uses, as the default VFS: the real
GateStore opens through it with its own settings (WAL, synchronous=FULL) and not a
line of production code changes. Every write and truncate of a watched file goes
through to the real file (reads see them, as from the page cache) and is also kept as
*pending*; an xSync makes the file's pending operations durable. `arm(n)` cuts the
power at the n-th write/truncate/sync/delete: that operation and every later one
fails with SQLITE_IOERR and touches nothing, as on a machine without power.
`restore(rng, keep)` then writes what a disk could hold after the cut: the durable
content plus, with probability `keep`, each 512-byte piece of each pending write
(unsynced writes reach the platter in any order, or torn, or not at all).

Linux only (the `unix` VFS); needs the `sqlite3` module linked to the shared
libsqlite3 (Debian's Python is), else `install()` raises RuntimeError.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import random
import sqlite3
import threading
import traceback
from collections.abc import Callable
from ctypes import (
    CFUNCTYPE,
    POINTER,
    Structure,
    c_char_p,
    c_int,
    c_int64,
    c_void_p,
)
from dataclasses import dataclass, field
from pathlib import Path

SQLITE_OK = 0
SQLITE_IOERR_WRITE = 10 | (3 << 8)
SQLITE_IOERR_FSYNC = 10 | (4 << 8)
SQLITE_IOERR_TRUNCATE = 10 | (6 << 8)
SQLITE_IOERR_DELETE = 10 | (10 << 8)
SQLITE_IOERR = 10
PIECE = 512
NAME = b"powercut"

_xClose = CFUNCTYPE(c_int, c_void_p)
_xRead = CFUNCTYPE(c_int, c_void_p, c_void_p, c_int, c_int64)
_xWrite = CFUNCTYPE(c_int, c_void_p, c_void_p, c_int, c_int64)
_xTruncate = CFUNCTYPE(c_int, c_void_p, c_int64)
_xSync = CFUNCTYPE(c_int, c_void_p, c_int)
_xFileSize = CFUNCTYPE(c_int, c_void_p, POINTER(c_int64))
_xLock = CFUNCTYPE(c_int, c_void_p, c_int)
_xCheckReservedLock = CFUNCTYPE(c_int, c_void_p, POINTER(c_int))
_xFileControl = CFUNCTYPE(c_int, c_void_p, c_int, c_void_p)
_xSectorSize = CFUNCTYPE(c_int, c_void_p)
_xShmMap = CFUNCTYPE(c_int, c_void_p, c_int, c_int, c_int, c_void_p)
_xShmLock = CFUNCTYPE(c_int, c_void_p, c_int, c_int, c_int)
_xShmBarrier = CFUNCTYPE(None, c_void_p)
_xShmUnmap = CFUNCTYPE(c_int, c_void_p, c_int)
_xFetch = CFUNCTYPE(c_int, c_void_p, c_int64, c_int, c_void_p)
_xUnfetch = CFUNCTYPE(c_int, c_void_p, c_int64, c_void_p)


class IoMethods(Structure):
    _fields_ = [
        ("iVersion", c_int),
        ("xClose", _xClose),
        ("xRead", _xRead),
        ("xWrite", _xWrite),
        ("xTruncate", _xTruncate),
        ("xSync", _xSync),
        ("xFileSize", _xFileSize),
        ("xLock", _xLock),
        ("xUnlock", _xLock),
        ("xCheckReservedLock", _xCheckReservedLock),
        ("xFileControl", _xFileControl),
        ("xSectorSize", _xSectorSize),
        ("xDeviceCharacteristics", _xSectorSize),
        ("xShmMap", _xShmMap),
        ("xShmLock", _xShmLock),
        ("xShmBarrier", _xShmBarrier),
        ("xShmUnmap", _xShmUnmap),
        ("xFetch", _xFetch),
        ("xUnfetch", _xUnfetch),
    ]


class SqliteFile(Structure):
    _fields_ = [("pMethods", POINTER(IoMethods))]


# Names stay raw pointers: SQLite reads URI parameters and the database name *after* a
# file name's NUL (sqlite3_uri_parameter), so the base VFS must get the very pointer.
_xOpen = CFUNCTYPE(c_int, c_void_p, c_void_p, c_void_p, c_int, POINTER(c_int))
_xDelete = CFUNCTYPE(c_int, c_void_p, c_void_p, c_int)


class Vfs(Structure):
    pass


Vfs._fields_ = [
    ("iVersion", c_int),
    ("szOsFile", c_int),
    ("mxPathname", c_int),
    ("pNext", POINTER(Vfs)),
    ("zName", c_char_p),
    ("pAppData", c_void_p),
    ("xOpen", _xOpen),
    ("xDelete", _xDelete),
    # The rest is the base VFS's, copied as raw pointers: none of them reads its VFS
    # argument in the unix VFS (checked for SQLite 3.40).
    ("xAccess", c_void_p),
    ("xFullPathname", c_void_p),
    ("xDlOpen", c_void_p),
    ("xDlError", c_void_p),
    ("xDlSym", c_void_p),
    ("xDlClose", c_void_p),
    ("xRandomness", c_void_p),
    ("xSleep", c_void_p),
    ("xCurrentTime", c_void_p),
    ("xGetLastError", c_void_p),
    ("xCurrentTimeInt64", c_void_p),
    ("xSetSystemCall", c_void_p),
    ("xGetSystemCall", c_void_p),
    ("xNextSystemCall", c_void_p),
]

HEADER = ctypes.sizeof(SqliteFile)  # our sqlite3_file; the base VFS's file follows it


@dataclass
class Watched:
    """One file of the disk: what is durable, and what was written since its last sync."""

    durable: bytes | None  # None: the file does not exist durably
    pending: list[tuple[int, bytes | None]] = field(default_factory=list)
    """(offset, data) of writes; (size, None) of truncates; in order."""


class PowerCutDisk:
    """The files under `root`, as a disk that loses unsynced writes when the power goes."""

    def __init__(self, root: Path) -> None:
        self.root = str(root.resolve())
        self.files: dict[str, Watched] = {}
        self.ops = 0  # writes, truncates, syncs and deletes of watched files so far
        self.cut_at: int | None = None
        self.cut = False

    def arm(self, cut_at: int | None) -> None:
        """The power fails at operation `cut_at` (1-based, counted from now)."""
        self.ops, self.cut_at, self.cut = 0, cut_at, False

    def watches(self, path: str) -> bool:
        return path.startswith(self.root + "/") and not path.endswith("-shm")

    def _tick(self) -> bool:
        """Count one operation; False when the power is (now) off."""
        if self.cut:
            return False
        self.ops += 1
        if self.cut_at is not None and self.ops >= self.cut_at:
            self.cut = True
            return False
        return True

    def opened(self, path: str) -> None:
        if path not in self.files:
            p = Path(path)
            self.files[path] = Watched(p.read_bytes() if p.exists() else None)

    def restore(self, rng: random.Random, keep: float) -> dict[str, int]:
        """After the cut, with every connection closed: write each file as the disk holds
        it. Returns, per file name, how many pending pieces were kept."""
        kept: dict[str, int] = {}
        for path, w in self.files.items():
            content = bytearray(w.durable or b"")
            n = 0
            for offset, data in w.pending:
                if data is None:
                    if rng.random() < keep:
                        del content[offset:]
                    continue
                for start in range(0, len(data), PIECE):
                    if rng.random() < keep:
                        piece = data[start : start + PIECE]
                        at = offset + start
                        if len(content) < at:
                            content.extend(b"\0" * (at - len(content)))
                        content[at : at + len(piece)] = piece
                        n += 1
            p = Path(path)
            if w.durable is None and not content:
                p.unlink(missing_ok=True)
            else:
                p.write_bytes(bytes(content))
            kept[p.name] = n
        self.files.clear()
        self.arm(None)
        return kept


class _Shim:
    """The registered VFS. One per process (callbacks must outlive every connection)."""

    def __init__(self, lib: ctypes.CDLL) -> None:
        lib.sqlite3_vfs_find.restype = POINTER(Vfs)
        lib.sqlite3_vfs_find.argtypes = [c_char_p]
        lib.sqlite3_vfs_register.argtypes = [POINTER(Vfs), c_int]
        self.lib = lib
        self.base = lib.sqlite3_vfs_find(b"unix")
        if not self.base:
            raise RuntimeError("no unix VFS in this SQLite")
        self.disk: PowerCutDisk | None = None
        self.lock = threading.RLock()
        self.open_files: dict[int, str] = {}  # our sqlite3_file address -> path
        base = self.base.contents
        self.vfs = Vfs()
        ctypes.memmove(ctypes.byref(self.vfs), self.base, ctypes.sizeof(Vfs))  # then ours
        self.vfs.iVersion = min(base.iVersion, 3)
        self.vfs.szOsFile = HEADER + base.szOsFile
        self.vfs.zName = NAME
        self.vfs.pNext = None
        self._callbacks = [_xOpen(self._open), _xDelete(self._delete)]
        self.vfs.xOpen, self.vfs.xDelete = self._callbacks
        m = IoMethods()
        m.iVersion = 3
        for name, kind in IoMethods._fields_[1:]:
            own = getattr(self, f"_{name}", None)  # the rest go to the base file as they are
            fn = kind(_answering(own or self._delegate(name)))
            self._callbacks.append(fn)
            setattr(m, name, fn)
        self.methods = m
        if lib.sqlite3_vfs_register(ctypes.byref(self.vfs), 1) != SQLITE_OK:
            raise RuntimeError("could not register the powercut VFS")

    # --- helpers ---------------------------------------------------------------------

    def _base_file(self, f: int) -> tuple[int, IoMethods]:
        inner = f + HEADER
        methods = ctypes.cast(inner, POINTER(SqliteFile)).contents.pMethods.contents
        return inner, methods

    def _delegate(self, name: str) -> Callable[..., int | None]:
        def call(f: int, *args: object) -> int | None:
            inner, m = self._base_file(f)
            result = getattr(m, name)(inner, *args)
            return None if result is None else int(result)

        return call

    def _watched(self, f: int) -> tuple[PowerCutDisk, Watched] | None:
        path = self.open_files.get(f, "")
        disk = self.disk
        if disk is None or path not in disk.files:
            return None
        return disk, disk.files[path]

    # --- the VFS -------------------------------------------------------------------------

    def _open(self, _vfs: int, name: int | None, f: int, flags: int, out: object) -> int:
        with self.lock:
            try:
                file = ctypes.cast(f, POINTER(SqliteFile)).contents
                rc = self.base.contents.xOpen(self.base, name, f + HEADER, flags, out)
                if rc != SQLITE_OK:
                    file.pMethods = None
                    return int(rc)
                file.pMethods = ctypes.pointer(self.methods)
                path = ctypes.string_at(name).decode() if name else ""
                self.open_files[f] = path
                if self.disk is not None and path and self.disk.watches(path):
                    self.disk.opened(path)
                return SQLITE_OK
            except Exception:  # a callback must answer SQLite, never raise into C
                return SQLITE_IOERR

    def _delete(self, _vfs: int, name: int, sync_dir: int) -> int:
        with self.lock:
            path = ctypes.string_at(name).decode()
            disk = self.disk
            if disk is not None and disk.watches(path):
                if not disk._tick():
                    return SQLITE_IOERR_DELETE
                disk.files[path] = Watched(None)
            return int(self.base.contents.xDelete(self.base, name, sync_dir))

    # --- files -------------------------------------------------------------------------

    def _xClose(self, f: int) -> int:
        with self.lock:
            inner, m = self._base_file(f)
            self.open_files.pop(f, None)
            return int(m.xClose(inner))

    def _xWrite(self, f: int, buf: int, amount: int, offset: int) -> int:
        with self.lock:
            if not self._record(f, (offset, ctypes.string_at(buf, amount))):
                return SQLITE_IOERR_WRITE
            inner, m = self._base_file(f)
            return int(m.xWrite(inner, buf, amount, offset))

    def _xTruncate(self, f: int, size: int) -> int:
        with self.lock:
            if not self._record(f, (size, None)):
                return SQLITE_IOERR_TRUNCATE
            inner, m = self._base_file(f)
            return int(m.xTruncate(inner, size))

    def _record(self, f: int, op: tuple[int, bytes | None]) -> bool:
        """Keep a write or truncate of a watched file as pending; False: the power is off."""
        w = self._watched(f)
        if w is None:
            return True
        if not w[0]._tick():
            return False
        w[1].pending.append(op)
        return True

    def _xSync(self, f: int, flags: int) -> int:
        with self.lock:
            w = self._watched(f)
            if w is not None and not w[0]._tick():
                return SQLITE_IOERR_FSYNC
            inner, m = self._base_file(f)
            rc = int(m.xSync(inner, flags))
            if w is not None and rc == SQLITE_OK:
                path = self.open_files[f]
                w[1].durable, w[1].pending = Path(path).read_bytes(), []
            return rc

    def uninstall(self) -> None:
        """The unix VFS is the default again (this one stays registered: callbacks of
        connections still open must stay valid)."""
        self.lib.sqlite3_vfs_register(self.base, 1)


def _answering(method: Callable[..., int | None]) -> Callable[..., int | None]:
    """A callback must answer SQLite, never raise into C (ctypes would answer 0: SQLITE_OK)."""

    def call(*args: object) -> int | None:
        try:
            return method(*args)
        except Exception:
            traceback.print_exc()
            return SQLITE_IOERR

    return call


_shim: _Shim | None = None


def install(disk: PowerCutDisk) -> _Shim:
    """Make the powercut VFS the default of this process's SQLite, watching `disk`."""
    global _shim
    if _shim is None:
        import _sqlite3

        linked = ctypes.util.find_library("sqlite3")
        if linked is None:
            raise RuntimeError("the sqlite3 module is not linked to a shared libsqlite3")
        lib = ctypes.CDLL(linked)
        if lib.sqlite3_libversion_number() != sqlite3.sqlite_version_info[0] * 1000000 + (
            sqlite3.sqlite_version_info[1] * 1000 + sqlite3.sqlite_version_info[2]
        ):
            raise RuntimeError(f"{linked} is not the SQLite of {_sqlite3.__file__}")
        _shim = _Shim(lib)
        try:  # the sqlite3 module must find it by name: one and the same library
            sqlite3.connect("file:probe?mode=memory&vfs=powercut", uri=True).close()
        except sqlite3.OperationalError as exc:
            _shim.uninstall()
            raise RuntimeError(f"the sqlite3 module does not use {linked}: {exc}") from None
    else:
        _shim.lib.sqlite3_vfs_register(ctypes.byref(_shim.vfs), 1)
    _shim.disk = disk
    return _shim
