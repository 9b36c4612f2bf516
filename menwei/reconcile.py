"""Compare every gate's own log with the collector's store: what was lost, what was doubled."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from edge.store import GateStore
from server.storage import Store
from server.storage import events as events_db


@dataclass(frozen=True)
class Reconciliation:
    gate_events: int
    collector_events: int
    lost: int  # logged by a gate, absent at the collector (under its number or as an alias)
    duplicates: int  # stored more than once at the collector, or stored but never logged
    pending: int  # still in a gate's outbox (not yet acknowledged)


def reconcile(gate_dbs: list[Path], server_db: Path | str) -> Reconciliation:
    """Gates' logs against the collector's store (a SQLite file, or a store URL)."""
    url = server_db if isinstance(server_db, str) else f"sqlite:///{server_db.resolve()}"
    logged: set[tuple[str, str, int, str]] = set()
    pending = 0
    for path in gate_dbs:
        with GateStore(path) as store:
            for item in store.log():
                e = item.event
                logged.add((e.gate, e.epoch, e.seq, e.uuid))
                pending += not item.acked
    with Store(url) as server, server.read() as tx:
        keys = events_db.event_keys(tx)
        aliases = set(events_db.alias_keys(tx))  # renumbered by a gate that lost its history
    counts = Counter(keys)
    stored = set(keys)
    doubled = sum(n - 1 for n in counts.values()) + len(stored - logged)
    return Reconciliation(len(logged), len(keys), len(logged - stored - aliases), doubled, pending)
