"""The gate's SQLite store: the log, its outbox, acknowledgements, state and clock floor."""

from __future__ import annotations

import sqlite3
import uuid
from collections.abc import Callable
from pathlib import Path

import pytest

from edge.store import GateStore
from protocol.events import Event


def builder(reason: str = "ok", **kw: object) -> Callable[[int], Event]:
    def build(seq: int) -> Event:
        return Event(
            site="test-site",
            gate="east",
            seq=seq,
            uuid=str(uuid.uuid4()),
            at="2026-11-29T08:00:00.000+00:00",
            clock_trusted=True,
            kind="decision",
            decision="allow" if reason == "ok" else "deny",
            reason=reason,
            direction="in",
            temperature_c=36.6,
            pass_id=seq,
            household=f"hh-{seq}",
            role="resident",
            versions={"config": 1, "register": 2},
            **kw,  # type: ignore[arg-type]
        )

    return build


@pytest.fixture
def store(tmp_path: Path):
    with GateStore(tmp_path / "gate.db") as s:
        yield s


def fill(store: GateStore, n: int) -> list[Event]:
    return [store.append(builder(), state={"n": i}, clock_floor=1000.0 + i) for i in range(n)]


def seqs(events: list[Event]) -> list[int]:
    return [e.seq for e in events]


def test_append_assigns_seq_1_to_n_and_the_outbox_holds_them(store):
    events = fill(store, 5)

    assert seqs(events) == [1, 2, 3, 4, 5]
    assert (store.last_seq(), store.backlog(), store.acked_seq()) == (5, 5, 0)
    assert store.unacked(0, 100) == events
    assert [logged.event for logged in store.log()] == events


def test_empty_store(store):
    assert (store.last_seq(), store.backlog(), store.acked_seq()) == (0, 0, 0)
    assert (store.unacked(0, 10), list(store.log()), store.state()) == ([], [], None)
    assert store.clock_floor() == 0.0


def test_unacked_pages(store):
    fill(store, 10)

    assert seqs(store.unacked(0, 3)) == [1, 2, 3]
    assert seqs(store.unacked(3, 3)) == [4, 5, 6]
    assert seqs(store.unacked(9, 3)) == [10]
    assert store.unacked(10, 3) == []
    assert store.unacked(0, 0) == []
    store.mark_acked(4)
    assert seqs(store.unacked(0, 3)) == [5, 6, 7]  # acknowledged ones are gone from the outbox


def test_mark_acked_clears_only_up_to_seq_and_never_goes_back(store):
    fill(store, 6)

    assert store.mark_acked(4) == 4
    assert (seqs(store.unacked(0, 100)), store.acked_seq(), store.backlog()) == ([5, 6], 4, 2)

    assert store.mark_acked(2) == 0  # a stale (retained, reordered) ack
    assert store.mark_acked(4) == 0  # the same ack again
    assert (store.acked_seq(), store.backlog()) == (4, 2)

    assert store.mark_acked(6) == 2
    assert (store.acked_seq(), store.backlog(), store.unacked(0, 100)) == (6, 0, [])
    assert store.last_seq() == 6  # the log itself is kept


def test_log_shows_acked_and_pending(store):
    fill(store, 4)
    store.mark_acked(2)
    store.append(builder("fever"), state=None, clock_floor=2000.0)

    rows = [(row.event.seq, row.event.reason, row.acked) for row in store.log()]

    assert rows == [
        (1, "ok", True),
        (2, "ok", True),
        (3, "ok", False),
        (4, "ok", False),
        (5, "fever", False),
    ]


def test_state_and_clock_floor_are_written_with_the_event(store):
    store.append(
        builder(), state={"fever_pending": {"1": "2026-11-29T08:00:00+00:00"}}, clock_floor=1234.5
    )

    assert store.state() == {"fever_pending": {"1": "2026-11-29T08:00:00+00:00"}}
    assert store.clock_floor() == 1234.5

    store.append(builder(), state=None, clock_floor=1240.0)  # None: the state did not change
    assert store.state() == {"fever_pending": {"1": "2026-11-29T08:00:00+00:00"}}
    assert store.clock_floor() == 1240.0


