"""The site's storage (server/storage: keys, passes, households, meta, audit) on SQLite and on
a real PostgreSQL: the same calls, the same answers."""

from __future__ import annotations

import threading

import pytest
from sqlalchemy.exc import IntegrityError

from server.storage import Store, audit, households, keys, meta, passes, roots
from server.storage.passes import StoredPass

AT = "2026-03-01T08:00:00.000+00:00"
LATER = "2026-03-02T08:00:00.000+00:00"


# --- keys ---------------------------------------------------------------------------------


def test_keys_active_retired_and_the_signing_one(store: Store) -> None:
    with store.read() as tx:
        assert keys.signing_id(tx) is None and keys.newest_id(tx) == 0
        assert keys.trust_keys(tx) == []
    public = {k: bytes([0, k, 255]) + bytes(29) for k in (1, 2, 3)}  # NULs and high bytes
    with store.write() as tx:
        for key_id, key in public.items():
            keys.add(tx, key_id, key, AT)
        assert keys.retire(tx, 2, LATER)
        assert not keys.retire(tx, 2, LATER), "already retired"
        assert not keys.retire(tx, 9, LATER), "no such key"
    with store.read() as tx:
        active = keys.trust_keys(tx)
        every = keys.trust_keys(tx, retired=True)
        assert [(k.key_id, k.public_key) for k in active] == [(1, public[1]), (3, public[3])]
        assert [k.key_id for k in every] == [1, 2, 3]
        assert all(type(k.public_key) is bytes for k in every)
        assert keys.signing_id(tx) == 3 and keys.newest_id(tx) == 3
    with store.write() as tx:
        keys.retire(tx, 3, LATER)
    with store.read() as tx:
        assert keys.signing_id(tx) == 1, "the newest active key signs"
        assert keys.newest_id(tx) == 3, "a retired key's id is never given again"


def test_a_key_id_is_stored_once(store: Store) -> None:
    with store.write() as tx:
        keys.add(tx, 1, bytes(32), AT)
    with pytest.raises(IntegrityError), store.write() as tx:
        keys.add(tx, 1, bytes(32), LATER)
    with store.read() as tx:
        assert len(keys.trust_keys(tx)) == 1


# --- trust roots --------------------------------------------------------------------------


def test_trust_roots_are_kept_in_order_each_version_once(store: Store) -> None:
    with store.read() as tx:
        assert (roots.latest_version(tx), roots.chain(tx)) == (0, [])
    with store.write() as tx:
        roots.add(tx, 2, '{"version": 2}', LATER)
        roots.add(tx, 1, '{"version": 1}', AT)
    with pytest.raises(IntegrityError), store.write() as tx:
        roots.add(tx, 2, '{"version": 2, "forked": true}', LATER)
    with store.read() as tx:
        assert roots.latest_version(tx) == 2
        assert roots.chain(tx) == ['{"version": 1}', '{"version": 2}']


# --- meta ---------------------------------------------------------------------------------


def test_meta_values_and_counters(store: Store) -> None:
    with store.write() as tx:
        assert meta.get(tx, "k") is None
        meta.put(tx, "k", "v")
        meta.put(tx, "k", "w")
        assert [meta.next_counter(tx, "c") for _ in range(3)] == [1, 2, 3]
        assert meta.next_counter(tx, "other") == 1
        assert meta.next_counter(tx, "c", above=10) == 11, "above a version out in the world"
        assert meta.next_counter(tx, "c", above=5) == 12
    with store.read() as tx:
        assert meta.get(tx, "k") == "w" and meta.get(tx, "c") == "12"


def test_a_counter_gives_a_run_of_values_at_once(store: Store) -> None:
    """`pass issue-all` numbers tens of thousands of passes with one statement, not one each."""
    with store.write() as tx:
        assert meta.next_counter(tx, "c") == 1
        assert meta.next_counter(tx, "c", count=1000) == 2  # 2..1001 taken
        assert meta.next_counter(tx, "c") == 1002
        assert meta.next_counter(tx, "c", above=2000, count=3) == 2001
        with pytest.raises(ValueError, match="count 0"):
            meta.next_counter(tx, "c", count=0)
    with store.read() as tx:
        assert meta.get(tx, "c") == "2003"


