"""The collector's events and gates (server/storage/events.py, gates.py) on SQLite and
PostgreSQL: idempotent on (gate, epoch, seq), contiguous acks, conflicts."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

from sqlalchemy import select

from server.storage import Store, meta
from server.storage import events as events_db
from server.storage.alerts import missing_from_gate
from server.storage.schema import conflicts, rejected_messages
from server.storage.times import utcnow
from tests import collected
from tests.e2e.helpers import make_event


def missing(
    store: Store, gate: str, epoch: str, confirmed: int, new_epoch: str
) -> list[tuple[int, int]]:
    with store.read() as tx:
        return missing_from_gate(tx, gate, epoch, confirmed, new_epoch)


def ev(seq: int, gate: str = "g1"):
    return make_event("test-site", gate, seq)


def test_same_batch_twice_is_stored_once(store: Store) -> None:
    batch = [ev(1), ev(2), ev(3)]
    first = collected.insert_events(store, "g1", batch)
    second = collected.insert_events(store, "g1", batch)
    assert (first.inserted, first.duplicates, first.conflicts, first.contiguous_seq) == (3, 0, 0, 3)
    assert (second.inserted, second.duplicates, second.conflicts, second.contiguous_seq) == (
        0,
        3,
        0,
        3,
    )
    assert collected.count_events(store) == 3
    assert sorted(collected.event_keys(store)) == sorted(
        ("g1", e.epoch, e.seq, e.uuid) for e in batch
    )
    assert collected.conflicts(store) == []


def test_partial_overlap_counts_only_new_events(store: Store) -> None:
    a, b, c = ev(1), ev(2), ev(3)
    collected.insert_events(store, "g1", [a, b])
    r = collected.insert_events(store, "g1", [b, c])
    assert (r.inserted, r.duplicates, r.contiguous_seq) == (1, 1, 3)
    assert collected.count_events(store) == 3


def test_contiguous_seq_stops_at_a_gap_and_advances_when_it_fills(store: Store) -> None:
    r = collected.insert_events(store, "g1", [ev(1), ev(2), ev(4)])
    assert r.contiguous_seq == 2
    assert collected.contiguous_seq(store, "g1") == 2
    r = collected.insert_events(store, "g1", [ev(3)])
    assert r.contiguous_seq == 4
    assert collected.contiguous_seq(store, "g1") == 4


def test_out_of_order_batch_and_seq_not_starting_at_one(store: Store) -> None:
    r = collected.insert_events(store, "g1", [ev(3), ev(2)])
    assert r.contiguous_seq == 0, "seq 1 is missing: nothing may be acknowledged"
    r = collected.insert_events(store, "g1", [ev(1)])
    assert r.contiguous_seq == 3


def test_gates_are_independent(store: Store) -> None:
    collected.insert_events(store, "g1", [ev(1), ev(2)])
    collected.insert_events(store, "g2", [ev(1, "g2")])
    assert collected.contiguous_seq(store, "g1") == 2
    assert collected.contiguous_seq(store, "g2") == 1
    assert collected.contiguous_seq(store, "never-seen") == 0
    assert {g["gate"]: g["contiguous_seq"] for g in collected.gates(store)} == {"g1": 2, "g2": 1}


def test_same_seq_with_another_uuid_is_a_conflict_not_an_overwrite(store: Store) -> None:
    original = ev(1)
    collected.insert_events(store, "g1", [original])
    impostor = dataclasses.replace(ev(1), reason="expired", decision="deny")
    r = collected.insert_events(store, "g1", [impostor])
    assert (r.inserted, r.duplicates, r.conflicts, r.contiguous_seq) == (0, 0, 1, 1)
    (stored,) = list(collected.events(store))
    assert stored["uuid"] == original.uuid
    assert stored["reason"] == "ok"
    (conflict,) = collected.conflicts(store)
    assert conflict["gate"] == "g1"
    assert conflict["seq"] == 1
    assert conflict["kind"] == "seq_reused"
    assert original.uuid in conflict["detail"]
    with store.read() as tx:
        body = tx.scalar(select(conflicts.c.body))
    assert json.loads(body)["uuid"] == impostor.uuid, "the refused event is kept for operators"


def test_stored_body_round_trips(store: Store) -> None:
    e = make_event("test-site", "g1", 1, temperature_c=36.6, detail={"skin_c": 34.5})
    collected.insert_events(store, "g1", [e])
    (body,) = list(collected.events(store))
    assert body == e.to_json()


def test_rejected_messages_are_recorded(store: Store) -> None:
    with store.read() as tx:
        assert events_db.rejected_count(tx) == 0
    with store.write() as tx:
        topic = "menwei/test-site/g1/events"
        events_db.reject_message(tx, topic, "batch is not JSON", b"\xff\xfe garbage", now=utcnow())
        events_db.reject_message(tx, topic, "x" * 1000, b"y" * 5000, now=utcnow())
    with store.read() as tx:
        assert events_db.rejected_count(tx) == 2
        rows = tx.execute(
            select(
                rejected_messages.c.topic, rejected_messages.c.reason, rejected_messages.c.excerpt
            ).order_by(rejected_messages.c.id)
        ).all()
    assert rows[0][0] == "menwei/test-site/g1/events"
    assert rows[0][1] == "batch is not JSON"
    assert "garbage" in rows[0][2]
    assert len(rows[1][1]) <= 500 and len(rows[1][2]) <= 200, "bounded, whatever arrives"


def test_data_survives_reopening(tmp_path: Path) -> None:
    path = f"sqlite:///{tmp_path / 'server.db'}"
    with Store(path) as s:
        collected.insert_events(s, "g1", [ev(1), ev(2), ev(4)])
        with s.write() as tx:
            meta.put(tx, "k", "v")
    with Store(path) as s:
        assert collected.count_events(s) == 3
        assert collected.contiguous_seq(s, "g1") == 2
        with s.read() as tx:
            assert meta.get(tx, "k") == "v"
        assert collected.insert_events(s, "g1", [ev(3)]).contiguous_seq == 4


def test_a_new_epoch_numbers_from_one_beside_the_old_one(store: Store) -> None:
    from dataclasses import replace

    old = [replace(make_event("s", "g1", n), epoch="aa") for n in (1, 2, 3)]
    first = collected.insert_events(store, "g1", old)
    assert (first.contiguous_seq, first.epoch, first.replaced_epoch) == (3, "aa", None)
    new = [replace(make_event("s", "g1", n), epoch="bb") for n in (1, 2)]
    second = collected.insert_events(store, "g1", new)
    assert (second.inserted, second.conflicts) == (2, 0)
    assert (second.contiguous_seq, second.epoch, second.replaced_epoch) == (2, "bb", "aa")
    again = collected.insert_events(store, "g1", new)  # a resend of the new epoch
    assert (again.duplicates, again.replaced_epoch, again.contiguous_seq) == (2, None, 2)
    assert collected.count_events(store) == 5 and collected.conflicts(store) == []


def test_a_reused_seq_is_recorded_once_however_often_it_is_resent(store: Store) -> None:
    """A gate that lost its history numbers new events with seqs the collector holds, and
    resends them every resend_after_s while they stay unacknowledged."""
    held = [ev(1), ev(2)]
    collected.insert_events(store, "g1", held)
    reused = [ev(1), ev(2)]
    for _ in range(8):
        r = collected.insert_events(store, "g1", reused)
        # Acknowledged at the first reused seq, naming the event held here: the gate sees
        # another event than its own there and moves to a new epoch.
        assert (r.inserted, r.conflicts, r.contiguous_seq) == (0, 2, 1)
        assert r.contiguous_uuid == held[0].uuid != reused[0].uuid
    rows = collected.conflicts(store)
    assert [(c["seq"], c["kind"]) for c in rows] == [(1, "seq_reused"), (2, "seq_reused")]


def test_an_event_renumbered_under_a_new_epoch_is_stored_once(store: Store) -> None:
    """A gate moved to a new epoch after losing history sends its unconfirmed events again,
    numbered from 1: those the collector already holds are not stored twice, yet the new
    epoch's numbering has no gap, and the ack names the event at its seq."""
    old = [dataclasses.replace(ev(s), epoch="aa") for s in (1, 2, 3)]
    collected.insert_events(store, "g1", old)
    moved = [dataclasses.replace(e, epoch="bb", seq=i) for i, e in enumerate(old[1:], 1)]
    fresh = dataclasses.replace(ev(3), epoch="bb")
    r = collected.insert_events(store, "g1", [*moved, fresh])
    assert (r.inserted, r.duplicates, r.renumbered, r.conflicts) == (1, 0, 2, 0)
    assert (r.epoch, r.contiguous_seq, r.contiguous_uuid) == ("bb", 3, fresh.uuid)
    assert collected.count_events(store) == 4
    assert sorted(collected.alias_keys(store)) == [
        ("g1", "bb", 1, old[1].uuid),
        ("g1", "bb", 2, old[2].uuid),
    ]
    again = collected.insert_events(store, "g1", moved)
    assert (again.inserted, again.renumbered, again.contiguous_seq) == (0, 2, 3)
    assert missing(store, "g1", "aa", 0, "bb") == [(1, 1)]
    assert missing(store, "g1", "aa", 1, "bb") == []


