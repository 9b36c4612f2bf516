"""Retention on the gate: old acknowledged events go, nothing unacknowledged ever does."""

from __future__ import annotations

import io
import uuid
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path

from edge.config import load_config
from edge.daemon import GateDaemon
from edge.store import GateStore
from protocol.events import Event

NOW = datetime(2026, 11, 29, 8, 0, tzinfo=UTC)


def event_at(at: datetime) -> Event:
    return Event(
        site="s",
        gate="g",
        seq=0,
        uuid=str(uuid.uuid4()),
        at=at.isoformat(timespec="milliseconds"),
        clock_trusted=True,
        kind="decision",
        decision="allow",
        reason="ok",
        direction="in",
        temperature_c=36.5,
        pass_id=1,
        household="1-1-101",
        role="resident",
    )


def fill(store: GateStore, days_ago: list[int]) -> None:
    for d in days_ago:
        e = event_at(NOW - timedelta(days=d))
        store.append(lambda seq, e=e: replace(e, seq=seq), state=None, clock_floor=0.0)


def test_purge_drops_old_acknowledged_events_only(tmp_path: Path) -> None:
    with GateStore(tmp_path / "gate.db") as store:
        fill(store, [200, 150, 120, 100, 10, 1])  # seqs 1..6
        store.mark_acked(3)  # 4..6 still in the outbox
        deleted = store.purge((NOW - timedelta(days=90)).isoformat(timespec="milliseconds"))
        assert deleted == 3
        assert [e.event.seq for e in store.log()] == [4, 5, 6]  # seq 4 is old but unacked
        assert store.backlog() == 3


def test_numbering_continues_after_everything_old_is_purged(tmp_path: Path) -> None:
    with GateStore(tmp_path / "gate.db") as store:
        fill(store, [300, 200, 100])
        store.mark_acked(3)
        assert store.purge(NOW.isoformat()) == 2  # the newest stays: numbering goes on from it
        fill(store, [0])
        assert [e.event.seq for e in store.log()] == [3, 4]


def test_the_daemon_purges_at_start_by_its_configured_retention(gate_dir: Path) -> None:
    toml = gate_dir / "gate.toml"
    toml.write_text(toml.read_text() + "\n[storage]\nretention_days = 30\n")
    config = load_config(toml)
    with GateStore(config.db_path) as store:
        now = datetime.now(UTC)
        for d in (60, 45, 1):
            e = event_at(now - timedelta(days=d))
            store.append(lambda seq, e=e: replace(e, seq=seq), state=None, clock_floor=0.0)
        store.mark_acked(3)
    daemon = GateDaemon(config, broker="none", out=io.StringIO())
    try:
        assert daemon._maybe_purge() == 2
        assert daemon._maybe_purge() == 0  # not again before purge_interval_h
        assert [e.event.seq for e in daemon.store.log()] == [3]
    finally:
        daemon.close()
