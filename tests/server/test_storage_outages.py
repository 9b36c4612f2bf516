"""server/storage/outages.py and the gate-health check on SQLite and on a real PostgreSQL:
one open outage per gate, a lost race told as such, and several collectors checking at once
raising each outage's alert once."""

from __future__ import annotations

import threading
from datetime import UTC, datetime, timedelta

from server.alerts import Alert, AlertStore
from server.gate_health import GateHealth
from server.storage import Store, outages
from server.storage.gates import listing
from server.storage.schema import alerts, gate_outages
from tests.server.storage_rows import count, in_thread, put_gate, wait_blocked

SINCE = "2026-03-01T00:00:00.000+00:00"
LATER = "2026-03-01T01:00:00.000+00:00"


def open_east(store: Store, since: str = SINCE) -> bool:
    with store.write() as tx:
        return outages.open_(
            tx,
            "east",
            since=since,
            cause="offline",
            alert_key=f"offline:east:{since}",
            opened_at=since,
        )


def test_a_gate_has_one_open_outage_at_a_time(store: Store) -> None:
    assert open_east(store)
    assert not open_east(store, LATER), "already open: nothing changes"
    with store.read() as tx:
        assert outages.open_outages(tx) == {"east": SINCE}
    with store.write() as tx:
        assert outages.end(tx, ["east", "west"], LATER) == 1
        assert outages.end(tx, [], LATER) == 0
    with store.read() as tx:
        assert outages.open_outages(tx) == {}
    assert open_east(store, LATER)
    with store.read() as tx:
        assert outages.open_outages(tx) == {"east": LATER}
    assert count(store, gate_outages) == 2


def test_of_two_transactions_opening_one_outage_exactly_one_does(store: Store) -> None:
    with store.write() as tx:
        assert outages.open_(
            tx, "east", since=SINCE, cause="silent", alert_key="k", opened_at=SINCE
        )
        other, result = in_thread(lambda: open_east(store))
        wait_blocked(store, other)
    other.join(30)
    assert result == [False]
    assert count(store, gate_outages) == 1


def test_the_gate_listing_reads_last_seen_and_the_retained_status(store: Store) -> None:
    put_gate(store, "west", SINCE, {"gate": "west", "state": "offline"})
    put_gate(store, "east", LATER, None)
    with store.read() as tx:
        heard = [{k: g[k] for k in ("gate", "last_seen", "status")} for g in listing(tx)]
        assert heard == [
            {"gate": "east", "last_seen": LATER, "status": None},
            {"gate": "west", "last_seen": SINCE, "status": {"gate": "west", "state": "offline"}},
        ]


def test_collectors_checking_at_once_raise_each_outage_once(store: Store) -> None:
    """Four collectors' gate-health checks on one store, started together, several rounds:
    every gate's outage is opened once and its alert raised once, returned to one of them."""
    seen = datetime.now(UTC) - timedelta(minutes=1)
    for gate in ("east", "west", "north"):
        put_gate(store, gate, seen.isoformat(timespec="milliseconds"), {"state": "offline"})
    start = threading.Barrier(4)
    raised: list[Alert] = []

    def collector() -> None:
        health = GateHealth(store, AlertStore(store), timedelta(minutes=5))
        for _ in range(3):
            start.wait(30)
            raised.extend(health.check())

    threads = [in_thread(collector) for _ in range(4)]
    for t, result in threads:
        t.join(60)
        assert result == [None], result
    assert sorted(a.gate or "" for a in raised) == ["east", "north", "west"]
    assert count(store, alerts) == 3 and count(store, gate_outages) == 3
    with store.read() as tx:
        assert sorted(outages.open_outages(tx)) == ["east", "north", "west"]
