"""Make `server-db-2026-11.sqlite`: a site database as Menwei wrote it before the storage layer.

tests/server/test_storage_upgrade.py opens a copy with today's code and checks that it
upgrades in place with nothing lost. This script must run against the code of commit
ccc2fbb (the last one before server/storage/, whose feature modules each applied their own
sqlite-utils migration set), never against today's code:

    git archive ccc2fbb | (mkdir -p /tmp/old && tar -x -C /tmp/old)
    PYTHONPATH=/tmp/old .venv/bin/python tests/data/make_legacy_db.py tests/data

It writes `server-db-2026-11.sqlite` (server.db after a WAL checkpoint, nothing beside it)
and `server-db-2026-11-key-2.pem` (the site's signing key 2, test-only: the upgraded site
issues passes with it) into the given directory, and prints what the database holds.

What the site went through, all through the old code's own entry points (Site, the
collector's `handle` as MQTT messages arrive, GateHealth, AlertStore, AccountStore,
visitors, register import), so every row is one the old code wrote:
- `Site.init`, a register of 8 households imported from CSV, passes for everyone
  (`issue_all`) and two by hand, a key rotation and the old key retired, a pass revoked,
  a household under home quarantine, visitors (one refused for fever, one purged);
- three gates: `east` (a gate from before epochs: epoch '', times `+08:00` to the
  second, yesterday) whose database was then replaced (a new epoch, a gate_reset alert);
  `north` (`+08:00` with milliseconds); `west` (UTC with milliseconds, as gates write
  now) which lost committed history: it reused seqs the collector holds (seq_reused
  conflicts), then moved to a new epoch sending its unconfirmed events again (two
  renumbered events kept as event_aliases) and a gate_history_lost alert;
- cross-gate replay conflicts (household over quota, a pass out twice, daily exits over
  quota, a revoked pass used, an exit under quarantine), gate alerts (fever, camera);
- gate statuses (a storage fault), outages (one ended, three open), alerts acknowledged;
- an operator account with a session, failed logins; rejected messages.
"""

from __future__ import annotations

import argparse
import logging
import shutil
import sqlite3
import sys
import tempfile
import uuid
from dataclasses import replace
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

SITE = "sunny-garden"
NAME = "server-db-2026-11"
SH = ZoneInfo("Asia/Shanghai")
NS = uuid.UUID("6f6b3b1e-7a44-4c1e-9a53-6d656e776569")

REGISTER = """household_id,building,unit,room,grid,name,phone,role
H101,1,1,101,网格一,张三丰,13812345678,resident
H101,1,1,101,网格一,李秀英,13812345679,resident
H101,1,1,101,网格一,张小明,13812345680,resident
H102,1,1,102,网格一,阿卜杜拉·买买提,010-12345678,resident
H102,1,1,102,网格一,古丽,13912340001,resident
H103,1,2,201,网格一,王建国,13912340002,resident
H103,1,2,201,网格一,王芳,13912340003,resident
H104,2,1,101,网格二,Zoë Martin,+86 139 1234 5678,resident
H105,2,1,102,网格二,陈静,13700000001,resident
H105,2,1,102,网格二,陈磊,13700000002,resident
H106,2,2,301,网格二,刘洋,13700000003,staff
H107,3,1,101,网格三,赵敏,13700000004,resident
H108,3,1,102,网格三,孙悦,13700000005,resident
H108,3,1,102,网格三,周杰,13700000006,resident
"""


def old_code() -> None:
    """Refuse to run against the storage layer's code: the point is the old schema."""
    import server.store

    if (Path(server.store.__file__).parent / "storage").exists():
        sys.exit(
            "make_legacy_db.py: run it against the code of commit ccc2fbb"
            " (PYTHONPATH=/tmp/old, see its docstring), not against today's code"
        )


