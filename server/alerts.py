"""Operator alerts: fever, forged or unknown-key passes, revoked pass used, cross-gate
conflicts, gates offline, gate storage faults, door held open, camera lost, a gate that
lost its history, a document too large to publish (the collector's
`document_too_large`), a document a gate refused as untrusted (`untrusted_document`) or one
on the broker the server did not publish (the collector's `foreign_document`). Each can be
acknowledged with a note.

Alerts are created once per cause (`key`), so a resent event or a re-run check
never raises the same alert twice, however many collectors raise it at once.
Storage: server/storage/alerts.py.
"""

from __future__ import annotations

import contextlib
import json

from protocol.events import EPOCH_RE, Event
from server.storage import Store, audit
from server.storage import alerts as alerts_db
from server.storage.alerts import Alert
from server.storage.engine import Tx
from server.storage.times import utcnow

__all__ = ["HIGH_PRIORITY", "HISTORY_LOST", "Alert", "AlertStore"]

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
        "untrusted_document",
        "foreign_document",
    }
)


class AlertStore:
    def __init__(self, store: Store) -> None:
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
        tx: Tx | None = None,
    ) -> Alert | None:
        """Create the alert unless one with the same key exists. Returns it when new: when
        several collectors raise it at once, exactly one of them gets it. In the caller's
        transaction `tx` when given (a job that records its cause and its alert at once)."""
        with contextlib.nullcontext(tx) if tx is not None else self.store.write() as t:
            return alerts_db.add(
                t,
                key=key,
                at=utcnow(),
                kind=kind,
                priority=priority or ("high" if kind in HIGH_PRIORITY else "normal"),
                gate=gate,
                pass_id=pass_id,
                household=household,
                detail=detail,
                event_at=event_at,
            )

    def from_event(self, event: Event, *, tx: Tx | None = None) -> Alert | None:
        """The alert an event raises: gate alerts (fever, forged, ...) and camera loss. In
        the caller's transaction `tx` when given (the one that stored the event)."""
        if event.kind == "alert":
            kind = event.reason
        elif event.kind == "device" and event.reason == "camera_lost":
            kind = "camera_lost"
        else:
            return None
        detail = json.dumps(event.detail, ensure_ascii=False) if event.detail else ""
        if kind == HISTORY_LOST:
            detail = self._history_lost_detail(event, tx)
        # A gate may ask for high priority (door_forced); it never lowers a kind the server
        # holds high (a fever alert sent as "normal" would miss a webhook_kinds = ["high"]).
        high = kind in HIGH_PRIORITY or event.detail.get("priority") == "high"
        return self.raise_alert(
            f"event:{event.uuid}",
            kind,
            gate=event.gate,
            pass_id=event.pass_id,
            household=event.household,
            detail=detail,
            event_at=event.at,
            priority="high" if high else "normal",
            tx=tx,
        )

    def _history_lost_detail(self, event: Event, tx: Tx | None) -> str:
        """What the gate lost, from what this store holds: the gate's alert follows the events
        it sent again under its new epoch, so those are already recorded as aliases."""
        d = event.detail
        try:
            lost, new = str(d["epoch"]), str(d["new_epoch"])
            confirmed, moved = int(d["confirmed_seq"]), int(d["moved"])
        except (KeyError, TypeError, ValueError):
            return json.dumps(d, ensure_ascii=False)
        if not (EPOCH_RE.fullmatch(lost) and EPOCH_RE.fullmatch(new)):
            return json.dumps(d, ensure_ascii=False)  # epochs are hex: not text to quote
        with contextlib.nullcontext(tx) if tx is not None else self.store.read() as t:
            ranges = alerts_db.missing_from_gate(t, event.gate, lost, confirmed, new)
        held = ", ".join(f"{a}..{b}" for a, b in ranges) or "none"
        return (
            f"epoch {lost} seq {held} held by the collector, not by the gate;"
            f" {moved} unconfirmed events sent again as epoch {new}"
        )

    def get(self, alert_id: int) -> Alert | None:
        with self.store.read() as tx:
            return alerts_db.get(tx, alert_id)

    def list(self, *, open_only: bool = False, limit: int = 200) -> list[Alert]:
        """The newest `limit` alerts, newest first; only unacknowledged ones with `open_only`."""
        with self.store.read() as tx:
            return alerts_db.recent(tx, open_only=open_only, limit=limit)

    def acknowledge(self, alert_id: int, operator: str, note: str) -> bool:
        """Acknowledge an open alert; False if it does not exist or was acknowledged."""
        with self.store.write() as tx:
            ok = alerts_db.acknowledge(
                tx, alert_id, at=utcnow(), operator=operator, note=note[:1000]
            )
        if ok:
            with self.store.write() as tx:
                audit.record(tx, operator, "alert_ack", str(alert_id), note[:1000])
        return ok

    def open_counts(self) -> dict[str, int]:
        """kind → number of alerts not yet acknowledged."""
        with self.store.read() as tx:
            return alerts_db.open_counts(tx)
