"""server/storage/dashboard.py on SQLite and PostgreSQL: what the dashboard's pages read.

Events are inserted as rows of the schema's tables; their times mix UTC offsets, so a
range or an order taken from the text instead of the instant gives other answers.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from server.storage import Store
from server.storage import dashboard as stored
from server.storage.events import event_row
from server.storage.schema import audit, events, gates, households, passes, persons, visitors
from server.storage.times import instant_us
from tests.conftest import SITE
from tests.e2e.helpers import make_event

NOW = "2026-03-01T12:00:00.000+00:00"
# A counting day in Shanghai: 04:00+08:00 to the next 04:00+08:00.
START = instant_us("2026-03-01T04:00:00+08:00")
END = instant_us("2026-03-02T04:00:00+08:00")
HOUR = 3_600_000_000


def row(gate: str, seq: int, at: str, **kw: Any) -> dict[str, Any]:
    """An events row as the collector stores it: columns and the event's JSON body."""
    return event_row(gate, make_event(SITE, gate, seq, at=at, **kw), NOW)


def add(store: Store, table: Any, *rows: dict[str, Any]) -> None:
    with store.write() as tx:
        tx.execute(table.insert(), list(rows))


def test_figures_count_the_span_by_instant_whatever_the_offset(store: Store) -> None:
    add(
        store,
        events,
        row("east", 1, "2026-02-28T20:00:00+00:00"),  # = 04:00+08:00, the first instant
        row("east", 2, "2026-02-28T19:59:59.999+00:00"),  # the day before
        row("east", 3, "2026-03-01T21:00:00+00:00", direction="in"),  # 05:00+08 the next day
        row("west", 1, "2026-03-02T03:59:59+08:00", direction="in"),  # the last second
        row("west", 2, "2026-03-02T04:00:00+08:00", direction="in"),  # the next day
        row("west", 3, "2026-03-01T09:00:00+08:00", kind="exit_request", direction="out"),
        row("west", 4, "2026-03-01T09:00:00+08:00", kind="override", direction="in"),
        row("west", 5, "2026-03-01T09:00:00+08:00", kind="alert", direction="in"),
        row("west", 6, "2026-03-01T09:00:00+08:00", direction=None),
        row("south", 1, "2026-03-01T02:00:00+00:00", decision="deny", reason="expired"),
        row("south", 2, "2026-03-01T03:00:00+00:00", decision="deny", reason="fever"),
        row("south", 3, "2026-03-01T04:00:00+00:00", decision="deny", reason="expired"),
        row("south", 4, "2026-03-01T05:00:00+00:00", decision="deny", reason="revoked"),
        row("south", 5, "2026-03-02T05:00:00+00:00", decision="deny", reason="fever"),  # after
    )
    with store.read() as tx:
        assert stored.passages(tx, START, END) == {"in": 2, "out": 2}
        assert stored.denials(tx, START, END) == [("expired", 2), ("fever", 1), ("revoked", 1)]
        assert stored.per_gate(tx, START, END) == [
            {"gate": "east", "in": 0, "out": 1, "deny": 0},
            {"gate": "south", "in": 0, "out": 0, "deny": 4},
            {"gate": "west", "in": 2, "out": 1, "deny": 0},
        ]
        assert stored.passages(tx, END, END + 24 * HOUR) == {"in": 2, "out": 0}
        assert stored.per_gate(tx, 0, 1) == []


def test_passages_per_hour_put_an_event_at_a_full_hour_in_that_hour(store: Store) -> None:
    at = datetime.fromisoformat("2026-03-01T04:00:00+08:00")

    def iso(us: int) -> str:
        return datetime.fromtimestamp((instant_us(at) + us) / 1e6, UTC).isoformat()

    add(
        store,
        events,
        row("east", 1, "2026-03-01T05:00:00+08:00"),  # exactly one hour after the start
        row("east", 2, "2026-03-01T04:59:59.999+08:00"),
        row("east", 3, iso(HOUR - 1)),  # one µs before 05:00, in UTC
        row("east", 4, "2026-02-28T21:00:00+00:00", direction="in"),  # 05:00+08:00 again
        row("east", 5, "2026-03-02T03:59:59+08:00", direction="in"),  # the last hour (23)
    )
    with store.read() as tx:
        hours = sorted(stored.passages_per_hour(tx, START, END))
    assert hours == [(0, "out", 2), (1, "in", 1), (1, "out", 1), (23, "in", 1)]


