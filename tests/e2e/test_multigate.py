"""Two exit gates of one compound, a collector and a real Mosquitto: the household rules hold
across gates while they can talk (a relayed passage refuses the second member within seconds),
and when one gate decided offline, the collector records the conflict once and rewrites
nothing.

The gates are `menwei gate run` subprocesses with simulated hardware; cards are real PNG
frames of real signed passes dropped into their stage folders. Outings are allowed all day
on this site so the tests tell the same story at any hour.
"""

from __future__ import annotations

import contextlib
import json
import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from menwei.mosquitto import MosquittoBroker, free_port
from protocol.broker import parse_broker
from server.collector import Collector
from server.site import IssuedPass, Site
from tests import collected
from tests.conftest import SITE, run_menwei
from tests.e2e.helpers import Stage, menwei_process, provision_gate, wait_until
from tests.e2e.session_ca import use_session_ca

HOUSEHOLD = "5-1-501"
FAST = {"resend_after_s": 1.5, "status_interval_s": 2}


@pytest.fixture
def allday_site(tmp_path: Path) -> Iterator[Site]:
    """A site whose policy allows outings all day (one member out per household, two exits
    a day, as shipped)."""
    server = tmp_path / "server"
    Site.init(server, SITE).close()
    use_session_ca(server)
    toml = server / "server.toml"
    text = toml.read_text(encoding="utf-8")
    assert 'outing_windows = ["06:00-20:00"]' in text, "server.toml layout changed"
    toml.write_text(
        text.replace('outing_windows = ["06:00-20:00"]', 'outing_windows = ["00:00-24:00"]'),
        encoding="utf-8",
    )
    with Site(server) as site:
        assert site.config.policy.outing_windows == ("00:00-24:00",)
        site.publish_policy("test")
        yield site


@pytest.fixture
def members(allday_site: Site) -> tuple[IssuedPass, IssuedPass]:
    a = allday_site.issue_pass(HOUSEHOLD, "王小明", room=HOUSEHOLD)
    b = allday_site.issue_pass(HOUSEHOLD, "王小红", room=HOUSEHOLD)
    return a, b


@pytest.fixture
def collector(allday_site: Site, broker: MosquittoBroker) -> Iterator[Collector]:
    c = Collector(allday_site, parse_broker(broker.url))
    c.start()
    wait_until(c.connected.is_set, 15, "collector did not connect to the broker")
    yield c
    c.close()


# --- reading a gate's own SQLite log, read-only -----------------------------------------------


def _ro(db: Path) -> sqlite3.Connection:
    return sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=10)


def gate_events(gate_dir: Path) -> list[dict[str, Any]]:
    db = gate_dir / "gate.db"
    if not db.exists():
        return []
    with contextlib.closing(_ro(db)) as conn:
        try:
            rows = conn.execute("SELECT body FROM events ORDER BY seq").fetchall()
        except sqlite3.OperationalError:  # not migrated yet
            return []
    return [json.loads(body) for (body,) in rows]


def gate_outside(gate_dir: Path) -> set[int]:
    """Pass ids the gate's persisted state has outside (its own and relayed passages)."""
    with contextlib.closing(_ro(gate_dir / "gate.db")) as conn:
        try:
            row = conn.execute("SELECT value FROM meta WHERE key = 'state'").fetchone()
        except sqlite3.OperationalError:
            return set()
    return set() if row is None else {int(k) for k in json.loads(row[0]).get("outside", {})}


def decisions_for(gate_dir: Path, pass_id: int) -> list[tuple[str, str, str]]:
    return [
        (e["decision"], e["reason"], e["direction"])
        for e in gate_events(gate_dir)
        if e["kind"] == "decision" and e["pass_id"] == pass_id
    ]


def wait_decision(gate_dir: Path, pass_id: int, what: str) -> tuple[str, str, str]:
    got = wait_until(
        lambda: decisions_for(gate_dir, pass_id),
        30,
        lambda: f"{what}: no decision for pass {pass_id}; log {gate_events(gate_dir)}",
        interval=0.1,
    )
    assert len(got) == 1, f"{what}: one card, one decision expected, got {got}"
    return got[0]  # type: ignore[no-any-return]


def wait_online(site: Site, gate: str, proc_output: Any) -> None:
    def online() -> bool:
        return any(
            g["gate"] == gate and (g["status"] or {}).get("state") == "online"
            for g in collected.gates(site.store)
        )

    wait_until(online, 30, lambda: f"gate {gate} never reported online:\n{proc_output()}")


def run_gate(log: Path, gate_dir: Path, broker_url: str) -> Any:
    return menwei_process(
        log, "gate", "run", "--config", str(gate_dir / "gate.toml"), "--broker", broker_url
    )


