"""The collector's store (SQLite; PostgreSQL at scale is a later backend behind the same API).

Events are inserted idempotently on (gate, epoch, seq): a resent event is
counted once. An event whose (gate, epoch, seq) is already stored with a
different UUID is not overwritten: it is kept in `conflicts` for operators,
once per event however often it is resent (a gate that lost committed history
and numbered new events with seqs the collector holds). An event whose UUID is
already stored under another (epoch, seq) of its gate is the same event,
renumbered by a gate that moved to a new epoch after such a loss: it is stored
once, and its new number is kept in `event_aliases` so the new epoch's
numbering has no gap. Per gate, `contiguous_seq` is the highest seq up to which
every event of its current epoch is committed: that is what the collector
acknowledges, with the uuid of the event there.
"""

from __future__ import annotations

import contextlib
import json
import sqlite3
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from sqlalchemy.engine import make_url
from sqlite_utils import Database

from protocol.events import Event
from server.storage.engine import SQLITE_FILE, Store
from server.storage.times import instant_us
from server.storage.times import utcnow as utcnow

STORE_NAME = SQLITE_FILE


@dataclass(frozen=True)
class InsertResult:
    inserted: int
    duplicates: int
    conflicts: int
    contiguous_seq: int
    new_events: tuple[Event, ...] = ()
    epoch: str = ""
    replaced_epoch: str | None = None  # the gate's previous epoch, when this batch began a new one
    contiguous_uuid: str | None = None  # the uuid of the event at contiguous_seq
    renumbered: int = 0  # events already stored under another (epoch, seq): aliases recorded


class _WriterFirst(Database):
    """sqlite-utils' Database whose outermost `atomic()` begins IMMEDIATE: it takes SQLite's
    write lock before its first read. The store's engine (`write()`) is another connection
    to the same file; a deferred transaction that has read and then writes fails at once
    ("database is locked": its snapshot is older than the other's commit) instead of
    waiting for the lock."""

    @contextlib.contextmanager
    def atomic(self) -> Iterator[Database]:
        if self.conn.in_transaction:
            with super().atomic():
                yield self
            return
        self.conn.execute("BEGIN IMMEDIATE")
        try:
            yield self
        except BaseException:
            self.conn.rollback()
            raise
        self.conn.commit()


