"""Operator alerts: fever, forged or unknown-key passes, revoked pass used, cross-gate
conflicts, gates offline, gate storage faults, door held open, camera lost, a gate that
lost its history, a document too large to publish (the collector's
`document_too_large`). Each can be acknowledged with a note.

Alerts are created once per cause (`key`), so a resent event or a re-run check
never raises the same alert twice. Tables: server/storage/schema.py.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from protocol.events import Event
from server.storage import audit
from server.store import ServerStore, utcnow

HISTORY_LOST = "gate_history_lost"
HIGH_PRIORITY = frozenset(
    {
        "fever",
        "forged",
        "revoked",
        "door_forced",
        "conflict",
        HISTORY_LOST,
        "document_too_large",
        "storage_fault",
    }
)


@dataclass(frozen=True)
class Alert:
    id: int
    key: str
    at: str
    kind: str
    priority: str
    gate: str | None
    pass_id: int | None
    household: str | None
    detail: str
    event_at: str | None
    acked_at: str | None
    acked_by: str | None
    ack_note: str | None

    def to_json(self) -> dict[str, Any]:
        return dict(self.__dict__)


_COLUMNS = (
    "id",
    "key",
    "at",
    "kind",
    "priority",
    "gate",
    "pass_id",
    "household",
    "detail",
    "event_at",
    "acked_at",
    "acked_by",
    "ack_note",
)


class AlertStore:
    def __init__(self, store: ServerStore) -> None:
        self.store = store

    def raise_alert(
        self,
        key: str,
        kind: str,
        *,
        gate: str | None = None,
        pass_id: int | None = None,
        household: str | None = None,
        detail: str = "",
        event_at: str | None = None,
        priority: str | None = None,
    ) -> Alert | None:
        """Create the alert unless one with the same key exists. Returns it when new."""
        prio = priority or ("high" if kind in HIGH_PRIORITY else "normal")
        with self.store._lock, self.store.db.atomic():
            cur = self.store.db.execute(
                "INSERT OR IGNORE INTO alerts (key, at, kind, priority, gate, pass_id, household,"
                " detail, event_at) VALUES (?,?,?,?,?,?,?,?,?)",
                [key, utcnow(), kind, prio, gate, pass_id, household, detail, event_at],
            )
            if cur.rowcount != 1:
                return None
            alert_id = cur.lastrowid
        return self.get(int(alert_id or 0))

    def from_event(self, event: Event) -> Alert | None:
        """The alert an event raises: gate alerts (fever, forged, ...) and camera loss."""
        if event.kind == "alert":
            kind = event.reason
        elif event.kind == "device" and event.reason == "camera_lost":
            kind = "camera_lost"
        else:
            return None
        detail = json.dumps(event.detail, ensure_ascii=False) if event.detail else ""
        if kind == HISTORY_LOST:
            detail = self._history_lost_detail(event)
        return self.raise_alert(
            f"event:{event.uuid}",
            kind,
            gate=event.gate,
            pass_id=event.pass_id,
            household=event.household,
            detail=detail,
            event_at=event.at,
            priority=str(event.detail.get("priority")) if event.detail.get("priority") else None,
        )

    def _history_lost_detail(self, event: Event) -> str:
        """What the gate lost, from what this store holds: the gate's alert follows the events
        it sent again under its new epoch, so those are already recorded as aliases."""
        d = event.detail
        try:
            lost, new = str(d["epoch"]), str(d["new_epoch"])
            confirmed, moved = int(d["confirmed_seq"]), int(d["moved"])
        except (KeyError, TypeError, ValueError):
            return json.dumps(d, ensure_ascii=False)
        ranges = self.store.missing_from_gate(event.gate, lost, confirmed, new)
        held = ", ".join(f"{a}..{b}" for a, b in ranges) or "none"
        return (
            f"epoch {lost} seq {held} held by the collector, not by the gate;"
            f" {moved} unconfirmed events sent again as epoch {new}"
        )

    def get(self, alert_id: int) -> Alert | None:
        with self.store._lock:
            row = self.store.db.execute(
                f"SELECT {', '.join(_COLUMNS)} FROM alerts WHERE id = ?", [alert_id]
            ).fetchone()
        return None if row is None else Alert(*row)

    def list(self, *, open_only: bool = False, limit: int = 200) -> list[Alert]:
        where = "WHERE acked_at IS NULL" if open_only else ""
        with self.store._lock:
            rows = self.store.db.execute(
                f"SELECT {', '.join(_COLUMNS)} FROM alerts {where} ORDER BY id DESC LIMIT ?",
                [limit],
            ).fetchall()
        return [Alert(*r) for r in rows]

    def acknowledge(self, alert_id: int, operator: str, note: str) -> bool:
        """Acknowledge an open alert; False if it does not exist or was acknowledged."""
        with self.store._lock, self.store.db.atomic():
            cur = self.store.db.execute(
                "UPDATE alerts SET acked_at = ?, acked_by = ?, ack_note = ?"
                " WHERE id = ? AND acked_at IS NULL",
                [utcnow(), operator, note[:1000], alert_id],
            )
            ok = cur.rowcount == 1
        if ok:
            with self.store.write() as tx:
                audit.record(tx, operator, "alert_ack", str(alert_id), note[:1000])
        return ok

    def open_counts(self) -> dict[str, int]:
        with self.store._lock:
            rows = self.store.db.execute(
                "SELECT kind, COUNT(*) FROM alerts WHERE acked_at IS NULL GROUP BY kind"
            ).fetchall()
        return {str(k): int(n) for k, n in rows}
