"""server/storage/visitors.py on SQLite and on a real PostgreSQL: registering, reading by time,
and the retention purge, also run by two collectors at once."""

from __future__ import annotations

from sqlalchemy import select

from server.storage import Store
from server.storage import visitors as db
from server.storage.schema import passes
from tests.server.storage_rows import in_thread, put_pass, wait_blocked

EARLY = "2026-03-01T00:00:00.000+00:00"
LATE = "2026-03-01T10:00:00.500+00:00"
PURGED = "2026-04-01T00:00:00.000+00:00"


def register(store: Store, at: str, name: str, pass_id: int | None, valid_until: int) -> int:
    with store.write() as tx:
        return db.add(
            tx,
            at=at,
            name=name,
            phone="13912345678",
            reason="送药",
            host_household="3-2-501",
            temperature_c=36.5,
            pass_id=pass_id,
            valid_until=valid_until,
            registered_by="guard-li",
        )


def purge(store: Store, expired_before: int) -> int:
    with store.write() as tx:
        return db.purge(tx, expired_before=expired_before, at=PURGED, pass_name="访客")


def pass_names(store: Store) -> dict[int, str]:
    with store.read() as tx:
        return {int(p): str(n) for p, n in tx.execute(select(passes.c.pass_id, passes.c.name))}


def test_a_visitor_is_stored_and_read_back(store: Store) -> None:
    first = register(store, EARLY, "王小五", 7, 1000)
    second = register(store, LATE, "李小六", None, 2000)
    with store.read() as tx:
        v = db.get(tx, first)
        assert db.get(tx, second + 1) is None
        assert [x.id for x in db.since(tx, EARLY)] == [second, first]
        assert [x.id for x in db.since(tx, "2026-03-01T10:00:00.500+00:00")] == [second]
        assert [x.id for x in db.since(tx, "2026-03-01T10:00:00.501+00:00")] == []
        assert [x.id for x in db.since(tx, EARLY, limit=1)] == [second]
    assert v == db.Visitor(
        first, EARLY, "王小五", "13912345678", "送药", "3-2-501", 36.5, 7, 1000, "guard-li", None
    )


def test_purge_erases_expired_visitors_once_and_renames_only_their_visitor_pass(
    store: Store,
) -> None:
    put_pass(store, 7, "3-2-501", "王小五", "visitor")
    put_pass(store, 8, "3-2-501", "张三", "resident")  # never a visitor's: left alone
    old = register(store, EARLY, "王小五", 7, 1000)
    odd = register(store, EARLY, "赵七", 8, 1000)
    fresh = register(store, LATE, "李小六", None, 2000)

    assert purge(store, 1000) == 0, "a pass ending at the cutoff is not expired before it"
    assert purge(store, 1001) == 2
    assert purge(store, 1001) == 0, "purged once"
    with store.read() as tx:
        gone, kept = db.get(tx, old), db.get(tx, fresh)
        assert db.get(tx, odd) is not None
    assert gone is not None and (gone.name, gone.phone, gone.purged_at) == ("", "", PURGED)
    assert (gone.reason, gone.pass_id, gone.temperature_c) == ("送药", 7, 36.5)
    assert kept is not None and (kept.name, kept.purged_at) == ("李小六", None)
    assert pass_names(store) == {7: "访客", 8: "张三"}


def test_of_two_collectors_purging_at_once_one_purges(store: Store) -> None:
    put_pass(store, 7, "3-2-501", "王小五", "visitor")
    register(store, EARLY, "王小五", 7, 1000)
    register(store, EARLY, "李小六", None, 1000)
    with store.write() as tx:
        mine = db.purge(tx, expired_before=5000, at=PURGED, pass_name="访客")
        other, result = in_thread(lambda: purge(store, 5000))
        wait_blocked(store, other)
    other.join(30)
    assert (mine, result) == (2, [0])
    assert pass_names(store) == {7: "访客"}