def test_the_clock_floor_never_goes_back(store):
    store.append(builder(), state=None, clock_floor=5000.0)
    store.append(builder(), state=None, clock_floor=4000.0)
    assert store.clock_floor() == 5000.0

    store.save_clock_floor(4500.0)
    assert store.clock_floor() == 5000.0
    store.save_clock_floor(6000.0)
    assert store.clock_floor() == 6000.0


def test_failure_inside_build_writes_nothing(store):
    first = store.append(builder(), state={"n": 1}, clock_floor=100.0)

    def broken(seq: int) -> Event:
        raise RuntimeError("the recorder failed")

    with pytest.raises(RuntimeError):
        store.append(broken, state={"n": 2}, clock_floor=200.0)

    assert [row.event for row in store.log()] == [first]
    assert (store.backlog(), store.state(), store.clock_floor()) == (1, {"n": 1}, 100.0)
    assert seqs([store.append(builder(), state=None, clock_floor=300.0)]) == [2]


def test_failure_after_the_rows_are_written_rolls_them_back(store):
    first = store.append(builder(), state={"n": 1}, clock_floor=100.0)

    # The event and outbox rows are inserted, then the state cannot be serialised.
    with pytest.raises(TypeError):
        store.append(builder(), state={"n": object()}, clock_floor=200.0)

    assert [row.event for row in store.log()] == [first]
    assert (store.last_seq(), store.backlog()) == (1, 1)
    assert (store.state(), store.clock_floor()) == ({"n": 1}, 100.0)


def test_duplicate_uuid_is_refused_and_rolled_back(store):
    first = store.append(builder(), state={"n": 1}, clock_floor=100.0)

    def same_uuid(seq: int) -> Event:
        e = builder()(seq)
        return Event(**{**e.__dict__, "uuid": first.uuid})

    with pytest.raises(sqlite3.IntegrityError):
        store.append(same_uuid, state={"n": 2}, clock_floor=200.0)
    assert (store.last_seq(), store.backlog(), store.state()) == (1, 1, {"n": 1})


def test_everything_is_still_there_after_reopening(tmp_path):
    path = tmp_path / "gate.db"
    with GateStore(path) as store:
        events = fill(store, 3)
        store.mark_acked(1)
        store.save_document("register", 9, "2026-11-29T08:00:00+00:00", b'{"version": 9}')

    with GateStore(path) as store:
        assert [(row.event, row.acked) for row in store.log()] == list(
            zip(events, [True, False, False], strict=True)
        )
        assert (store.acked_seq(), store.backlog(), store.state(), store.clock_floor()) == (
            1,
            2,
            {"n": 2},
            1002.0,
        )
        assert store.document("register") == b'{"version": 9}'
        assert store.document("config") is None
        assert seqs([store.append(builder(), state=None, clock_floor=0.0)]) == [4]


def test_newer_document_replaces_the_held_one(store):
    store.save_document("config", 1, "t1", b"one")
    store.save_document("config", 2, "t2", b"two")
    assert store.document("config") == b"two"


def test_wal_and_synchronous_full(tmp_path):
    path = tmp_path / "gate.db"
    with GateStore(path) as store:
        assert store.db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert store.db.execute("PRAGMA synchronous").fetchone()[0] == 2  # FULL
        fill(store, 1)
    # WAL is a property of the file: another reader (the guard page, a backup) sees it too.
    other = sqlite3.connect(path)
    try:
        assert other.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    finally:
        other.close()


def test_close_is_idempotent(tmp_path):
    store = GateStore(tmp_path / "sub" / "gate.db")
    store.close()
    store.close()
    assert (tmp_path / "sub" / "gate.db").exists()