class ServerStore(Store):
    """Being replaced by server.storage: the methods below and `db` (a second, sqlite-utils
    connection to a SQLite store) serve the code not yet moved there."""

    def __init__(self, url: str | Path) -> None:
        super().__init__(url if isinstance(url, str) else f"sqlite:///{url.resolve()}")
        self._lock = threading.RLock()
        if self.backend == "sqlite":
            path = make_url(self.url).database or ""
            conn = sqlite3.connect(path, check_same_thread=False, timeout=30)
            self.db: Database = _WriterFirst(conn)
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
    def atomic(self) -> Iterator[Database]:
        """One transaction on `db` under the store's lock: for writers outside this class that
        share the connection with the collector's thread. Without the lock their transaction
        and a batch insert interleave on the one connection (savepoints of one released by
        the other's commit, "cannot start a transaction within a transaction").
        Left for the code not yet moved to server/storage (visitors, gate health, operator
        accounts); new code uses `write()`."""
        with self._lock, self.db.atomic():
            yield self.db

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- events ------------------------------------------------------------------------

    def insert_events(self, gate: str, events: list[Event]) -> InsertResult:
        """Insert one batch in one transaction; returns counts and the new contiguous seq."""
        now = utcnow()
        inserted = duplicates = conflicts = renumbered = 0
        new: list[Event] = []
        with self._lock, self.db.atomic():
            for e in events:
                held = self.db.execute(
                    "SELECT epoch, seq FROM events WHERE gate = ? AND uuid = ?", [gate, e.uuid]
                ).fetchone()
                if held is not None:
                    if (held[0], held[1]) == (e.epoch, e.seq):
                        duplicates += 1
                    else:  # the same event under a new number: stored once, its number noted
                        renumbered += 1
                        self.db.execute(
                            "INSERT OR IGNORE INTO event_aliases (gate, epoch, seq, uuid)"
                            " VALUES (?, ?, ?, ?)",
                            [gate, e.epoch, e.seq, e.uuid],
                        )
                    continue
                body = json.dumps(e.to_json(), ensure_ascii=False)
                cur = self.db.execute(
                    "INSERT OR IGNORE INTO events (gate, epoch, seq, uuid, at, at_us, kind,"
                    " decision, reason, household, pass_id, role, body, received_at, direction)"
                    " VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
                    [
                        gate,
                        e.epoch,
                        e.seq,
                        e.uuid,
                        e.at,
                        instant_us(e.at),
                        e.kind,
                        e.decision,
                        e.reason,
                        e.household,
                        e.pass_id,
                        e.role,
                        body,
                        now,
                        e.direction,
                    ],
                )
                if cur.rowcount == 1:
                    inserted += 1
                    new.append(e)
                    continue
                conflicts += 1
                other = self._uuid_at(gate, e.epoch, e.seq)
                self._add_conflict(
                    gate,
                    e.seq,
                    "seq_reused",
                    f"epoch {e.epoch!r} seq {e.seq} already stored with uuid {other}",
                    body,
                    e.uuid,
                )
            # A gate writes one database at a time: its batch's epoch is its current one.
            epoch = events[-1].epoch if events else self.gate_epoch(gate) or ""
            contiguous, replaced = self._advance_contiguous(gate, epoch, now)
            at_contiguous = self._uuid_at(gate, epoch, contiguous)
            reused = self._first_reused_seq(gate, epoch)
            if reused is not None and reused <= contiguous:
                # The gate numbered other events with seqs held here: it lost committed
                # history. Acknowledge the first reused seq with the event held here, never
                # past it: the gate sees another event at that seq and moves to a new epoch
                # (edge/sync.py) instead of taking an ack of its own later events as delivery
                # of the ones only `conflicts` holds (a broker that lost the retained ack).
                contiguous, at_contiguous = reused, self._uuid_at(gate, epoch, reused)
        return InsertResult(
            inserted,
            duplicates,
            conflicts,
            contiguous,
            tuple(new),
            epoch,
            replaced,
            at_contiguous,
            renumbered,
        )

    def _first_reused_seq(self, gate: str, epoch: str) -> int | None:
        """The lowest seq of `epoch` that `gate` sent for two different events."""
        row = self.db.execute(
            "SELECT MIN(seq) FROM conflicts WHERE gate = ? AND kind = 'seq_reused'"
            " AND json_extract(body, '$.epoch') = ?",
            [gate, epoch],
        ).fetchone()
        return None if row is None or row[0] is None else int(row[0])

    def _uuid_at(self, gate: str, epoch: str, seq: int) -> str | None:
        row = self.db.execute(
            "SELECT uuid FROM events WHERE gate = ? AND epoch = ? AND seq = ?"
            " UNION ALL SELECT uuid FROM event_aliases WHERE gate = ? AND epoch = ? AND seq = ?",
            [gate, epoch, seq, gate, epoch, seq],
        ).fetchone()
        return None if row is None else str(row[0])

    def gate_epoch(self, gate: str) -> str | None:
        row = self.db.execute("SELECT epoch FROM gates WHERE gate = ?", [gate]).fetchone()
        return None if row is None else row[0]

    def _advance_contiguous(self, gate: str, epoch: str, now: str) -> tuple[int, str | None]:
        """The highest contiguous seq of `gate` in `epoch`, and the epoch it replaced if the
        gate's database changed."""
        row = self.db.execute(
            "SELECT contiguous_seq, epoch FROM gates WHERE gate = ?", [gate]
        ).fetchone()
        held = None if row is None else row[1]
        c = row[0] if row is not None and held == epoch else 0
        for (seq,) in self.db.execute(
            "SELECT seq FROM events WHERE gate = ? AND epoch = ? AND seq > ?"
            " UNION SELECT seq FROM event_aliases WHERE gate = ? AND epoch = ? AND seq > ?"
            " ORDER BY seq",
            [gate, epoch, c, gate, epoch, c],
        ):
            if seq != c + 1:
                break
            c = seq
        self.db.execute(
            "INSERT INTO gates (gate, contiguous_seq, last_seen, epoch) VALUES (?, ?, ?, ?)"
            " ON CONFLICT(gate) DO UPDATE SET contiguous_seq = excluded.contiguous_seq,"
            " last_seen = excluded.last_seen, epoch = excluded.epoch",
            [gate, c, now, epoch],
        )
        return int(c), held if held is not None and held != epoch else None

    def contiguous_seq(self, gate: str) -> int:
        with self._lock:
            row = self.db.execute(
                "SELECT contiguous_seq FROM gates WHERE gate = ?", [gate]
            ).fetchone()
        return int(row[0]) if row else 0

    def events(self) -> Iterator[dict[str, Any]]:
        with self._lock:
            rows = self.db.execute("SELECT body FROM events ORDER BY at, gate, seq").fetchall()
        for (body,) in rows:
            yield json.loads(body)

    def decision_events(
        self, since: datetime | None, limit: int
    ) -> tuple[list[dict[str, Any]], bool]:
        """The latest `limit` pass decisions at or after `since` (every one when None), oldest
        first, as exported; and whether older ones in that span were left out."""
        start = None if since is None else since.isoformat()
        with self._lock:  # gates' times carry their own offsets: compared as instants
            rows = self.db.execute(
                "SELECT body FROM events WHERE kind = 'decision'"
                " AND (? IS NULL OR julianday(at) >= julianday(?))"
                " ORDER BY julianday(at) DESC, gate DESC, seq DESC LIMIT ?",
                [start, start, limit + 1],
            ).fetchall()
        return [json.loads(body) for (body,) in reversed(rows[:limit])], len(rows) > limit

    def event_keys(self) -> list[tuple[str, str, int, str]]:
        """(gate, epoch, seq, uuid) of every stored event."""
        with self._lock:
            return [
                (str(g), str(e), int(s), str(u))
                for g, e, s, u in self.db.execute(
                    "SELECT gate, epoch, seq, uuid FROM events"
                ).fetchall()
            ]

    def alias_keys(self) -> list[tuple[str, str, int, str]]:
        """(gate, epoch, seq, uuid) under which gates sent again events stored under another
        number (after a move to a new epoch)."""
        with self._lock:
            return [
                (str(g), str(e), int(s), str(u))
                for g, e, s, u in self.db.execute(
                    "SELECT gate, epoch, seq, uuid FROM event_aliases"
                ).fetchall()
            ]

    def count_events(self) -> int:
        with self._lock:
            return int(self.db.execute("SELECT COUNT(*) FROM events").fetchone()[0])

    # --- problems ----------------------------------------------------------------------

    def _add_conflict(
        self, gate: str, seq: int, kind: str, detail: str, body: str, uuid: str
    ) -> None:
        """Keep a refused event for operators, once per (kind, event uuid): a gate resends
        what it was not acknowledged for, every resend_after_s."""
        self.db.execute(
            "INSERT OR IGNORE INTO conflicts (gate, seq, kind, detail, body, uuid, at)"
            " VALUES (?,?,?,?,?,?,?)",
            [gate, seq, kind, detail, body, uuid, utcnow()],
        )

    def add_conflict_once(self, gate: str, seq: int, kind: str, detail: str, uuid: str) -> bool:
        """Record a conflict about event `uuid` unless it is already recorded. True if new."""
        with self._lock, self.db.atomic():
            cur = self.db.execute(
                "INSERT OR IGNORE INTO conflicts (gate, seq, kind, detail, uuid, at)"
                " VALUES (?,?,?,?,?,?)",
                [gate, seq, kind, detail, uuid, utcnow()],
            )
            return cur.rowcount == 1

    def revoked_at(self, pass_id: int) -> datetime | None:
        with self._lock:
            row = self.db.execute(
                "SELECT revoked_at FROM passes WHERE pass_id = ?", [pass_id]
            ).fetchone()
        return None if row is None or row[0] is None else datetime.fromisoformat(row[0])

    def quarantine_period(self, household: str) -> tuple[datetime, datetime | None] | None:
        """(since, until) of the household's current home quarantine, None if there is none.
        `since` is the row's last change: an update can only make it later, so a conflict
        is never claimed that was not one."""
        with self._lock:
            row = self.db.execute(
                "SELECT updated_at, quarantine_until FROM households"
                " WHERE household = ? AND quarantined = 1",
                [household],
            ).fetchone()
        if row is None:
            return None
        return datetime.fromisoformat(row[0]), None if row[1] is None else datetime.fromisoformat(
            row[1]
        )

    def household_passages(
        self, household: str, start: datetime, end: datetime
    ) -> list[tuple[str, int, str, str, int, str]]:
        """Accepted passages of a household's quota-bound members in [start, end), by time."""
        with self._lock:
            rows = self.db.execute(
                "SELECT gate, seq, uuid, at, pass_id, direction, julianday(at) AS t FROM events"
                " WHERE household = ? AND kind = 'decision' AND decision = 'allow'"
                " AND pass_id IS NOT NULL"
                " AND COALESCE(json_extract(body, '$.role'), 'resident')"
                " NOT IN ('staff', 'visitor')"
                " AND t >= julianday(?) AND t < julianday(?) ORDER BY t, gate, seq",
                [household, start.isoformat(), end.isoformat()],
            ).fetchall()
        return [(str(g), int(s), str(u), str(a), int(p), str(d)) for g, s, u, a, p, d, _ in rows]

    def conflicts(self) -> list[dict[str, Any]]:
        with self._lock:
            cur = self.db.execute("SELECT gate, seq, kind, detail, at FROM conflicts ORDER BY id")
            return [dict(zip(("gate", "seq", "kind", "detail", "at"), r, strict=True)) for r in cur]

    def reject_message(self, topic: str, reason: str, payload: bytes) -> None:
        excerpt = payload[:200].decode("utf-8", "replace")
        with self._lock, self.db.atomic():
            self.db.execute(
                "INSERT INTO rejected_messages (topic, reason, excerpt, at) VALUES (?,?,?,?)",
                [topic, reason[:500], excerpt, utcnow()],
            )

    def rejected_count(self) -> int:
        with self._lock:
            return int(self.db.execute("SELECT COUNT(*) FROM rejected_messages").fetchone()[0])

    # --- gate status -------------------------------------------------------------------

    def set_gate_status(self, gate: str, status: dict[str, Any]) -> None:
        """Store a gate's retained status. A Last Will carries only {gate, site, state}: the
        last known figures (backlog, versions, camera) are kept beside it, marked offline."""
        with self._lock, self.db.atomic():
            if status.get("state") == "offline":
                row = self.db.execute("SELECT status FROM gates WHERE gate = ?", [gate]).fetchone()
                previous = json.loads(row[0]) if row and row[0] else {}
                status = {**previous, **status, "offline_at": utcnow()}
            self.db.execute(
                "INSERT INTO gates (gate, status, last_seen) VALUES (?, ?, ?)"
                " ON CONFLICT(gate) DO UPDATE SET status = excluded.status,"
                " last_seen = excluded.last_seen",
                [gate, json.dumps(status, ensure_ascii=False), utcnow()],
            )

    def gates(self) -> list[dict[str, Any]]:
        with self._lock:
            rows = self.db.execute(
                "SELECT gate, contiguous_seq, last_seen, status FROM gates ORDER BY gate"
            ).fetchall()
        return [
            {
                "gate": g,
                "contiguous_seq": c,
                "last_seen": seen,
                "status": json.loads(s) if s else None,
            }
            for g, c, seen, s in rows
        ]
