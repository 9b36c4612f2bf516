"""A week of site life, set up the way an installer sets it up, at accelerated time.

Real parts: Mosquitto from the shipped configuration, set up over TLS the documented way
(`menwei broker setup` in the server directory, its ACL, a certificate for the collector and,
from `gate init`, for each gate: tests/e2e/shipped_broker.py); the real collector; two real
gate daemons
(simulated camera, thermometer and relay) each behind a TCP relay that can be cut
(tests/e2e/netcut.py); operators' changes through the real `menwei` command line.

Time: the collector's site clock and both gates' clocks read one simulated clock
(tests/e2e/simtime.py). It runs at the real rate between scenes and is stepped forward
(at most `step_h` simulated hours at a time, each step waiting until every connected gate
has heard the collector's next freshness statement), so a week passes in about a minute:
an acceleration of roughly 10,000x. We chose a time seam over libfaketime: libfaketime
accelerates every clock of a process (paho's keepalive, the broker's view of it,
the gate's jump detection) and cannot step the gates and the server in lockstep.

The week: residents going out and in at both gates every day (household quotas across gates,
anti-passback, outing windows, a fever); Tuesday is quiet (no document changes at all);
Wednesday a policy change is published (three exits a day instead of two); Thursday a key
rotation, a new pass signed by the new key, a revocation and a quarantine; the west gate is
cut off from Friday 00:00 to Saturday 06:00, 30 hours, longer than max_data_age_h (24).
Every decision is checked against what the rules say at that moment; any guard_confirm the
rules do not call for fails the test.
"""

from __future__ import annotations

import functools
import json
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest

from menwei.broker_setup import BROKER_DIR, link_server_toml
from menwei.reconcile import reconcile
from protocol.broker import parse_broker
from server.collector import Collector
from server.site import IssuedPass, Site
from tests.conftest import run_menwei
from tests.e2e.helpers import GateThread, Stage, provision_gate, wait_until
from tests.e2e.netcut import NetCut
from tests.e2e.shipped_broker import SITE, ShippedBroker
from tests.e2e.simtime import SimTime
from tests.e2e.sitelife import heard_since, scan

TZ = ZoneInfo("Asia/Shanghai")
USERS = ("collector", "east", "west")
NORMAL_FOREHEAD = 34.6  # the simulated thermometer reads a body temperature of about 36.6 °C
FEVER_FOREHEAD = 36.5
MAX_DATA_AGE_H = 24.0

PEOPLE = {
    "A1": ("1-1-101", "林一"),
    "A2": ("1-1-101", "林二"),
    "B1": ("1-1-102", "韩三"),
    "C1": ("2-1-201", "周四"),  # household quarantined on Thursday
    "D1": ("2-1-202", "吴五"),  # pass revoked on Thursday
    "W1": ("3-1-301", "郑六"),  # uses the west gate while it is cut off
}


def next_monday(now: datetime) -> datetime:
    local = now.astimezone(TZ)
    days = 7 - local.weekday()
    return datetime.combine(local.date() + timedelta(days=days), datetime.min.time(), TZ)


@dataclass
class Outcome:
    at: str
    gate: str
    who: str
    direction: str
    expected: str
    actual: str
    rule: str


