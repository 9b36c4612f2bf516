"""server/storage/reports.py on SQLite and on a real PostgreSQL: a day's events by instant with
their household's place, and the counts /metrics shows."""

from __future__ import annotations

from sqlalchemy import insert

from server.storage import Store
from server.storage import alerts as alerts_db
from server.storage import events as events_db
from server.storage import reports as db
from server.storage.schema import conflicts
from server.storage.times import instant_us
from tests.server.storage_rows import event, put_events, put_household, put_pass

AT = "2026-03-01T00:00:00.000+00:00"


def test_a_days_events_by_instant_with_their_place(store: Store) -> None:
    put_household(store, "H1", district="南区", street="东街道", community="阳光社区", grid="一")
    put_household(store, "H2")  # in the register without a place
    put_pass(store, 5, "H1", "张三", "resident")
    put_events(
        store,
        event("west", 1, at="2026-03-10T04:00:00+08:00", household="H1"),  # the start: in
        event("east", 2, at="2026-03-09T20:00:00+00:00", household=None, pass_id=5),  # 04:00+08
        event("east", 1, at="2026-03-10T03:59:59.999999+08:00", household="H1"),  # before
        event("east", 3, at="2026-03-11T03:59:00+08:00", household="H2", kind="alert"),
        event("east", 4, at="2026-03-10T12:00:00+08:00", household=None, pass_id=None),
        event("east", 5, at="2026-03-10T13:00:00+08:00", household="H9", pass_id=None),
        event("east", 6, at="2026-03-11T04:00:00+08:00", household="H1"),  # the end: out
    )
    start, end = instant_us("2026-03-10T04:00:00+08:00"), instant_us("2026-03-11T04:00:00+08:00")
    with store.read() as tx:
        got = db.placed_events(tx, start, end)
    south = ("南区", "东街道", "阳光社区", "一")
    assert [(e.kind, e.household, e.pass_id) for e in got] == [
        ("decision", "H1", 5),  # east 2 before west 1: same instant, by gate
        ("decision", "H1", 1),
        ("decision", None, None),
        ("decision", "H9", None),
        ("alert", "H2", 1),
    ]
    assert [(e.district, e.street, e.community, e.grid) for e in got] == [
        south,
        south,
        (None, None, None, None),
        (None, None, None, None),
        ("", "", "", ""),
    ]
    assert (got[0].decision, got[0].reason, got[0].direction) == ("allow", "ok", "out")


def test_the_store_figures(store: Store) -> None:
    empty = db.StoreFigures({}, 0, {}, {})
    with store.read() as tx:
        assert db.store_figures(tx) == empty
    put_events(store, event("g1", 1), event("g1", 2), event("g2", 1))
    with store.write() as tx:
        events_db.reject_message(tx, "t", "r", b"", now=AT)
        events_db.reject_message(tx, "t", "r", b"", now=AT)
        tx.execute(
            insert(conflicts),
            [{"gate": "g1", "seq": s, "kind": k, "detail": "", "at": AT} for s, k in
             ((1, "quota"), (2, "quota"), (3, "seq_reused"))],
        )  # fmt: skip
        for key, kind in (("a", "fever"), ("b", "fever"), ("c", "forged")):
            added = alerts_db.add(tx, key=key, at=AT, kind=kind, priority="high")
        assert added is not None
        assert alerts_db.acknowledge(tx, added.id, at=AT, operator="olga", note="")
    with store.read() as tx:
        assert db.store_figures(tx) == db.StoreFigures(
            {"g1": 2, "g2": 1}, 2, {"quota": 2, "seq_reused": 1}, {"fever": 2}
        )
