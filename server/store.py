"""The collector's store as it was before server/storage: `ServerStore` still carries the
methods and the sqlite-utils connection (`db`) of the code not yet moved there. Events,
gates and conflicts are in server/storage/events.py and gates.py.
"""

from __future__ import annotations

import contextlib
import sqlite3
import threading
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

from sqlalchemy.engine import make_url
from sqlite_utils import Database

from server.storage.engine import SQLITE_FILE, Store

STORE_NAME = SQLITE_FILE


def utcnow() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds")


class ServerStore(Store):
    """Being replaced by server.storage: the methods below and `db` (a second, sqlite-utils
    connection to a SQLite store) serve the code not yet moved there."""

    def __init__(self, url: str | Path) -> None:
        super().__init__(url if isinstance(url, str) else f"sqlite:///{url.resolve()}")
        self._lock = threading.RLock()
        if self.backend == "sqlite":
            path = make_url(self.url).database or ""
            conn = sqlite3.connect(path, check_same_thread=False, timeout=30)
            self.db = Database(conn)
            self.db.execute("PRAGMA journal_mode=WAL")
            self.db.execute("PRAGMA synchronous=FULL")

    def close(self) -> None:
        with self._lock:
            if not self._closed:
                if self.backend == "sqlite":
                    self.db.close()
                super().close()

    def __enter__(self) -> ServerStore:
        return self

    @contextlib.contextmanager
    def immediate(self) -> Iterator[Database]:
        """One write transaction taken at once (BEGIN IMMEDIATE): it holds SQLite's write lock
        for its whole length, so writers in other processes (the collector, a command, the
        dashboard) wait, and what is read inside is still true when it commits. Used where a
        document is signed and written to the bundle: its version order is then the order of
        the files. Nested in a transaction: a savepoint."""
        with self._lock:
            if self.db.conn.in_transaction:
                with self.db.atomic():
                    yield self.db
                return
            self.db.conn.execute("BEGIN IMMEDIATE")
            try:
                yield self.db
            except BaseException:
                self.db.conn.rollback()
                raise
            self.db.conn.commit()

    @contextlib.contextmanager
    def atomic(self) -> Iterator[Database]:
        """One transaction under the store's lock: for writers outside this class (Site) that
        share the connection with the collector's thread. Without the lock their transaction
        and a batch insert interleave on the one connection (savepoints of one released by
        the other's commit, "cannot start a transaction within a transaction")."""
        with self._lock, self.db.atomic():
            yield self.db

    def __exit__(self, *exc: object) -> None:
        self.close()

    def audit(self, actor: str, action: str, target: str, detail: str = "") -> None:
        with self._lock, self.db.atomic():
            self.db.execute(
                "INSERT INTO audit (at, actor, action, target, detail) VALUES (?,?,?,?,?)",
                [utcnow(), actor, action, target, detail],
            )

    # --- meta --------------------------------------------------------------------------

    def get_meta(self, key: str) -> str | None:
        with self._lock:
            row = self.db.execute("SELECT value FROM meta WHERE key = ?", [key]).fetchone()
        return None if row is None else str(row[0])

    def set_meta(self, key: str, value: str) -> None:
        with self._lock, self.db.atomic():
            self.db.execute("INSERT OR REPLACE INTO meta (key, value) VALUES (?, ?)", [key, value])

    def next_counter(self, key: str, *, above: int = 0) -> int:
        """Atomically increment a counter (pass ids, document versions); the result is also
        greater than `above` (a version already out in the world the counter does not know)."""
        with self.immediate():
            row = self.db.execute("SELECT value FROM meta WHERE key = ?", [key]).fetchone()
            n = max(int(row[0]) if row else 0, above) + 1
            self.db.execute("INSERT OR REPLACE INTO meta (key, value) VALUES (?, ?)", [key, str(n)])
        return n