@dataclass
class Week:
    """The running site and what it has decided."""

    sim: SimTime
    site: Site
    collector: Collector
    gates: dict[str, GateThread]
    stages: dict[str, Stage]
    links: dict[str, NetCut]
    passes: dict[str, IssuedPass]
    step_h: float
    outcomes: list[Outcome] = field(default_factory=list)
    statements_seen: Counter[str] = field(default_factory=Counter)
    tried: dict[str, Any] = field(default_factory=dict)

    # --- time ------------------------------------------------------------------------------

    def connected(self) -> list[str]:
        return [g for g, link in self.links.items() if not link.down]

    def advance_to(self, moment: datetime) -> None:
        """Let simulated time pass until `moment`, the server re-affirming as it goes."""
        while (left := (moment - self.sim.utc()).total_seconds()) > 0:
            self.sim.advance(min(left, self.step_h * 3600))
            since = self.sim.utc() - timedelta(minutes=5)
            for gate in self.connected():
                wait_until(
                    functools.partial(heard_since, self.gates[gate], since),
                    20,
                    f"gate {gate} heard no freshness statement at {self.sim.utc()}",
                )
                self.statements_seen[gate] += 1

    # --- people at gates -------------------------------------------------------------------

    def passage(self, who: str, gate: str, direction: str, expected: str, **meta: Any) -> None:
        meta = {"direction": direction, **meta}
        if direction == "in":
            meta.setdefault("forehead_c", NORMAL_FOREHEAD)
        event = scan(self.gates[gate], self.stages[gate], self.sim, self.passes[who].qr, **meta)
        self.outcomes.append(
            Outcome(
                self.sim.utc().astimezone(TZ).strftime("%a %H:%M"),
                gate,
                who,
                direction,
                expected,
                event["reason"],
                str(event["detail"].get("rule")),
            )
        )
        if event["decision"] == "allow":
            self.settle(who, direction, gate)

    def settle(self, who: str, direction: str, gate: str) -> None:
        """Wait until the collector has the passage and every other connected gate counts it,
        as it would have long before the next person arrives."""
        source = self.gates[gate].daemon
        if self.links[gate].down:
            return
        wait_until(lambda: source.store.backlog() == 0, 30, f"{gate} did not sync")
        pass_id = self.passes[who].pass_id
        for other in self.connected():
            if other == gate:
                continue
            wait_until(
                lambda d=self.gates[other].daemon: (
                    (pass_id in d.state.outside) == (direction == "out")
                ),
                30,
                f"{other} did not count {who}'s passage at {gate}",
            )

    # --- operators -------------------------------------------------------------------------

    def rollout(self, change: Callable[[], object]) -> None:
        """An operator's change; then wait until every connected gate holds the new versions,
        and let five minutes pass: the command line signed its freshness statement with the
        real clock, days behind this simulated one; the collector's next one counts."""
        change()
        want = self.site.published_versions()
        for gate in self.connected():
            daemon = self.gates[gate].daemon
            wait_until(
                lambda d=daemon: d.know.versions() == want,
                30,
                lambda d=daemon, g=gate: f"{g} holds {d.know.versions()}, published {want}",
            )
        self.advance_to(self.sim.utc() + timedelta(minutes=5))

    def menwei(self, *args: str) -> dict[str, Any]:
        out = run_menwei(*args).stdout
        return dict(json.loads(out)) if out.strip().startswith("{") else {}


# --- setting the site up as the docs say ----------------------------------------------------


def set_policy(server: Path, key: str, value: str) -> None:
    toml = server / "server.toml"
    lines = toml.read_text(encoding="utf-8").splitlines(keepends=True)
    hits = [i for i, line in enumerate(lines) if line.split("=")[0].strip() == key]
    assert len(hits) == 1, f"{key} not once in server.toml"
    comment = lines[hits[0]].partition("#")[2]
    lines[hits[0]] = f"{key} = {value}" + (f"  #{comment}" if comment else "\n")
    toml.write_text("".join(lines), encoding="utf-8")


@pytest.fixture
def week_factory(tmp_path: Path) -> Iterator[Callable[[float], Week]]:
    cleanup: list[Callable[[], None]] = []

    def make(step_h: float) -> Week:
        start = next_monday(datetime.now(UTC))
        sim = SimTime(start - timedelta(hours=1))
        server = tmp_path / "server"
        run_menwei("server", "init", str(server), "--site", SITE)
        broker = ShippedBroker(tmp_path / "broker", USERS, folder=server / BROKER_DIR)
        broker.__enter__()
        cleanup.append(lambda: broker.__exit__(None, None, None))
        link_server_toml(server, broker.url)  # the [mqtt] lines `broker setup` printed
        site = Site(server, clock=sim.utc)
        cleanup.append(site.close)
        until = (start + timedelta(days=14)).date().isoformat()
        passes = {
            who: site.issue_pass(hh, name, room=hh, valid_until=site.parse_time(until))
            for who, (hh, name) in PEOPLE.items()
        }
        gates: dict[str, GateThread] = {}
        stages: dict[str, Stage] = {}
        links: dict[str, NetCut] = {}
        for gate in ("east", "west"):
            link = NetCut(broker.host, broker.port, tls=True)
            cleanup.append(link.close)
            gate_dir = provision_gate(
                tmp_path, server, gate, "both", link.url, status_interval_s=1, resend_after_s=2
            )
            thread = GateThread(gate_dir, link.url, sim=sim).start()
            cleanup.append(thread.stop)
            gates[gate], stages[gate], links[gate] = thread, Stage(gate_dir / "stage"), link
        collector = Collector(site, parse_broker(broker.url))
        collector.document_check_s = 0.1
        collector.start()
        cleanup.append(collector.close)
        wait_until(collector.connected.is_set, 15, "collector did not connect (credentials?)")
        week = Week(sim, site, collector, gates, stages, links, passes, step_h)
        for g in gates.values():
            wait_until(functools.partial(heard_since, g, start - timedelta(days=9)), 30, "none")
        week.advance_to(start)
        return week

    yield make
    for undo in reversed(cleanup):
        undo()


