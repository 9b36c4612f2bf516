"""server/storage/events.py and gates.py on SQLite and PostgreSQL: a batch stored as if one
event at a time, the columns it fills, long runs of seqs, and writers of one gate at once."""

from __future__ import annotations

import dataclasses
import random
import threading

from sqlalchemy import select

from protocol.events import Event
from server.storage import Store
from server.storage import events as events_db
from server.storage import gates as gates_db
from server.storage.gates import RUN_CHUNK
from server.storage.schema import events
from server.storage.times import instant_us, utcnow
from tests import collected
from tests.e2e.helpers import make_event


def ev(seq: int, gate: str = "g1", **kw: object) -> Event:
    return make_event("test-site", gate, seq, **kw)


def test_a_batch_sees_its_own_earlier_events(store: Store) -> None:
    """Within one batch, as one event at a time: the same event twice is one duplicate,
    another event at a seq taken by an earlier one is refused, and the same event under a
    second number is an alias."""
    first, impostor = ev(1), ev(1, reason="expired")
    renumbered = dataclasses.replace(first, seq=2)
    r = collected.insert_events(store, "g1", [first, first, impostor, renumbered])
    assert (r.inserted, r.duplicates, r.conflicts, r.renumbered) == (1, 1, 1, 1)
    assert (r.contiguous_seq, r.contiguous_uuid) == (1, first.uuid)
    assert r.new_events == (first,)
    assert collected.event_keys(store) == [("g1", first.epoch, 1, first.uuid)]
    assert collected.alias_keys(store) == [("g1", first.epoch, 2, first.uuid)]
    (conflict,) = collected.conflicts(store)
    assert (conflict["kind"], conflict["seq"]) == ("seq_reused", 1)
    assert first.uuid in conflict["detail"]


def test_columns_of_a_stored_event(store: Store) -> None:
    e = ev(1, at="2026-03-01T08:00:00.250+08:00", role="visitor", direction="in")
    collected.insert_events(store, "g1", [e])
    with store.read() as tx:
        row = tx.execute(
            select(events.c.at, events.c.at_us, events.c.role, events.c.direction)
        ).one()
    assert tuple(row) == (e.at, instant_us("2026-03-01T00:00:00.250+00:00"), "visitor", "in")


def test_a_long_run_of_seqs_and_a_gap_in_it(store: Store) -> None:
    """The contiguous seq is read in chunks: a run longer than a chunk is walked to its end,
    and stops at a gap however far it is."""
    n = 2 * RUN_CHUNK + 37
    gap = RUN_CHUNK + 5
    seqs = [s for s in range(2, n + 1) if s != gap]
    random.Random(9).shuffle(seqs)
    for i in range(0, len(seqs), 400):
        r = collected.insert_events(store, "g1", [ev(s) for s in seqs[i : i + 400]])
        assert r.contiguous_seq == 0, "seq 1 is missing"
    assert collected.insert_events(store, "g1", [ev(1)]).contiguous_seq == gap - 1
    filled = collected.insert_events(store, "g1", [ev(gap)])
    assert filled.contiguous_seq == n
    assert collected.contiguous_seq(store, "g1") == n


def test_an_empty_batch_acknowledges_what_is_held(store: Store) -> None:
    collected.insert_events(store, "g1", [dataclasses.replace(ev(s), epoch="ab") for s in (1, 2)])
    r = collected.insert_events(store, "g1", [])
    assert (r.inserted, r.epoch, r.contiguous_seq, r.replaced_epoch) == (0, "ab", 2, None)


def test_gate_status_keeps_the_last_figures_when_the_gate_goes_offline(store: Store) -> None:
    collected.set_gate_status(store, "g1", {"state": "online", "backlog": 4})
    collected.set_gate_status(store, "g1", {"state": "offline"})
    (gate,) = collected.gates(store)
    assert gate["status"]["state"] == "offline" and gate["status"]["backlog"] == 4
    assert "offline_at" in gate["status"] and gate["contiguous_seq"] == 0


def test_rejected_text_is_bounded(store: Store) -> None:
    with store.write() as tx:
        events_db.reject_message(tx, "t", "r" * 900, "é".encode() * 300, now=utcnow())
    ((topic, reason, excerpt),) = collected.rejected(store)
    assert (topic, len(reason)) == ("t", 500) and len(excerpt.encode()) <= 200


def test_two_writers_of_one_gate_at_once(store: Store) -> None:
    """Two collectors (two Stores, two threads) store overlapping batches of one gate at
    the same time, in different orders: every event is stored once, nothing is refused, and
    the gate's contiguous seq reaches its last seq."""
    n, size = 600, 40
    gate_events = [ev(s) for s in range(1, n + 1)]
    batches = [gate_events[i : i + size] for i in range(0, n, size // 2)]  # each seq twice
    orders = [batches, list(reversed(batches))]
    errors: list[BaseException] = []
    results: list[list[events_db.InsertResult]] = [[], []]

    def writer(k: int) -> None:
        try:
            with Store(store.url) as other:
                for batch in orders[k]:
                    results[k].append(collected.insert_events(other, "g1", batch))
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=writer, args=(k,)) for k in (0, 1)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert errors == [] and not any(t.is_alive() for t in threads)
    assert sorted(collected.event_keys(store)) == sorted(
        ("g1", e.epoch, e.seq, e.uuid) for e in gate_events
    )
    assert collected.conflicts(store) == [] and collected.alias_keys(store) == []
    inserted = sum(r.inserted for rs in results for r in rs)
    duplicates = sum(r.duplicates for rs in results for r in rs)
    assert (inserted, duplicates) == (n, 2 * sum(map(len, batches)) - n)
    assert collected.contiguous_seq(store, "g1") == n
    with store.read() as tx:
        assert gates_db.contiguous_seq(tx, "g1") == n
    assert max(r.contiguous_seq for rs in results for r in rs) == n


def test_the_row_of_an_event_fills_the_columns_the_insert_names() -> None:
    """PostgreSQL gets a batch as one array per column of ROW_COLUMNS: event_row fills
    exactly those."""
    assert tuple(events_db.event_row("g1", ev(1), utcnow())) == events_db.ROW_COLUMNS


def test_the_largest_seq_and_pass_id_the_protocol_allows_are_stored(store: Store) -> None:
    """protocol.events: seq up to 2^53 (MAX_SEQ), pass ids up to 2^32 - 1 — past PostgreSQL's
    INTEGER (revision 0003 widens them): such an event is stored and acknowledged, as on
    SQLite, instead of failing its insert and being resent forever."""
    from protocol.events import MAX_PASS_ID, MAX_SEQ

    big = dataclasses.replace(ev(1, pass_id=MAX_PASS_ID), seq=MAX_SEQ)
    low = ev(1, pass_id=MAX_PASS_ID)
    assert collected.insert_events(store, "g1", [low]).contiguous_seq == 1
    r = collected.insert_events(store, "g1", [big])
    assert r.inserted == 1 and r.contiguous_seq == 1  # stored; not contiguous, of course
    keys = {(s, u) for _g, _e, s, u in collected.event_keys(store)}
    assert keys == {(1, low.uuid), (MAX_SEQ, big.uuid)}