def test_a_rolled_back_transaction_takes_its_increment_back(store: Store) -> None:
    with store.write() as tx:
        meta.next_counter(tx, "c")
    with pytest.raises(KeyboardInterrupt), store.write() as tx:
        assert meta.next_counter(tx, "c") == 2
        raise KeyboardInterrupt
    with store.write() as tx:
        assert meta.next_counter(tx, "c") == 2


def test_counters_never_give_one_value_twice_to_concurrent_writers(store_url: str) -> None:
    """Four writers, each its own Store (connections, as separate processes have), take
    numbers at once: on PostgreSQL (READ COMMITTED) only the counter's lock keeps two of them
    from reading the same value."""
    got: list[int] = []
    errors: list[BaseException] = []

    def take() -> None:
        try:
            with Store(store_url) as s:
                for _ in range(15):
                    with s.write() as tx:
                        got.append(meta.next_counter(tx, "pass_id"))
        except BaseException as exc:  # reported below
            errors.append(exc)

    Store(store_url).close()  # migrated once, before the writers start
    threads = [threading.Thread(target=take) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    assert sorted(got) == list(range(1, 61))


# --- audit --------------------------------------------------------------------------------


def test_audit_entries_newest_first_by_action(store: Store) -> None:
    with store.write() as tx:
        audit.record(tx, "olga", "pass_revoke", "7", "lost", at=AT)
        audit.record(tx, "ivan", "login", "127.0.0.1")
        audit.record(tx, "olga", "pass_revoke", "8")
    with store.read() as tx:
        every = audit.entries(tx)
        revokes = audit.entries(tx, action="pass_revoke")
        newest = audit.entries(tx, limit=1)
    assert [(e.actor, e.action, e.target) for e in every] == [
        ("olga", "pass_revoke", "8"),
        ("ivan", "login", "127.0.0.1"),
        ("olga", "pass_revoke", "7"),
    ]
    assert [(e.target, e.detail) for e in revokes] == [("8", ""), ("7", "lost")]
    assert revokes[1].at == AT and every[0].at > AT, "default: now"
    assert newest == every[:1]


# --- passes -------------------------------------------------------------------------------


def stored(pass_id: int, household: str, name: str = "张三丰", **fields: object) -> StoredPass:
    values: dict[str, object] = {
        "room": "1-1-101",
        "role": "resident",
        "valid_from": 1_000,
        "valid_until": 2_000,
        "key_id": 1,
        "qr": f"MW1:{pass_id}",
        "issued_at": AT,
    }
    return StoredPass(pass_id, household, name, **{**values, **fields})  # type: ignore[arg-type]


def test_passes_found_by_household_validity_revocation_and_role(store: Store) -> None:
    with store.write() as tx:
        passes.add(tx, stored(3, "B"))
        passes.add(tx, stored(1, "B", valid_until=1_500))
        passes.add(tx, stored(2, "A", role="visitor"))
        passes.add(tx, stored(4, "A", person_id=None, valid_until=2**32 - 1))
        assert passes.revoke(tx, 3, "lost", LATER)
        assert not passes.revoke(tx, 3, "again", LATER), "already revoked"
        assert not passes.revoke(tx, 99, "none", LATER)
    with store.read() as tx:
        assert [p.pass_id for p in passes.find(tx)] == [2, 4, 1, 3], "by household, then id"
        assert [p.pass_id for p in passes.find(tx, household="B")] == [1, 3]
        assert [p.pass_id for p in passes.find(tx, ending_after=1_500)] == [2, 4, 3]
        assert [p.pass_id for p in passes.find(tx, unrevoked=True)] == [2, 4, 1]
        assert [p.pass_id for p in passes.find(tx, visitors=False)] == [4, 1, 3]
        (revoked,) = [p for p in passes.find(tx) if p.pass_id == 3]
        big = passes.find(tx, household="A", visitors=False)[0]
    assert (revoked.revoked_at, revoked.revoke_reason) == (LATER, "lost")
    assert revoked == stored(3, "B", revoked_at=LATER, revoke_reason="lost")
    assert big.valid_until == 2**32 - 1, "unsigned 32-bit seconds fit"


def test_passes_stored_many_at_once_read_back_alike(store: Store) -> None:
    many = [stored(i, f"H{i % 7}", f"住户{i}", person_id=None) for i in range(1, 501)]
    with store.write() as tx:
        passes.add_all(tx, many)
        passes.add_all(tx, [])
    with store.read() as tx:
        assert sorted(passes.find(tx), key=lambda p: p.pass_id) == many
    with pytest.raises(IntegrityError), store.write() as tx:
        passes.add_all(tx, [stored(501, "H"), stored(7, "H")])  # id 7 is taken: neither stored
    with store.read() as tx:
        assert len(passes.find(tx)) == 500


def test_passes_held_against_the_cap(store: Store) -> None:
    with store.write() as tx:
        passes.add(tx, stored(1, "H", person_id=None))  # issued by name, before the register
        passes.add(tx, stored(2, "H", "李四", role="visitor"))
        passes.add(tx, stored(3, "H", "王五", valid_until=1_200))
        passes.add(tx, stored(4, "H", "赵六"))
        passes.revoke(tx, 4, "moved out", LATER)
    with store.read() as tx:
        assert passes.held_by_household(tx, "H", 1_100) == 2, "visitor and revoked not held"
        assert passes.held_by_household(tx, "H", 1_200) == 1, "the end is exclusive"
        assert passes.held_by_household(tx, "other", 1_100) == 0


def test_passes_of_a_retired_key_are_not_held(store: Store) -> None:
    with store.write() as tx:
        keys.add(tx, 1, b"\x01" * 32, AT)
        keys.add(tx, 2, b"\x02" * 32, AT)
        passes.add(tx, stored(1, "H"))
        passes.add(tx, stored(2, "H", "李四", key_id=2))
        keys.retire(tx, 1, LATER)
    with store.read() as tx:
        assert passes.held_by_household(tx, "H", 1_100) == 1
        assert [p.name for p in passes.current(tx, 1_100)] == ["李四"], "key 1 retired"


def test_a_pass_keeps_the_person_it_was_issued_to(store: Store) -> None:
    with store.write() as tx:
        households.ensure(tx, "H", AT)
        households.put_person(tx, "H", "张三丰", "13812345678", "resident", AT)
        person = households.person(tx, "H", "张三丰")
        assert person is not None
        passes.add(tx, stored(1, "H", "张三", person_id=person.person_id))
    with store.read() as tx:
        assert passes.find(tx)[0].person_id == person.person_id


# --- households and persons ---------------------------------------------------------------


def place(tx: object, household_id: str, **fields: str | None) -> None:
    values: dict[str, str | None] = {
        "building": "1",
        "unit": "2",
        "room": "301",
        "grid": "网格一",
        "community": None,
        "street": None,
        "district": None,
    }
    households.put_place(tx, household_id, **{**values, **fields}, at=AT)  # type: ignore[arg-type]


def test_a_households_place_and_what_an_import_leaves_alone(store: Store) -> None:
    with store.write() as tx:
        households.ensure(tx, "H1", AT)
        place(tx, "H1", community="阳光社区", street="东街道", district="西城区")
        place(tx, "H1", room="302")  # a file without the optional columns keeps them
        households.ensure(tx, "H1", LATER)  # changes nothing
        households.ensure(tx, "H2", AT)
    with store.read() as tx:
        h1, h2, none = (households.household(tx, h) for h in ("H1", "H2", "H9"))
    assert h1 is not None and h2 is not None and none is None
    assert (h1.building, h1.unit, h1.room, h1.grid) == ("1", "2", "302", "网格一")
    assert (h1.community, h1.street, h1.district) == ("阳光社区", "东街道", "西城区")
    assert h1.quarantined is False and h1.quarantine_until is None
    assert h2.to_json()["building"] == "" and h2.to_json()["quarantined"] is False


def test_quarantine_set_listed_and_released(store: Store) -> None:
    with store.write() as tx:
        households.ensure(tx, "H1", AT)
        households.set_quarantine(tx, "H1", True, LATER, AT)
        households.set_quarantine(tx, "H0", True, None, AT)  # a household not yet in the store
        households.set_quarantine(tx, "H2", True, None, AT)
        households.set_quarantine(tx, "H2", False, None, LATER)
    with store.read() as tx:
        assert households.quarantined(tx) == [("H0", None), ("H1", LATER)]
        h1, h2 = households.household(tx, "H1"), households.household(tx, "H2")
    assert h1 is not None and h1.quarantined is True and h1.quarantine_until == LATER
    assert h2 is not None and h2.quarantined is False


def test_persons_registered_updated_and_found(store: Store) -> None:
    with store.write() as tx:
        place(tx, "H1")
        place(tx, "H2", building="2", unit="", room="")
        assert households.put_person(tx, "H1", "张三丰", "13812345678", "resident", AT)
        assert households.put_person(tx, "H1", "Alice", "010-12345678", "staff", AT)
        assert households.put_person(tx, "H2", "李四", "13912345678", "visitor", AT)
        assert not households.put_person(tx, "H1", "张三丰", "13700000000", "staff", LATER)
    with store.read() as tx:
        members = households.members(tx, "H1")
        zhang = households.person(tx, "H1", "张三丰")
        nobody = households.person(tx, "H2", "张三丰")
        capped = households.persons_in_roles(tx, {"resident", "staff"})
        roles = households.member_roles(tx, ["H1", "H2", "H3"])
    assert [(m["name"], m["phone"], m["role"]) for m in members] == [
        ("张三丰", "13700000000", "staff"),
        ("Alice", "010-12345678", "staff"),
    ]
    assert zhang is not None and nobody is None
    assert (zhang.building, zhang.unit, zhang.room, zhang.role) == ("1", "2", "301", "staff")
    assert zhang.person_id == members[0]["person_id"]
    assert [(p.household, p.name) for p in capped] == [("H1", "张三丰"), ("H1", "Alice")]
    assert roles == {
        "H1": {"张三丰": "staff", "Alice": "staff"},
        "H2": {"李四": "visitor"},
        "H3": {},
    }


def test_member_roles_of_many_households(store: Store) -> None:
    """More households than one statement's share of bound parameters."""
    wanted = [f"H{i:04d}" for i in range(1_200)]
    with store.write() as tx:
        for h in wanted[::3]:
            households.ensure(tx, h, AT)
            households.put_person(tx, h, "张三丰", "13812345678", "resident", AT)
    with store.read() as tx:
        roles = households.member_roles(tx, wanted)
    assert len(roles) == 1_200
    assert sum(1 for members in roles.values() if members == {"张三丰": "resident"}) == 400


def test_search_by_id_place_room_or_member_name(store: Store) -> None:
    with store.write() as tx:
        place(tx, "H101", building="3", unit="2", room="501")
        place(tx, "H102", building="4", unit="1", room="101")
        households.ensure(tx, "X9", AT)
        households.put_person(tx, "H102", "Alice", "010-12345678", "resident", AT)
        households.put_person(tx, "H102", "欧阳娜娜", "13812345678", "resident", AT)
    with store.read() as tx:

        def found(query: str, limit: int = 50) -> list[str]:
            return [h.household for h in households.search(tx, query, limit)]

        assert found("H10") == ["H101", "H102"]
        assert found("3-2-501") == ["H101"]
        assert found("101") == ["H101", "H102"], "id and room"
        assert found("alice") == ["H102"], "names case-insensitively, once per household"
        assert found("阳娜") == ["H102"]
        assert found("  X9 ") == ["X9"], "without a member"
        assert found("", limit=2) == ["H101", "H102"]
        assert found("nobody") == []