# --- the week ---------------------------------------------------------------------------------

Scene = tuple[timedelta, Callable[[], object]]
"""When in the day (after local midnight), and what happens."""


def routine(week: Week, *, exits_per_day: int, gates: tuple[str, str]) -> list[Scene]:
    """A household of two and a neighbour, every day; `gates` = (first, second) gate used."""
    first, second = gates
    p = week.passage

    def at(hh: int, mm: int, who: str, gate: str, direction: str, expected: str) -> Scene:
        return timedelta(hours=hh, minutes=mm), lambda: p(who, gate, direction, expected)

    scenes = [
        at(5, 30, "B1", first, "out", "outside_window"),  # before 06:00
        at(7, 0, "B1", first, "out", "ok"),
        at(7, 5, "B1", second, "out", "anti_passback"),  # out already, via the other gate
        at(8, 0, "A1", first, "out", "ok"),
        at(8, 10, "A2", second, "out", "household_out_limit"),  # one member out at a time
        at(9, 30, "A1", second, "in", "ok"),
        at(10, 0, "A2", first, "out", "ok"),
        at(11, 0, "A2", first, "in", "ok"),
        at(18, 0, "B1", second, "in", "ok"),
        at(20, 30, "B1", first, "out", "outside_window"),
    ]
    if exits_per_day > 2:
        scenes += [at(12, 0, "A1", second, "out", "ok"), at(12, 30, "A1", first, "in", "ok")]
    else:
        scenes += [at(12, 0, "A1", second, "out", "daily_exit_limit")]
    return scenes


def run_day(week: Week, midnight: datetime, *scenes: list[Scene]) -> None:
    """Play the scenes of one day in time order."""
    for offset, act in sorted((s for group in scenes for s in group), key=lambda s: s[0]):
        week.advance_to(midnight + offset)
        act()


def at(hh: int, mm: int, act: Callable[[], object]) -> Scene:
    return timedelta(hours=hh, minutes=mm), act