def test_the_missing_range_is_what_the_gate_did_not_send_again(store: Store) -> None:
    collected.insert_events(
        store, "g1", [dataclasses.replace(ev(s), epoch="aa") for s in range(1, 10)]
    )
    assert missing(store, "g1", "aa", 3, "bb") == [(4, 9)]
    assert missing(store, "g1", "aa", 9, "bb") == []


def test_rejected_messages_older_than_the_retention_are_purged(store: Store) -> None:
    topic = "menwei/test-site/g1/events"
    with store.write() as tx:
        events_db.reject_message(tx, topic, "old", b"x", now="2026-01-01T00:00:00.000+00:00")
        events_db.reject_message(tx, topic, "new", b"x", now="2026-03-01T00:00:00.000+00:00")
    with store.write() as tx:
        assert events_db.purge_rejected(tx, before="2026-02-01T00:00:00.000+00:00") == 1
    with store.read() as tx:
        assert [reason for _t, reason, _e in events_db.rejected(tx)] == ["new"]
        assert events_db.rejected_count(tx) == 1, "the old day's count is purged with it"


def test_refusals_are_all_counted_and_a_bounded_sample_kept(store: Store) -> None:
    topic, other = "menwei/test-site/g1/events", "menwei/test-site/g2/events"
    now = "2026-03-01T00:00:00.000+00:00"
    with store.write() as tx:
        kept = [
            events_db.reject_message(tx, topic, f"r{n}", b"x", now=now)
            for n in range(events_db.SAMPLES_PER_TOPIC_DAY + 5)
        ]
        assert events_db.reject_message(tx, other, "a batch's 40 events", b"y", now=now, count=40)
        # A new day: samples again.
        assert events_db.reject_message(tx, topic, "next", b"z", now="2026-03-02T00:00:00Z")
    assert kept == [True] * events_db.SAMPLES_PER_TOPIC_DAY + [False] * 5
    with store.read() as tx:
        assert events_db.rejected_count(tx) == events_db.SAMPLES_PER_TOPIC_DAY + 5 + 40 + 1
        assert len(events_db.rejected(tx)) == events_db.SAMPLES_PER_TOPIC_DAY + 2
