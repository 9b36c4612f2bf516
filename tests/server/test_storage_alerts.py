"""server/storage/alerts.py on SQLite and on a real PostgreSQL: one alert per key (also when
two transactions raise it at once), listing, acknowledging, the history a gate lost, and the
decision a fever alert follows."""

from __future__ import annotations

from typing import Any

from server.storage import Store
from server.storage import alerts as db
from server.storage.schema import alerts, event_aliases
from server.storage.times import instant_us
from tests.server.storage_rows import count, event, in_thread, put_events, wait_blocked

AT = "2026-03-01T00:00:00.000+00:00"


def add(store: Store, key: str, kind: str = "fever", **kw: Any) -> db.Alert | None:
    with store.write() as tx:
        return db.add(tx, key=key, at=AT, kind=kind, priority="high", **kw)


def test_an_alert_is_stored_once_per_key(store: Store) -> None:
    first = add(store, "event:1", gate="east", pass_id=3, household="1-1-101", detail="d")
    assert first is not None
    assert (first.key, first.kind, first.gate, first.pass_id, first.household) == (
        "event:1",
        "fever",
        "east",
        3,
        "1-1-101",
    )
    assert (first.detail, first.acked_at, first.at) == ("d", None, AT)
    assert add(store, "event:1", gate="west") is None
    with store.read() as tx:
        assert db.get(tx, first.id) == first
        assert db.get(tx, first.id + 1) is None
    assert count(store, alerts) == 1


def test_of_two_transactions_raising_one_alert_exactly_one_gets_it(store: Store) -> None:
    with store.write() as tx:
        mine = db.add(tx, key="offline:east:1", at=AT, kind="gate_offline", priority="normal")
        other, result = in_thread(lambda: add(store, "offline:east:1", "gate_offline"))
        wait_blocked(store, other)
    other.join(30)
    assert mine is not None and result == [None], "the other one is told it lost, no error"
    assert count(store, alerts) == 1


def test_listing_counting_and_acknowledging(store: Store) -> None:
    made = [add(store, f"k{i}", kind) for i, kind in enumerate(("fever", "forged", "fever"))]
    ids = [a.id for a in made if a is not None]
    with store.write() as tx:
        assert db.acknowledge(tx, ids[0], at=AT, operator="olga", note="clinic")
        assert not db.acknowledge(tx, ids[0], at=AT, operator="ada", note="again")
        assert not db.acknowledge(tx, 10_000, at=AT, operator="ada", note="none")
    with store.read() as tx:
        assert [a.id for a in db.recent(tx)] == ids[::-1]
        assert [a.id for a in db.recent(tx, limit=2)] == ids[:0:-1]
        assert [a.id for a in db.recent(tx, open_only=True)] == [ids[2], ids[1]]
        assert db.open_counts(tx) == {"fever": 1, "forged": 1}
        acked = db.get(tx, ids[0])
    assert acked is not None and (acked.acked_by, acked.ack_note, acked.acked_at) == (
        "olga",
        "clinic",
        AT,
    )


def test_the_missing_range_is_what_the_gate_did_not_send_again(store: Store) -> None:
    held = [event("g1", s, epoch="aa") for s in range(1, 10)]
    put_events(store, *held, event("g2", 5, epoch="aa"))
    with store.write() as tx:  # seqs 5 and 6 sent again under the new epoch (aliases)
        tx.execute(
            event_aliases.insert(),
            [{"gate": "g1", "epoch": "bb", "seq": i, "uuid": held[i + 3].uuid} for i in (1, 2)],
        )
    with store.read() as tx:
        assert db.missing_from_gate(tx, "g1", "aa", 3, "bb") == [(4, 4), (7, 9)]
        assert db.missing_from_gate(tx, "g1", "aa", 6, "bb") == [(7, 9)]
        assert db.missing_from_gate(tx, "g1", "aa", 9, "bb") == []
        assert db.missing_from_gate(tx, "g1", "zz", 0, "bb") == []


def test_the_decision_a_fever_alert_follows(store: Store) -> None:
    """The latest decision of the pass at the gate at or before the alert's instant, by
    instant (gates write their own offsets), then by seq; its temperature from the body."""

    def decision(seq: int, at: str, **kw: Any) -> Any:
        return event("east", seq, at=at, decision="deny", reason="fever", pass_id=3, **kw)

    put_events(
        store,
        decision(1, "2026-03-01T08:00:00+08:00", temperature_c=37.9),  # 00:00Z
        decision(2, "2026-03-01T00:00:00+00:00", temperature_c=38.6),  # the same instant
        decision(3, "2026-03-01T00:00:01+00:00", temperature_c=39.9),  # after
        decision(4, "2026-02-28T23:59:00+00:00", temperature_c=None, household=None),
        event("west", 1, at="2026-03-01T00:00:00+00:00", pass_id=3, temperature_c=40.0),
        event("east", 9, at="2026-03-01T00:00:00+00:00", kind="alert", pass_id=3),
    )
    when = instant_us("2026-03-01T08:00:00.000+08:00")
    with store.read() as tx:
        assert db.last_decision(tx, 3, "east", when) == db.Reading("1-1-101", 38.6)
        assert db.last_decision(tx, 3, "east", when - 1) == db.Reading(None, None)
        assert db.last_decision(tx, 3, "east", when - 10**9) is None
        assert db.last_decision(tx, 4, "east", when) is None
        assert db.last_decision(tx, 3, "west", when) == db.Reading("1-1-101", 40.0)