# --- (a) online: the gates agree within seconds ---------------------------------------------


def test_a_member_out_at_one_gate_is_counted_at_the_other(
    tmp_path: Path,
    allday_site: Site,
    members: tuple[IssuedPass, IssuedPass],
    broker: MosquittoBroker,
    collector: Collector,
) -> None:
    a, b = members
    east = provision_gate(tmp_path, allday_site.dir, "east", "out", broker.url, **FAST)
    west = provision_gate(tmp_path, allday_site.dir, "west", "out", broker.url, **FAST)
    with (
        run_gate(tmp_path / "east.log", east, broker.url) as east_proc,
        run_gate(tmp_path / "west.log", west, broker.url) as west_proc,
    ):
        wait_online(allday_site, "east", east_proc.output)
        wait_online(allday_site, "west", west_proc.output)

        Stage(east / "stage").drop(a.qr)
        assert wait_decision(east, a.pass_id, "A at east") == ("allow", "ok", "out")
        # The collector relays A's passage: the west gate counts A as out.
        wait_until(
            lambda: a.pass_id in gate_outside(west),
            15,
            lambda: f"west never learned that A is out:\n{west_proc.output()}",
            interval=0.1,
        )
        assert gate_outside(west) == {a.pass_id}

        Stage(west / "stage").drop(b.qr)
        assert wait_decision(west, b.pass_id, "B at west") == (
            "deny",
            "household_out_limit",
            "out",
        )
        assert east_proc.alive() and west_proc.alive()

    assert collected.conflicts(allday_site.store) == []
    stored = [(e["gate"], e["pass_id"], e["decision"]) for e in collected.events(allday_site.store)]
    assert ("east", a.pass_id, "allow") in stored


# --- (b) offline: decisions stand, the conflict is recorded once -------------------------------


def test_an_offline_gate_letting_a_second_member_out_is_one_conflict(
    tmp_path: Path,
    allday_site: Site,
    members: tuple[IssuedPass, IssuedPass],
    broker: MosquittoBroker,
    collector: Collector,
) -> None:
    a, b = members
    east = provision_gate(tmp_path, allday_site.dir, "east", "out", broker.url, **FAST)
    west = provision_gate(tmp_path, allday_site.dir, "west", "out", broker.url, **FAST)
    nowhere = f"mqtt://127.0.0.1:{free_port()}"  # nothing listens there: west is cut off

    with run_gate(tmp_path / "east.log", east, broker.url) as east_proc:
        wait_online(allday_site, "east", east_proc.output)
        with run_gate(tmp_path / "west-offline.log", west, nowhere):
            Stage(east / "stage").drop(a.qr)
            assert wait_decision(east, a.pass_id, "A at east") == ("allow", "ok", "out")
            Stage(west / "stage").drop(b.qr)
            # West does not know A is out: B is let out too (an offline decision is a fact).
            assert wait_decision(west, b.pass_id, "B at west offline") == ("allow", "ok", "out")
            wait_until(
                lambda: (
                    [
                        e["gate"]
                        for e in collected.events(allday_site.store)
                        if e["kind"] == "decision"
                    ]
                    == ["east"]
                ),
                30,
                lambda: f"the collector has {list(collected.events(allday_site.store))}",
            )
            assert collected.conflicts(allday_site.store) == []

        with run_gate(tmp_path / "west.log", west, broker.url) as west_proc:
            wait_until(
                lambda: collected.conflicts(allday_site.store),
                30,
                lambda: f"no conflict recorded; west:\n{west_proc.output()}",
                interval=0.1,
            )
            # The collector relayed B's passage to east: both gates now see the household.
            wait_until(
                lambda: gate_outside(east) == {a.pass_id, b.pass_id},
                15,
                lambda: f"east sees {gate_outside(east)} outside",
                interval=0.1,
            )
        assert east_proc.alive()

    status = json.loads(run_menwei("server", "status", str(allday_site.dir), "--json").stdout)
    (conflict,) = status["conflicts"]
    assert (conflict["kind"], conflict["gate"], conflict["seq"]) == (
        "household_over_quota",
        "west",
        1,
    )
    assert HOUSEHOLD in conflict["detail"]
    stored = sorted(
        (e["gate"], e["pass_id"], e["decision"], e["reason"])
        for e in collected.events(allday_site.store)
        if e["kind"] == "decision"
    )
    assert stored == [
        ("east", a.pass_id, "allow", "ok"),
        ("west", b.pass_id, "allow", "ok"),
    ], "nothing decided is rewritten"