def test_outside_are_those_whose_last_passage_since_then_was_out(store: Store) -> None:
    since = instant_us("2026-03-01T00:00:00+08:00")
    add(
        store,
        events,
        row("east", 1, "2026-03-01T08:00:00+08:00", pass_id=1, household="1-1-101"),
        row("east", 2, "2026-03-01T09:00:00+08:00", pass_id=1, direction="in"),  # back in
        row("east", 3, "2026-03-01T08:00:00+08:00", pass_id=2, household="1-1-102"),  # out
        row("east", 4, "2026-02-28T15:00:00+00:00", pass_id=3),  # before `since`
        # By text the out (10:00+08) is last; by instant the in (03:00Z = 11:00+08) is.
        row("east", 5, "2026-03-01T10:00:00+08:00", pass_id=4, household="1-1-103"),
        row("west", 1, "2026-03-01T03:00:00+00:00", pass_id=4, direction="in"),
        # By text the in is last; by instant the out is: pass 5 is outside.
        row("west", 2, "2026-03-01T01:00:00+00:00", pass_id=5, direction="in", household="2"),
        row("east", 6, "2026-03-01T10:00:00+08:00", pass_id=5, household="2"),
        row("east", 7, "2026-03-01T12:00:00+08:00", pass_id=2, direction="in", decision="deny"),
        row("east", 8, "2026-03-01T12:00:00+08:00", pass_id=None, household=None),
    )
    with store.read() as tx:
        out = stored.outside(tx, since)
    assert out == [
        {"pass_id": 2, "household": "1-1-102", "at": "2026-03-01T08:00:00+08:00"},
        {"pass_id": 5, "household": "2", "at": "2026-03-01T10:00:00+08:00"},
    ]


def test_household_exits_count_residents_not_staff_or_visitors(store: Store) -> None:
    h = {"household": "3-1-101"}
    add(
        store,
        events,
        row("east", 1, "2026-03-01T08:00:00+08:00", **h),
        row("east", 2, "2026-03-01T08:10:00+08:00", role=None, **h),  # a resident's
        row("east", 3, "2026-03-01T08:20:00+08:00", role="staff", **h),
        row("east", 4, "2026-03-01T08:30:00+08:00", role="visitor", **h),
        row("east", 5, "2026-03-01T08:40:00+08:00", direction="in", **h),
        row("east", 6, "2026-03-01T08:50:00+08:00", decision="deny", **h),
        row("east", 7, "2026-03-01T08:50:00+08:00", household="3-1-102"),
        row("east", 8, "2026-03-02T08:00:00+08:00", **h),  # the next day
    )
    with store.read() as tx:
        assert stored.household_exits(tx, "3-1-101", START, END) == 2
        assert stored.household_exits(tx, "9-9-999", START, END) == 0


def test_recent_events_newest_first_by_instant_with_filters(store: Store) -> None:
    add(
        store,
        events,
        row("east", 1, "2026-03-01T10:00:00+08:00"),  # 02:00Z
        row("west", 1, "2026-03-01T03:00:00+00:00", decision="deny", reason="expired"),
        row("west", 2, "2026-03-01T01:00:00+00:00"),
        row("east", 2, "2026-03-01T12:00:00+08:00", kind="alert", decision=None),
        row("east", 3, "2026-03-01T04:00:00+00:00", kind="override", detail={"guard": "王"}),
    )
    kinds = ("decision", "exit_request", "override")
    with store.read() as tx:
        every = stored.recent_events(tx, kinds, 10)
        assert [(e["gate"], e["seq"]) for e in every] == [
            ("east", 3),
            ("west", 1),
            ("east", 1),
            ("west", 2),
        ]
        assert every[0]["detail"] == {"guard": "王"}  # the stored body, as the gate sent it
        assert [e["seq"] for e in stored.recent_events(tx, kinds, 2)] == [3, 1]
        east = stored.recent_events(tx, kinds, 10, gate="east", decision="allow")
        assert [e["seq"] for e in east] == [3, 1]
        assert [e["seq"] for e in stored.recent_events(tx, kinds, 10, decision="deny")] == [1]