class Gate:
    """One gate's log: seqs in its current epoch, events as the gate builds them."""

    def __init__(self, site: str, gate: str, epoch: str, versions: dict[str, int]) -> None:
        self.site, self.gate, self.epoch, self.versions = site, gate, epoch, versions
        self.seq = 0

    def event(
        self,
        kind: str,
        at: str,
        reason: str = "ok",
        *,
        decision: str | None = None,
        direction: str | None = None,
        holder: tuple[int, str, str] | None = None,
        temperature_c: float | None = None,
        detail: dict[str, Any] | None = None,
        tag: str = "",
    ) -> Any:
        from protocol.events import Event

        self.seq += 1
        pass_id, household, role = holder if holder is not None else (None, None, None)
        if kind == "decision":
            detail = {
                "rule": reason,
                "alert": None,
                "guard_required": False,
                "flags": [],
                "qr": None,
                **(detail or {}),
            }
        return Event(
            site=self.site,
            gate=self.gate,
            seq=self.seq,
            uuid=str(uuid.uuid5(NS, f"{self.gate}/{self.epoch}/{self.seq}{tag}")),
            at=at,
            clock_trusted=True,
            kind=kind,
            decision=decision,
            reason=reason,
            direction=direction,
            temperature_c=temperature_c,
            pass_id=pass_id,
            household=household,
            role=role if kind == "decision" else None,
            versions=dict(self.versions),
            detail=detail or {},
            epoch=self.epoch,
        )

    def passage(self, at: str, direction: str, holder: tuple[int, str, str], **kw: Any) -> Any:
        reason = kw.pop("reason", "ok")
        decision = kw.pop("decision", "allow")
        temperature = 36.4 if direction == "in" else None
        return self.event(
            "decision",
            at,
            reason,
            decision=decision,
            direction=direction,
            holder=holder,
            temperature_c=kw.pop("temperature_c", temperature),
            **kw,
        )


def local(day: date, hh: int, mm: int, ss: int = 0, *, ms: bool = False) -> str:
    """A gate time with the site's offset (+08:00)."""
    t = datetime(day.year, day.month, day.day, hh, mm, ss, 250_000 if ms else 0, tzinfo=SH)
    return t.isoformat(timespec="milliseconds" if ms else "seconds")


def utc(day: date, hh: int, mm: int, ss: int = 0) -> str:
    """A gate time as gates write it now: the local wall time converted to UTC, ms."""
    t = datetime(day.year, day.month, day.day, hh, mm, ss, 125_000, tzinfo=SH)
    return t.astimezone(UTC).isoformat(timespec="milliseconds")