def live_a_week(week: Week) -> None:
    monday = week.sim.utc().astimezone(TZ)
    assert (monday.weekday(), monday.hour, monday.minute) == (0, 0, 0), monday
    days = [monday + timedelta(days=n) for n in range(8)]
    both, back = ("east", "west"), ("west", "east")
    p, menwei, rollout, server = week.passage, week.menwei, week.rollout, str(week.site.dir)

    # Monday: an ordinary day; an outing after the window and a fever in the evening.
    run_day(
        week,
        days[0],
        routine(week, exits_per_day=2, gates=both),
        [
            at(21, 0, lambda: p("C1", "east", "out", "outside_window")),
            at(21, 5, lambda: p("W1", "west", "in", "fever", forehead_c=FEVER_FOREHEAD)),
        ],
    )

    # Tuesday: a quiet day. Nothing is published; every gate keeps deciding by itself.
    quiet = week.site.published_versions()
    run_day(week, days[1], routine(week, exits_per_day=2, gates=back))
    week.advance_to(days[2])
    assert week.site.published_versions() == quiet, "the quiet day changed nothing"

    # Wednesday 04:30: three exits a day instead of two; tried on the recorded traffic first.
    def change_policy() -> None:
        set_policy(week.site.dir, "household_max_exits_per_day", "3")
        week.tried = menwei("policy", "try", server, "--json")
        # Monday's and Tuesday's third exit (refused, daily_exit_limit) would have been allowed.
        assert {"from": "daily_exit_limit", "to": "ok", "count": 2} in week.tried["changes"]
        rollout(lambda: menwei("policy", "publish", server, "--json"))
        for gate in week.gates.values():
            assert gate.daemon.know.policy.household_max_exits_per_day == 3

    run_day(week, days[2], [at(4, 30, change_policy)], routine(week, exits_per_day=3, gates=both))

    # Thursday 04:30: key rotation, a new pass signed by the new key, a revocation and a
    # quarantine; the new pass, the revoked one and the quarantined household in the afternoon.
    def new_pass() -> None:
        week.passes["E1"] = week.site.issue_pass("3-1-302", "钱七", room="3-1-302")

    def operators() -> None:
        rollout(lambda: menwei("keys", "rotate", server, "--json"))
        rollout(new_pass)
        revoked = str(week.passes["D1"].pass_id)
        rollout(lambda: menwei("pass", "revoke", server, revoked, "--reason", "lost"))
        rollout(lambda: menwei("household", "quarantine", server, "2-1-201"))

    run_day(
        week,
        days[3],
        [at(4, 30, operators)],
        routine(week, exits_per_day=3, gates=both),
        [
            at(14, 0, lambda: p("E1", "east", "out", "ok")),
            at(15, 0, lambda: p("E1", "west", "in", "ok")),
            at(16, 0, lambda: p("D1", "west", "out", "revoked")),
            at(16, 10, lambda: p("C1", "east", "out", "quarantined")),
            at(16, 20, lambda: p("C1", "west", "in", "ok")),  # entries are always allowed
        ],
    )

    # Friday 00:00: the west gate is cut off for 29 hours (max_data_age_h is 24).
    run_day(
        week,
        days[4],
        [at(0, 0, week.links["west"].cut)],
        routine(week, exits_per_day=3, gates=("east", "east")),
        [at(19, 0, lambda: p("W1", "west", "out", "ok"))],  # 19 h since its last proof
    )

    def reconnect_west() -> None:
        week.links["west"].restore()
        since = week.sim.utc() - timedelta(minutes=5)
        wait_until(functools.partial(heard_since, week.gates["west"], since), 60, "west lost")

    # Saturday: the guard confirms at west at 01:30 (25.5 h); the link is back at 05:00.
    run_day(
        week,
        days[5],
        [
            at(1, 30, lambda: p("W1", "west", "in", "guard_confirm")),
            at(5, 0, reconnect_west),
            at(5, 10, lambda: p("W1", "west", "in", "ok")),
        ],
        routine(week, exits_per_day=3, gates=both),
    )
    run_day(week, days[6], routine(week, exits_per_day=3, gates=back))
    week.advance_to(days[7])


def check(week: Week) -> dict[str, Any]:
    wrong = [o for o in week.outcomes if o.actual != o.expected]
    unasked = [
        o for o in week.outcomes if o.actual == "guard_confirm" and o.expected != "guard_confirm"
    ]
    for gate in week.gates.values():
        wait_until(lambda g=gate: g.daemon.store.backlog() == 0, 60, "a gate did not sync")
    r = reconcile(
        [g.daemon.config.db_path for g in week.gates.values()], week.site.dir / "server.db"
    )
    summary = {
        "decisions": len(week.outcomes),
        "by_reason": dict(Counter(o.actual for o in week.outcomes)),
        "wrong": [vars(o) for o in wrong],
        "guard_confirm_unasked": len(unasked),
        "guard_confirm_asked": sum(o.expected == "guard_confirm" for o in week.outcomes),
        "statements_heard": dict(week.statements_seen),
        "freshness_issued": week.collector.stats["freshness"],
        "lost": r.lost,
        "duplicates": r.duplicates,
        "conflicts": week.collector.stats["conflicts"],
        "policy_try": {k: week.tried.get(k) for k in ("decisions", "changed", "not_reproduced")},
    }
    print(json.dumps(summary, ensure_ascii=False))
    assert not unasked, f"guard_confirm the rules do not call for: {[vars(o) for o in unasked]}"
    assert not wrong, f"decisions that differ from the rules: {summary['wrong']}"
    assert (r.lost, r.duplicates) == (0, 0), r
    return summary


def test_a_week_of_site_life(week_factory: Callable[[float], Week]):
    """The short week of `make test`: 2-hour steps."""
    check(live(week_factory(2.0)))


@pytest.mark.slow
def test_a_week_of_site_life_in_quarter_hours(week_factory: Callable[[float], Week]):
    check(live(week_factory(0.25)))


def live(week: Week) -> Week:
    live_a_week(week)
    return week