def test_gates_and_pass_holders(store: Store) -> None:
    add(
        store,
        gates,
        {"gate": "west", "contiguous_seq": 0, "last_seen": NOW, "status": '{"state": "online"}'},
        {"gate": "east", "contiguous_seq": 3, "last_seen": None, "status": None},
    )
    add(store, passes, pass_row(7, "1-1-101", "王小明", room="1-1-101"), pass_row(8, "2", "李四"))
    with store.read() as tx:
        assert stored.gate_names(tx) == ["east", "west"]
        assert stored.gates_seen(tx) == [
            stored.GateSeen("east", None, None),
            stored.GateSeen("west", NOW, '{"state": "online"}'),
        ]
        assert stored.pass_holders(tx, [8, 7, 9, 7]) == {7: ("王小明", "1-1-101"), 8: ("李四", "")}
        assert stored.pass_holders(tx, []) == {}


def pass_row(pass_id: int, household: str, name: str, **kw: Any) -> dict[str, Any]:
    return {
        "pass_id": pass_id,
        "household": household,
        "name": name,
        "room": "",
        "role": "resident",
        "valid_from": 1_772_323_200,
        "valid_until": 1_772_409_600,
        "key_id": 1,
        "qr": f"QR{pass_id}",
        "issued_at": NOW,
        "revoked_at": None,  # every row names every column: an insert of many takes the first's
        **kw,
    }


def household_row(household: str, building: str, unit: str, room: str, **kw: Any) -> dict:
    return {
        "household": household,
        "updated_at": NOW,
        "building": building,
        "unit": unit,
        "room": room,
        "quarantined": 0,
        "grid": "",
        "community": "",
        **kw,
    }


def person_row(household: str, name: str, phone: str = "") -> dict[str, Any]:
    return {
        "household": household,
        "name": name,
        "phone": phone,
        "role": "resident",
        "created_at": NOW,
        "updated_at": NOW,
    }


def test_households_are_found_in_the_register_and_by_their_passes(store: Store) -> None:
    add(
        store,
        households,
        household_row("h1", "6", "2", "301", quarantined=1, grid="G1", community="C"),
        household_row("h2", "6", "2", "302"),
        household_row("Block-A", "7", "1", "101"),
    )
    add(store, persons, person_row("h1", "周杰伦", "13800000000"), person_row("h1", "周小伦"))
    add(
        store,
        passes,
        pass_row(1, "h1", "周杰伦", room="6-2-301"),
        pass_row(2, "h1", "周小伦", room="6-2-301", revoked_at=NOW),
        pass_row(3, "p9", "蔡依林", room="9-9-901"),  # only known by its pass
    )
    with store.read() as tx:
        by_room = stored.search_households(tx, "2-301", 50)
        assert by_room == [{"household": "h1", "room": "6-2-301", "quarantined": 1, "passes": 2}]
        assert [r["household"] for r in stored.search_households(tx, "周", 50)] == ["h1"]
        assert stored.search_households(tx, "蔡依", 50) == [
            {"household": "p9", "room": "9-9-901", "quarantined": 0, "passes": 1}
        ]
        assert [r["household"] for r in stored.search_households(tx, "block-a", 50)] == ["Block-A"]
        assert len(stored.search_households(tx, "", 50)) == 4
        assert len(stored.search_households(tx, "", 2)) == 2

        assert stored.household_place(tx, "h1") == {
            "building": "6",
            "unit": "2",
            "room": "301",
            "grid": "G1",
            "community": "C",
            "quarantined": 1,
            "quarantine_until": None,
        }
        assert stored.household_place(tx, "p9") is None
        held = stored.household_passes(tx, "h1")
        assert [(p["pass_id"], p["name"], p["revoked_at"]) for p in held] == [
            (1, "周杰伦", None),
            (2, "周小伦", NOW),
        ]
        assert held[0]["valid_from"] == 1_772_323_200 and held[0]["role"] == "resident"
        assert stored.household_members(tx, "h1") == [
            {"name": "周杰伦", "phone": "13800000000", "role": "resident"},
            {"name": "周小伦", "phone": "", "role": "resident"},
        ]
        assert stored.household_members(tx, "p9") == []


