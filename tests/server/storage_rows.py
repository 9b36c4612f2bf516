"""Rows put straight into a store's tables for the storage layer's tests (on SQLite and
PostgreSQL alike: the collector's ingestion is not what these tests are about), and a way
to see that a transaction of another thread waits for a lock."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from typing import Any

from sqlalchemy import func, insert, select, text

from protocol.events import Event
from server.storage import Store
from server.storage.events import event_row
from server.storage.schema import events, gates, households, passes
from tests.e2e.helpers import make_event

SITE = "test-site"
RECEIVED = "2026-03-01T00:00:00.000+00:00"


def put_events(store: Store, *evs: Event) -> None:
    """Store events as the collector does (columns, `at_us`, body as exported)."""
    with store.write() as tx:
        tx.execute(insert(events), [event_row(e.gate, e, RECEIVED) for e in evs])


def event(gate: str, seq: int, **kw: Any) -> Event:
    return make_event(SITE, gate, seq, **kw)


def put_gate(store: Store, gate: str, last_seen: str, status: dict[str, Any] | None) -> None:
    with store.write() as tx:
        tx.execute(
            insert(gates).values(
                gate=gate,
                last_seen=last_seen,
                status=None if status is None else json.dumps(status),
            )
        )


def put_household(store: Store, household: str, **place: str) -> None:
    with store.write() as tx:
        tx.execute(insert(households).values(household=household, updated_at=RECEIVED, **place))


def put_pass(store: Store, pass_id: int, household: str, name: str, role: str) -> None:
    with store.write() as tx:
        tx.execute(
            insert(passes).values(
                pass_id=pass_id,
                household=household,
                name=name,
                role=role,
                valid_from=0,
                valid_until=2_000_000_000,
                key_id=1,
                qr="qr",
                issued_at=RECEIVED,
            )
        )


def count(store: Store, table: Any) -> int:
    with store.read() as tx:
        return int(tx.scalar(select(func.count()).select_from(table)) or 0)


def in_thread(fn: Callable[[], Any]) -> tuple[threading.Thread, list[Any]]:
    """Run `fn` in a thread of its own; its result (or exception) lands in the list."""
    out: list[Any] = []

    def run() -> None:
        try:
            out.append(fn())
        except BaseException as exc:  # handed to the test, which asserts on it
            out.append(exc)

    t = threading.Thread(target=run, daemon=True)
    t.start()
    return t, out


def wait_blocked(store: Store, thread: threading.Thread, timeout: float = 30) -> None:
    """Until `thread`'s transaction waits for a lock another transaction holds: on PostgreSQL
    seen in pg_locks; SQLite shows no waiters, so there a moment is given to reach its lock
    (the test's assertions hold whichever comes first)."""
    if store.backend == "sqlite":
        thread.join(0.3)
        return
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with store.read() as tx:
            if tx.scalar(text("SELECT count(*) FROM pg_locks WHERE NOT granted")):
                return
        assert thread.is_alive(), "the other transaction did not wait"
        time.sleep(0.02)
    raise AssertionError("the other transaction never waited for the lock")