def test_each_new_database_has_its_own_epoch_stamped_on_every_event(tmp_path):
    from dataclasses import replace as with_

    from tests.e2e.helpers import make_event

    epochs = []
    for name in ("a.db", "b.db"):
        with GateStore(tmp_path / name) as store:
            event = store.append(
                lambda seq: with_(make_event("s", "g", seq), epoch=""), state=None, clock_floor=0.0
            )
            assert event.epoch == store.epoch and len(store.epoch) == 16
            assert [e.event.epoch for e in store.log()] == [store.epoch]
            epochs.append(store.epoch)
        with GateStore(tmp_path / name) as reopened:
            assert reopened.epoch == epochs[-1]  # stable across restarts
    assert epochs[0] != epochs[1]


def test_a_stale_low_ack_is_ignored_and_a_lasting_one_requeues(tmp_path):
    """A queued old ack (persistent session) is followed by newer ones: nothing to do. An ack
    that stays low is asked again once (the event at the gate's ack is sent again: of two
    collectors' acks the lower may have reached the broker last); still low after that (the
    collector's store was restored), the lost events are sent again."""
    import time
    from dataclasses import replace as with_

    from edge.sync import GateSync, SyncSettings
    from protocol.broker import parse_broker
    from protocol.events import Ack
    from tests.e2e.helpers import make_event

    with GateStore(tmp_path / "gate.db") as store:
        for _ in range(5):
            store.append(lambda seq: with_(make_event("s", "g", seq)), state=None, clock_floor=0.0)
        store.mark_acked(5)
        sync = GateSync(
            SyncSettings("s", "g", parse_broker("mqtt://127.0.0.1:1"), resend_after_s=1.0),
            store,
            on_document=lambda kind, raw: None,
            status=dict,
        )
        sync.sent_up_to = 5

        def ack(n: int) -> None:
            sync._handle_ack(Ack("g", n, store.epoch).encode())

        ack(3)
        ack(5)  # the newer ones follow at once
        sync._requeue_if_collector_lost_events(time.monotonic() + 100)
        assert (sync.stats["requeued"], store.backlog(), store.acked_seq()) == (0, 0, 5)
        ack(3)
        sync._requeue_if_collector_lost_events(time.monotonic() + 0.5)  # not yet
        assert store.backlog() == 0
        sync._requeue_if_collector_lost_events(time.monotonic() + 100)
        assert (sync.stats["probes"], sync.stats["requeued"]) == (1, 0), "asked again first"
        assert (store.backlog(), store.acked_seq(), sync.acked) == (0, 5, 5)
        ack(3)  # the collector's answer: still 3
        sync._requeue_if_collector_lost_events(time.monotonic() + 100.5)  # not yet
        assert store.backlog() == 0
        sync._requeue_if_collector_lost_events(time.monotonic() + 200)
        assert (sync.stats["requeued"], store.backlog(), store.acked_seq()) == (2, 2, 3)
        assert [e.seq for e in store.unacked(0, 10)] == [4, 5]
        assert sync.stats["probes"] == 1


def test_event_at_gives_a_logged_event_acknowledged_or_not_in_the_current_epoch(store):
    events = fill(store, 4)
    store.mark_acked(3)
    assert store.event_at(3) == events[2] and store.event_at(4) == events[3]
    assert store.event_at(0) is None and store.event_at(5) is None
    move, _ = store.start_new_epoch(3)
    assert store.event_at(1) is not None and store.event_at(1).uuid == events[3].uuid
    assert store.event_at(1).epoch == move.epoch and store.event_at(2) is None