def test_a_households_recent_events_newest_first(store: Store) -> None:
    h = {"household": "h1"}
    add(
        store,
        events,
        row("east", 1, "2026-03-01T10:00:00+08:00", **h),
        row("west", 1, "2026-03-01T03:00:00+00:00", decision="deny", reason="quota", **h),
        row("west", 2, "2026-03-01T04:00:00+00:00", kind="exit_request", **h),
        row("west", 3, "2026-03-01T05:00:00+00:00", kind="override", **h),
        row("west", 4, "2026-03-01T06:00:00+00:00", household="h2"),
    )
    with store.read() as tx:
        recent = stored.household_events(tx, "h1", ("decision", "override"), 20)
        assert [(r["gate"], r["reason"]) for r in recent] == [
            ("west", "ok"),
            ("west", "quota"),
            ("east", "ok"),
        ]
        assert set(recent[0]) == {"gate", "at", "decision", "reason", "direction", "pass_id"}
        assert len(stored.household_events(tx, "h1", ("decision", "override"), 1)) == 1


def test_visitors_since_a_moment_with_their_pass(store: Store) -> None:
    def visitor(at: str, name: str, pass_id: int | None) -> dict[str, Any]:
        return {
            "at": at,
            "name": name,
            "phone": "13900000000",
            "reason": "探亲",
            "host_household": "h1",
            "temperature_c": 36.5,
            "pass_id": pass_id,
            "valid_until": 1_772_409_600,
            "registered_by": "olga",
        }

    add(store, passes, pass_row(11, "h1", "访客甲", role="visitor", revoked_at=NOW))
    add(
        store,
        visitors,
        visitor("2026-02-28T19:59:59.999+00:00", "昨天", None),
        visitor("2026-02-28T20:00:00.000+00:00", "访客甲", 11),
        visitor("2026-03-01T01:00:00.000+00:00", "访客乙", None),
    )
    since = datetime.fromisoformat("2026-03-01T04:00:00+08:00")
    with store.read() as tx:
        found = stored.visitors_since(tx, since, 500)
        assert [(v["name"], v["revoked_at"]) for v in found] == [("访客乙", None), ("访客甲", NOW)]
        assert found[1]["temperature_c"] == 36.5 and found[1]["valid_until"] == 1_772_409_600
        assert len(stored.visitors_since(tx, since, 1)) == 1
        assert stored.pass_card(tx, 11) == {
            "qr": "QR11",
            "valid_from": 1_772_323_200,
            "valid_until": 1_772_409_600,
            "revoked_at": NOW,
        }
        assert stored.pass_card(tx, 12) is None and stored.pass_card(tx, None) is None


def test_audit_entries_and_guard_overrides_newest_first(store: Store) -> None:
    add(
        store,
        audit,
        {"at": NOW, "actor": "ada", "action": "login", "target": "10.0.0.1", "detail": ""},
        {"at": NOW, "actor": "olga", "action": "alert_ack", "target": "3", "detail": "送医"},
    )
    add(
        store,
        events,
        row("east", 1, "2026-03-01T10:00:00+08:00", kind="override", detail={"guard": "王"}),
        row("east", 2, "2026-03-01T03:00:00+00:00", kind="override", reason="guard_override"),
        row("east", 3, "2026-03-01T04:00:00+00:00"),
    )
    with store.read() as tx:
        entries = stored.audit_entries(tx, 500)
        assert [(e["actor"], e["action"], e["detail"]) for e in entries] == [
            ("olga", "alert_ack", "送医"),
            ("ada", "login", ""),
        ]
        assert [e["action"] for e in stored.audit_entries(tx, 1)] == ["alert_ack"]
        overrides = stored.overrides(tx, 500)
    assert overrides == [
        {
            "gate": "east",
            "seq": 2,
            "at": "2026-03-01T03:00:00+00:00",
            "reason": "guard_override",
            "direction": "out",
            "detail": "{}",  # as SQLite's json_extract gave an empty object
        },
        {
            "gate": "east",
            "seq": 1,
            "at": "2026-03-01T10:00:00+08:00",
            "reason": "ok",
            "direction": "out",
            "detail": '{"guard":"王"}',
        },
    ]
