"""Gate health: a gate that is offline raises one `gate_offline` alert per outage.

A gate is offline when its retained status says so (its Last Will, sent by the
broker when the gate's connection is lost, or its own goodbye on a clean stop),
or when nothing at all was heard from it (status every 15 s, event batches) for
`gate_offline_after_min` minutes. An outage starts at the gate's `last_seen`
and ends when the gate is online and heard from again; the next outage raises a
new alert. Open outages are kept in the store (server/storage/outages.py), so a
restarted collector (which receives every retained status again) does not raise
an outage twice, several collectors on one store raise it once, and the dashboard
can show since when a gate is down.

`assess` is the pure decision; `GateHealth.check` is the thin shell the
collector's worker calls every few seconds while it is connected.

A gate whose database cannot be written (a full, read-only or failing SD card, a
damaged database) refuses every scan and says so in its retained status at once
(`"storage": {"state": "fault", "kind", "error", "since"}`): `storage_fault`
raises one high-priority `storage_fault` alert per fault (key
`storage:{gate}:{since}`), as soon as the status arrives.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Literal

from server.alerts import Alert, AlertStore
from server.storage import Store, outages
from server.storage import gates as gates_db
from server.storage.engine import lock

CHECK_INTERVAL_S = 5.0
"""How often the collector's worker runs the check."""

Cause = Literal["offline", "silent"]


@dataclass(frozen=True)
class Outage:
    gate: str
    since: str
    """The gate's last_seen when the outage was noticed (ISO-8601, UTC)."""
    cause: Cause
    """"offline": its status says so (Last Will or clean stop); "silent": not heard from."""

    @property
    def key(self) -> str:
        return f"offline:{self.gate}:{self.since}"


@dataclass(frozen=True)
class Assessment:
    opened: tuple[Outage, ...] = ()
    """New outages: each raises one alert."""
    ended: tuple[str, ...] = ()
    """Gates whose open outage is over (online and heard from again)."""


def _parse(text: object) -> datetime | None:
    if not isinstance(text, str):
        return None
    try:
        t = datetime.fromisoformat(text)
    except ValueError:
        return None
    return t if t.tzinfo else t.replace(tzinfo=UTC)


def assess(
    gates: Iterable[Mapping[str, Any]],
    open_outages: Mapping[str, str],
    now: datetime,
    offline_after: timedelta,
    listening_since: datetime | None = None,
) -> Assessment:
    """Which outages begin and end, from the `gates` rows (server.storage.outages.liveness:
    "gate", "last_seen", "status").

    `open_outages` maps gate → since of its open outage. `listening_since` is when the
    collector's current broker connection began: silence is measured from then at the
    earliest (a collector that was down heard nothing), and a stored status older than
    it is not trusted until the broker has delivered the retained one again.
    """
    opened: list[Outage] = []
    ended: list[str] = []
    for row in gates:
        gate = str(row["gate"])
        seen = _parse(row.get("last_seen"))
        if seen is None:
            continue
        status = row.get("status")
        state = status.get("state") if isinstance(status, Mapping) else None
        fresh = listening_since is None or seen >= listening_since
        quiet_from = seen if listening_since is None else max(seen, listening_since)
        cause: Cause | None = None
        if state == "offline" and fresh:
            cause = "offline"
        elif now - quiet_from > offline_after:
            cause = "silent"
        if cause is None:
            if gate in open_outages and state == "online" and fresh:
                ended.append(gate)
            continue
        if gate not in open_outages:
            since = seen.astimezone(UTC).isoformat(timespec="milliseconds")
            opened.append(Outage(gate, since, cause))
    return Assessment(tuple(opened), tuple(ended))


FAULT_TEXT_MAX = 200
"""Characters kept of each text of a reported storage fault (it names the alert's key)."""


def storage_fault(status: Mapping[str, Any]) -> dict[str, str] | None:
    """The storage fault a gate's status reports ({"kind", "error", "since"}: texts of at most
    FAULT_TEXT_MAX characters, NUL characters as U+FFFD: a status is the gate's free text,
    and PostgreSQL text cannot hold NUL), or None."""
    storage = status.get("storage")
    if not isinstance(storage, Mapping) or storage.get("state") != "fault":
        return None
    return {
        k: str(storage.get(k) or "")[:FAULT_TEXT_MAX].replace("\x00", "\ufffd")
        for k in ("kind", "error", "since")
    }


class GateHealth:
    """Applies `assess` to the store: records outages and raises their alerts. Any number of
    collectors may run `check` at once on one store: it reads and writes in one transaction
    under the `gate_health` lock, so each outage is opened, and its alert raised, once."""

    def __init__(self, store: Store, alerts: AlertStore, offline_after: timedelta) -> None:
        self.store = store
        self.alerts = alerts
        self.offline_after = offline_after

    def open_outages(self) -> dict[str, str]:
        """gate → since (UTC ISO text) of each outage not yet ended."""
        with self.store.read() as tx:
            return outages.open_outages(tx)

    def on_status(self, gate: str, status: Mapping[str, Any]) -> Alert | None:
        """A gate's status arrived: the `storage_fault` alert it raises, when new."""
        fault = storage_fault(status)
        if fault is None:
            return None
        return self.alerts.raise_alert(
            f"storage:{gate}:{fault['since']}",
            "storage_fault",
            gate=gate,
            detail=json.dumps(fault, ensure_ascii=False),
            event_at=fault["since"] or None,
        )

    def check(
        self, now: datetime | None = None, listening_since: datetime | None = None
    ) -> list[Alert]:
        """Record outages that began or ended; return the alerts newly raised by this call
        (none for an outage another collector opened first)."""
        now = now or datetime.now(UTC)
        stamp = now.astimezone(UTC).isoformat(timespec="milliseconds")
        raised: list[Alert] = []
        with self.store.write() as tx:
            lock(tx, "gate_health")
            result = assess(
                gates_db.listing(tx),
                outages.open_outages(tx),
                now,
                self.offline_after,
                listening_since,
            )
            for outage in result.opened:
                if not outages.open_(
                    tx,
                    outage.gate,
                    since=outage.since,
                    cause=outage.cause,
                    alert_key=outage.key,
                    opened_at=stamp,
                ):
                    continue  # opened by another collector
                alert = self.alerts.raise_alert(
                    outage.key,
                    "gate_offline",
                    gate=outage.gate,
                    detail=json.dumps({"cause": outage.cause, "since": outage.since}),
                    event_at=outage.since,
                    tx=tx,
                )
                if alert is not None:
                    raised.append(alert)
            outages.end(tx, result.ended, stamp)
        return raised