def make(out: Path) -> None:
    from protocol import topics
    from protocol.broker import parse_broker
    from protocol.events import encode_batch, encode_status
    from server.alerts import AlertStore
    from server.collector import Collector
    from server.gate_health import GateHealth
    from server.keys import key_path
    from server.register_import import import_register
    from server.site import Site
    from server.visitors import VisitorError, purge_visitors, register_visitor
    from server.web.accounts import AccountStore

    work = Path(tempfile.mkdtemp(prefix="menwei-legacy-"))
    directory = work / "server"
    site = Site.init(directory, SITE)
    csv = work / "register.csv"
    csv.write_text(REGISTER, encoding="utf-8")
    imported = import_register(site, csv)
    assert imported.imported == 14 and not imported.rejected, imported
    site.issue_all()
    site.issue_pass("H104", "Zoë Martin", "resident", room="2-1-101")  # a second card
    guest = site.issue_pass("H107", "赵敏的女儿", "resident", room="3-1-101")
    previous, key = site.rotate_key()
    site.retire_key(previous)
    site.revoke_pass(guest.pass_id, "丢失 / card lost")
    today = datetime.now(SH).date()
    site.set_quarantine(
        "H108", datetime.combine(today + timedelta(days=14), datetime.min.time(), SH)
    )

    register_visitor(site, "访客甲", "13600000001", "送快递", "H103", 36.5, 2, "门卫老李")
    purged = purge_visitors(site, 0, by="门卫老李", now=datetime.now(SH) + timedelta(days=1))
    assert purged == 1, purged
    register_visitor(
        site, "Visitor B", "13600000002", "探亲 family visit", "H101", 36.7, 6, "guard"
    )
    try:
        register_visitor(site, "访客丙", "13600000003", "维修", "H105", 38.4, 2, "门卫老李")
    except VisitorError:
        pass  # refused: audited, a fever alert without the visitor's name
    else:
        raise AssertionError("a visitor with fever got a pass")

    entries = site.register().passes
    holders: dict[str, list[tuple[int, str, str]]] = {}
    for e in sorted(entries.values(), key=lambda e: e.pass_id):
        holders.setdefault(e.household, []).append((e.pass_id, e.household, e.role))
    revoked = (guest.pass_id, "H107", "resident")
    alerts = AlertStore(site.store)
    collector = Collector(site, parse_broker("mqtt://127.0.0.1:9"), client_id="legacy")

    def send(gate: str, events: list[Any]) -> None:
        collector.handle(topics.events(SITE, gate), encode_batch(gate, events))

    def status(gate: str, state: str, **extra: Any) -> None:
        body = {"gate": gate, "site": SITE, "state": state, **extra}
        collector.handle(topics.status(SITE, gate), encode_status(body))

    versions = {"config": 3, "register": 9}

    def online(gate: Gate, at: str, backlog: int = 0, **extra: Any) -> None:
        """The retained status of a gate at work, with its own figures."""
        last = gate.seq
        figures = {"backlog": backlog, "last_seq": last, "acked_seq": last, "versions": versions}
        status(gate.gate, "online", at=at, **figures, **extra)

    yesterday, tomorrow = today - timedelta(days=1), today + timedelta(days=1)
    h101, h102, h103 = holders["H101"], holders["H102"], holders["H103"]
    h105, h108 = holders["H105"], holders["H108"]

    # east: a gate from before epochs (epoch ''), local times to the second, yesterday.
    east = Gate(SITE, "east", "", versions)
    batch = []
    for i in range(24):
        people = [*h101, *h102, *h103, *h105]
        holder = people[i % len(people)]
        hh, mm = 6 + i // 3, (i * 19) % 60
        batch.append(east.passage(local(yesterday, hh, mm), "out" if i % 2 else "in", holder))
    batch.append(
        east.event("exit_request", local(yesterday, 14, 2), "exit_request", direction="out")
    )
    batch.append(east.event("passed", local(yesterday, 14, 2, 5), "ok", direction="out"))
    batch.append(
        east.passage(
            local(yesterday, 14, 30),
            "in",
            h103[0],
            decision="deny",
            reason="fever",
            temperature_c=38.6,
        )
    )
    batch.append(
        east.event(
            "alert",
            local(yesterday, 14, 30, 1),
            "fever",
            holder=h103[0],
            temperature_c=38.6,
            detail={"priority": "high", "temperature_c": 38.6},
        )
    )
    batch.append(east.passage(local(yesterday, 23, 59, 59), "in", h105[1]))
    send("east", batch[:15])
    send("east", batch[15:])
    online(east, utc(yesterday, 23, 0), direction=None)

    # north: +08:00 with milliseconds; the replay conflicts of tomorrow.
    north = Gate(SITE, "north", "9f3c2a1b7d5e4f60", versions)
    send(
        "north",
        [
            north.passage(
                local(tomorrow, 0, 0, 0, ms=True), "out", h102[0]
            ),  # local midnight: the day before in UTC
            north.passage(local(tomorrow, 7, 0, ms=True), "out", h101[0]),
            north.passage(local(tomorrow, 7, 45, ms=True), "out", h105[0]),
            north.passage(local(tomorrow, 8, 10, ms=True), "out", revoked),  # revoked_pass_used
            north.passage(local(tomorrow, 9, 0, ms=True), "out", h108[0]),  # quarantined_exit
            north.passage(
                local(tomorrow, 9, 1, ms=True),
                "out",
                h108[1],
                decision="deny",
                reason="quarantined",
            ),
            north.event(
                "device",
                local(tomorrow, 9, 30, ms=True),
                "camera_lost",
                detail={"error": "/dev/video0: no such device"},
            ),
            north.event("device", local(tomorrow, 9, 31, ms=True), "camera_ok"),
            north.event(
                "override", local(tomorrow, 9, 40, ms=True), "guard_override", direction="in"
            ),
        ],
    )
    east2 = Gate(SITE, "east", "3e5d0c7a9b1f2e48", versions)  # a new SD card: gate_reset
    send(
        "east",
        [
            east2.passage(local(tomorrow, 7, 5), "out", h101[1]),  # household_over_quota
            east2.passage(local(tomorrow, 7, 50), "out", h105[0]),  # pass_out_twice
            east2.passage(local(tomorrow, 10, 0), "in", h101[0]),
            east2.passage(local(tomorrow, 10, 5), "in", h101[1]),
            east2.passage(local(tomorrow, 11, 0), "out", h101[2]),
            east2.passage(local(tomorrow, 12, 0), "in", h101[2]),
        ],
    )

    # west: UTC times (as gates write them now); it loses committed history.
    west = Gate(SITE, "west", "a1b2c3d4e5f60718", versions)
    logged = []
    people = [*h103, *h105, *holders["H104"], *holders["H106"]]  # H106: staff
    for i in range(30):
        holder = people[i % len(people)]
        logged.append(
            west.passage(utc(tomorrow, 13 + i // 6, (i * 7) % 60), "in" if i % 2 else "out", holder)
        )
    logged.append(west.passage(utc(tomorrow, 12, 30), "out", h101[0]))
    send("west", logged[:20])
    send("west", logged[20:31])
    # Its database came back from an older copy: it confirmed seq 22 and still holds 23..24,
    # then numbered three new events 25..27 that the collector holds other events under.
    west.seq = 24
    reused = [west.passage(utc(tomorrow, 19, m), "in", h103[0], tag="/reused") for m in (1, 2, 3)]
    send("west", [logged[22], logged[23], *reused])
    # Acknowledged at 25 with another uuid: it moves to a new epoch, its events after the
    # confirmed 22 renumbered 1..5 (23 and 24 the collector holds: aliases), then its alert.
    new_epoch = "c0ffee00d15ea5e5"
    moved = [
        replace(
            e,
            epoch=new_epoch,
            seq=n,
            detail={**e.detail, "moved_from": {"epoch": west.epoch, "seq": e.seq}},
        )
        for n, e in enumerate([logged[22], logged[23], *reused], start=1)
    ]
    west2 = Gate(SITE, "west", new_epoch, versions)
    west2.seq = len(moved)
    lost = west2.event(
        "alert",
        utc(tomorrow, 19, 5),
        "gate_history_lost",
        detail={
            "priority": "high",
            "epoch": west.epoch,
            "new_epoch": new_epoch,
            "confirmed_seq": 22,
            "last_seq": 27,
            "collector_seq": 25,
            "moved": len(moved),
        },
    )
    send("west", [*moved, lost])
    send(
        "west",
        [west2.passage(utc(tomorrow, 20, m), "in" if m % 2 else "out", h103[1]) for m in range(8)],
    )

    # Broken messages: recorded in rejected_messages, never stored as events.
    collector.handle(topics.events(SITE, "west"), b'{"schema": 1, "events": [')
    never = Gate(SITE, "north", north.epoch, versions)
    never.seq = north.seq
    bad = never.event("decision", local(tomorrow, 21, 0, ms=True), "ok", decision="allow")
    raw = encode_batch("north", [bad]).replace(b'"decision": "allow"', b'"decision": "maybe"')
    collector.handle(topics.events(SITE, "north"), raw)
    collector.handle(f"menwei/{SITE}/south/telemetry", b"{}")
    collector.handle(topics.status(SITE, "north"), b'{"state": "sleeping"}')

    # Statuses and outages: north reports a storage fault, goes offline (outage, ended when
    # it is back), offline again (open); later every gate is silent (open outages).
    health = GateHealth(site.store, alerts, timedelta(minutes=10))
    fault = {
        "state": "fault",
        "kind": "disk_full",
        "error": "database or disk is full",
        "since": utc(tomorrow, 9, 50),
    }
    online(north, utc(tomorrow, 9, 50), 3, storage=fault, camera={"state": "ok"})
    online(west2, utc(tomorrow, 20, 10), storage=None)
    status("north", "offline")
    health.check()
    online(north, utc(tomorrow, 10, 0), storage={"state": "ok"})
    health.check()
    status("north", "offline")
    health.check()
    health.check(now=datetime.now(UTC) + timedelta(hours=1))

    for alert in alerts.list()[-3:]:  # the oldest three
        alerts.acknowledge(alert.id, "wang", "已处理 / handled")

    accounts = AccountStore(site.store)
    accounts.add("wang", "admin", "correct horse battery", actor="root")
    accounts.add("li", "operator", "staple battery horse", actor="wang")
    assert accounts.login("wang", "correct horse battery", "10.0.0.5").token
    accounts.login("li", "wrong password", "10.0.0.7")
    accounts.login("li", "wrong again", "10.0.0.7")
    accounts.login("admin", "admin123", "203.0.113.9")

    site.close()
    db_path = directory / "server.db"
    with sqlite3.connect(db_path) as conn:
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        counts = {
            t: conn.execute(f"SELECT COUNT(*) FROM [{t}]").fetchone()[0]
            for (t,) in conn.execute(
                "SELECT name FROM sqlite_master WHERE type = 'table' ORDER BY name"
            )
        }
    conn.close()
    assert not Path(f"{db_path}-wal").exists() or Path(f"{db_path}-wal").stat().st_size == 0
    shutil.copyfile(db_path, out / f"{NAME}.sqlite")
    shutil.copyfile(key_path(directory, key), out / f"{NAME}-key-{key}.pem")
    shutil.rmtree(work)
    print(f"{out / (NAME + '.sqlite')}: {(out / (NAME + '.sqlite')).stat().st_size} bytes")
    for table, n in counts.items():
        print(f"  {table:20} {n}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("out", type=Path, help="directory to write the database and key into")
    args = parser.parse_args()
    old_code()
    logging.basicConfig(level=logging.ERROR)  # the collector has no broker: acks not sent
    make(args.out.resolve())


if __name__ == "__main__":
    main()