def test_a_new_epoch_renumbers_the_unconfirmed_events_from_1(store):
    events = fill(store, 5)
    store.mark_acked(2)
    lost = store.epoch

    move, alert = store.start_new_epoch(9, lambda m, seq: builder("gate_history_lost")(seq))

    assert (move.lost_epoch, move.confirmed_seq, move.last_seq, move.collector_seq) == (
        lost,
        2,
        5,
        9,
    )
    assert move.epoch == store.epoch != lost and move.moved == 3
    assert alert is not None and (alert.epoch, alert.seq) == (move.epoch, 4)
    sent = store.unacked(0, 100)
    assert [(e.epoch, e.seq, e.uuid) for e in sent] == [
        (move.epoch, 1, events[2].uuid),
        (move.epoch, 2, events[3].uuid),
        (move.epoch, 3, events[4].uuid),
        (move.epoch, 4, alert.uuid),
    ]
    assert [e.detail.get("moved_from") for e in sent] == [
        {"epoch": lost, "seq": 3},
        {"epoch": lost, "seq": 4},
        {"epoch": lost, "seq": 5},
        None,
    ]
    assert (store.last_seq(), store.acked_seq(), store.backlog()) == (4, 0, 4)
    assert store.uuid_at(1) == events[2].uuid and store.uuid_at(5) is None
    nxt = store.append(builder(), state=None, clock_floor=0.0)
    assert (nxt.epoch, nxt.seq) == (move.epoch, 5)
    assert store.mark_acked(3) == 3
    assert [e.seq for e in store.unacked(0, 100)] == [4, 5]
    # The log keeps every event in order, each under the number it now has.
    logged = [(item.event.epoch, item.event.seq) for item in store.log()]
    assert logged == [(lost, 1), (lost, 2), *[(move.epoch, s) for s in range(1, 6)]]


def test_the_new_epoch_survives_a_restart(tmp_path):
    with GateStore(tmp_path / "gate.db") as store:
        fill(store, 3)
        store.mark_acked(1)
        move, _ = store.start_new_epoch(7)
    with GateStore(tmp_path / "gate.db") as store:
        assert store.epoch == move.epoch
        assert (store.last_seq(), store.acked_seq(), store.backlog()) == (2, 0, 2)
        assert store.append(builder(), state=None, clock_floor=0.0).seq == 3


def test_an_ack_for_history_this_gate_does_not_hold_moves_it_to_a_new_epoch(tmp_path):
    """Beyond the last seq, or another event at the acknowledged seq: the collector holds
    what this database lost (a damaged WAL). Acknowledging by those numbers would drop
    events; the gate moves on under a new epoch instead."""
    from dataclasses import replace as with_

    from edge.sync import GateSync, SyncSettings
    from protocol.broker import parse_broker
    from protocol.events import Ack
    from tests.e2e.helpers import make_event

    with GateStore(tmp_path / "gate.db") as store:
        events = [
            store.append(lambda seq: with_(make_event("s", "g", seq)), state=None, clock_floor=0.0)
            for _ in range(4)
        ]
        sync = GateSync(
            SyncSettings("s", "g", parse_broker("mqtt://127.0.0.1:1")),
            store,
            on_document=lambda kind, raw: None,
            status=dict,
        )
        first = store.epoch
        sync._handle_ack(Ack("g", 2, first, events[1].uuid).encode())  # ours: acknowledged
        assert (store.acked_seq(), store.backlog(), sync.stats["history_lost"]) == (2, 2, 0)

        sync._handle_ack(Ack("g", 3, first, "another-event").encode())
        second = store.epoch
        assert second != first and sync.stats["history_lost"] == 1
        assert (store.last_seq(), store.acked_seq(), store.backlog()) == (2, 0, 2)
        assert [e.uuid for e in store.unacked(0, 10)] == [events[2].uuid, events[3].uuid]

        sync._handle_ack(Ack("g", 3, first, events[2].uuid).encode())  # the old epoch's: foreign
        assert (store.epoch, sync.stats["foreign_acks"]) == (second, 1)
        sync._handle_ack(Ack("g", 9, second).encode())  # beyond our last seq, no uuid needed
        assert store.epoch not in (first, second) and sync.stats["history_lost"] == 2
        assert (store.last_seq(), store.backlog()) == (2, 2)
