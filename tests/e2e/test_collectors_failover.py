"""Several collectors on one store (docs/configuration.md, "Several collectors").

First the acknowledgement that arrives out of order: two collectors each publish a gate's ack
after their own commit, so the lower one can reach the broker last and stay retained. The real
GateSync keeps the higher, asks again once, and the ack comes back up.

Then the fault test: the shipped Mosquitto over TLS (`menwei broker setup` in the server
directory: the site's ACL, one certificate per process), a PostgreSQL store made by `menwei
server init --store`, two `menwei server run --shared-group` processes (the second with its own
certificate, `menwei broker add-client`), three gates (the real GateSync over a real gate log,
fed decisions as a gate's decision core would log them: a hundred households going out and
back, and households over quota across two gates) and a real `menwei gate run` that loses
its connection twice (its Last Will). One collector is SIGKILLed again and again while the
events flow and restarted. At the end: every event stored exactly once
(menwei/reconcile.py), every gate's retained ack at its last seq, each conflict recorded
once, each outage one `gate_offline` alert.
"""

from __future__ import annotations

import contextlib
import functools
import itertools
import os
import threading
import time
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from sqlalchemy import select

from edge.store import GateStore
from edge.sync import GateSync, SyncSettings
from menwei.broker_setup import BROKER_DIR, link_server_toml
from menwei.mosquitto import MosquittoBroker
from menwei.postgres import PostgresServer
from menwei.reconcile import reconcile
from protocol import topics
from protocol.broker import parse_broker
from protocol.broker_tls import TlsFiles
from protocol.errors import MessageError
from protocol.events import Ack, Event, decode_batch
from server.storage import Store, default_url, schema
from tests.conftest import run_menwei
from tests.e2e.helpers import (
    MqttWatcher,
    Proc,
    gate_progress,
    make_event,
    provision_gate,
    wait_until,
)
from tests.e2e.session_ca import client_tls
from tests.e2e.shipped_broker import SITE, ShippedBroker

GROUP = "collectors"
TRAFFIC_GATES = ("east", "west", "north")
LOST_GATE = "south"  # a real gate daemon that loses its connection: its Last Will
USERS = ("collector", "collector-2", *TRAFFIC_GATES, LOST_GATE)
DAY = datetime(2026, 3, 2, 8, 0, tzinfo=ZoneInfo("Asia/Shanghai"))
FAST: dict[str, Any] = {"resend_after_s": 1.5, "status_interval_s": 2.0}


class ObservedSync(GateSync):
    """The real GateSync, noting the last acknowledgement it handled (instrumentation only)."""

    def __init__(self, *args: Any, **kw: Any) -> None:
        super().__init__(*args, **kw)
        self.last_ack: Ack | None = None

    def _handle_ack(self, payload: bytes) -> None:
        with contextlib.suppress(MessageError):
            self.last_ack = Ack.decode(payload)
        super()._handle_ack(payload)


def gate_sync(
    store: GateStore, gate: str, url: str, tls: TlsFiles, **settings: Any
) -> ObservedSync:
    sync = ObservedSync(
        SyncSettings(SITE, gate, parse_broker(url), tls=tls, **settings),
        store,
        on_document=lambda _kind, _raw: None,
        status=lambda: {"gate": gate, "site": SITE, "backlog": store.backlog()},
    )
    sync.start()
    wait_until(lambda: sync.connected, 15, f"gate {gate} did not connect")
    return sync


def log_event(store: GateStore, template: Event) -> Event:
    """Log `template` as the gate's next event (its seq and epoch are the log's)."""
    return store.append(lambda seq: replace(template, seq=seq), state=None, clock_floor=0.0)


# --- a lower ack that reaches the broker last ---------------------------------------------------


def test_a_lower_ack_arriving_last_is_asked_again_and_the_outbox_keeps_the_higher(
    tmp_path: Path, broker: MosquittoBroker
) -> None:
    """Collector A commits up to 5 and collector B up to 10; B's ack reaches the broker first,
    A's last: the retained ack says 5. The gate neither takes events back into its outbox nor
    requeues them: after resend_after_s it sends its event 10 once more, and the collector
    that gets it acknowledges 10 again."""
    gate_topic, ack_topic = topics.events(SITE, "east"), topics.ack(SITE, "east")
    with (
        MqttWatcher(broker.url, gate_topic) as collectors,
        GateStore(tmp_path / "gate.db") as store,
    ):
        logged = [log_event(store, make_event(SITE, "east", 0)) for _ in range(10)]
        sync = gate_sync(
            store, "east", broker.url, client_tls("east"), batch_size=5, resend_after_s=1.0
        )
        try:

            def received() -> list[int]:
                return [
                    e.seq
                    for m in collectors.on(gate_topic)
                    for e in decode_batch(m.payload, site=SITE, gate="east").events
                ]

            wait_until(lambda: received() == list(range(1, 11)), 15, lambda: f"{received()}")

            def ack(seq: int) -> bytes:
                return Ack("east", seq, store.epoch, logged[seq - 1].uuid).encode()

            collectors.publish(ack_topic, ack(10), retain=True)  # B's, first
            wait_until(lambda: store.acked_seq() == 10, 15, "ack 10 not handled")
            collectors.publish(ack_topic, ack(5), retain=True)  # A's, last: retained
            wait_until(lambda: sync.last_ack == Ack.decode(ack(5)), 15, "ack 5 not handled")
            assert (store.acked_seq(), store.backlog(), sync.acked) == (10, 0, 10)

            probe = collectors.wait_for(gate_topic, lambda m: len(received()) > 10, 15, "probe")
            assert [
                (e.seq, e.uuid) for e in decode_batch(probe.payload, site=SITE, gate="east").events
            ] == [(10, logged[9].uuid)], "the event at the gate's ack, alone"
            collectors.publish(ack_topic, ack(10), retain=True)  # the collector that got it
            wait_until(lambda: sync.last_ack == Ack.decode(ack(10)), 15, "ack 10 again")
            time.sleep(2.5)  # past another resend_after_s: nothing is queued again
            assert (sync.stats["probes"], sync.stats["requeued"]) == (1, 0)
            assert (store.acked_seq(), store.backlog()) == (10, 0)
            assert len(received()) == 11
        finally:
            sync.close()


# --- the fault test --------------------------------------------------------------------------


@dataclass(frozen=True)
class Traffic:
    """What the gates log, in time order, and the conflicts it must raise."""

    events: list[tuple[str, Event]]  # (gate, event); seq 0 until logged
    conflicts: set[tuple[str, str, str]]  # (kind, gate, uuid)


def traffic(households: int, over_quota: int) -> Traffic:
    """`households` one-member households going out through one gate and back in through
    another 20 minutes later (no conflict), and `over_quota` two-member households whose
    members go out through east and west a minute apart: the second exit is one member over
    household_max_out (1) across two gates, a household_over_quota conflict."""
    timed: list[tuple[datetime, str, Event]] = []

    def passage(at: datetime, gate: str, pass_id: int, household: str, direction: str) -> Event:
        event = make_event(
            SITE,
            gate,
            0,
            at=at.isoformat(timespec="milliseconds"),
            pass_id=pass_id,
            household=household,
            direction=direction,
            temperature_c=36.5 if direction == "in" else None,
        )
        timed.append((at, gate, event))
        return event

    for i in range(households):
        out_at = DAY + timedelta(seconds=40 * i)
        passage(out_at, TRAFFIC_GATES[i % 3], 10_000 + i, f"8-1-{i:03d}", "out")
        passage(
            out_at + timedelta(minutes=20),
            TRAFFIC_GATES[(i + 1) % 3],
            10_000 + i,
            f"8-1-{i:03d}",
            "in",
        )
    conflicts = set()
    for k in range(over_quota):
        at = DAY + timedelta(minutes=30 + 15 * k)
        passage(at, "east", 20_000 + 2 * k, f"9-1-{k:03d}", "out")
        second = passage(at + timedelta(minutes=1), "west", 20_001 + 2 * k, f"9-1-{k:03d}", "out")
        conflicts.add(("household_over_quota", "west", second.uuid))
    timed.sort(key=lambda t: t[0])
    return Traffic([(gate, event) for _at, gate, event in timed], conflicts)


def configure_server(server: Path, broker: ShippedBroker) -> None:
    """server.toml [mqtt] for the first collector: the lines `menwei broker setup` printed."""
    link_server_toml(server, broker.url)


class Collectors:
    """`menwei server run DIR --shared-group` twice: `a` with server.toml's certificate, `b`
    with collector-2's (`menwei broker add-client`); `b` is the one killed."""

    def __init__(self, work: Path, server: Path) -> None:
        self.work, self.server = work, server
        self.runs = itertools.count()
        self.a = self._run("collector")
        self.b = self._run("collector-2")
        self.kills = 0

    def _run(self, user: str) -> Proc:
        folder = self.server / BROKER_DIR
        login = (
            []
            if user == "collector"
            else [
                "--mqtt-cert-file",
                str(folder / f"{user}.pem"),
                "--mqtt-key-file",
                str(folder / f"{user}.key"),
            ]
        )
        return Proc(
            self.work / f"{user}-{next(self.runs)}.log",
            "server",
            "run",
            str(self.server),
            "--shared-group",
            GROUP,
            *login,
        )

    def kill_b_again_and_again(self, until: threading.Event, every_s: float) -> None:
        """SIGKILL b, restart it half a second later, again every `every_s`, until `until`."""
        while not until.wait(every_s):
            self.b.kill()
            self.b.stop()
            self.kills += 1
            time.sleep(0.5)
            self.b = self._run("collector-2")

    def output(self) -> str:
        return f"--- a\n{self.a.output()}\n--- b\n{self.b.output()}"

    def stop(self) -> None:
        for proc in (self.a, self.b):
            proc.stop()


class LostGate:
    """The real gate daemon `south` (`menwei gate run`, simulated hardware), started again
    after each loss of its connection."""

    def __init__(self, work: Path, server: Path, broker: ShippedBroker) -> None:
        self.work, self.broker = work, broker
        self.dir = provision_gate(
            work,
            server,
            LOST_GATE,
            "in",
            broker.url,
            **FAST,
        )
        self.runs: list[Proc] = []
        self.start()

    def start(self) -> None:
        self.runs.append(
            Proc(
                self.work / f"{LOST_GATE}-{len(self.runs)}.log",
                "gate",
                "run",
                "--config",
                str(self.dir / "gate.toml"),
                "--broker",
                self.broker.url,
            )
        )

    def lose_connection(self) -> None:
        """SIGKILL: the broker publishes the gate's Last Will."""
        self.runs[-1].kill()
        self.runs[-1].stop()

    def output(self) -> str:
        return self.runs[-1].output()

    def stop(self) -> None:
        for proc in self.runs:
            proc.stop()


class StoreView:
    """What the collectors wrote, read through the store's tables."""

    def __init__(self, url: str) -> None:
        self.store = Store(url, migrate=False)

    def rows(self, query: Any) -> list[tuple[Any, ...]]:
        with self.store.read() as tx:
            return [tuple(r) for r in tx.execute(query)]

    def conflicts(self) -> list[tuple[str, str, str]]:
        c = schema.conflicts.c
        return sorted(self.rows(select(c.kind, c.gate, c.uuid)))

    def alerts(self, kind: str) -> list[tuple[str, str]]:
        a = schema.alerts.c
        return sorted(self.rows(select(a.gate, a.key).where(a.kind == kind)))

    def gate_state(self, gate: str) -> str | None:
        g = schema.gates.c
        rows = self.rows(select(g.status).where(g.gate == gate))
        return None if not rows or rows[0][0] is None else str(rows[0][0])

    def open_outages(self, gate: str) -> int:
        o = schema.gate_outages.c
        return len(self.rows(select(o.id).where(o.gate == gate, o.ended_at.is_(None))))


def run_failover(
    tmp_path: Path,
    postgres: PostgresServer | None,
    *,
    households: int,
    over_quota: int,
    outages: int,
    traffic_s: float,
    kill_every_s: float,
) -> None:
    """The fault test on the PostgreSQL store of `postgres`, or (None) on the server
    directory's SQLite file."""
    server = tmp_path / "server"
    if postgres is None:
        url = default_url(server)
        run_menwei("server", "init", str(server), "--site", SITE, "--json")
    else:
        url = postgres.create_database(f"failover_{os.getpid()}_{households}")
        run_menwei("server", "init", str(server), "--site", SITE, "--store", url, "--json")
    plan = traffic(households, over_quota)
    view = StoreView(url)
    folder = server / BROKER_DIR
    with ShippedBroker(tmp_path / "broker", USERS, folder=folder) as broker:
        configure_server(server, broker)
        collectors = Collectors(tmp_path, server)
        stores = {g: GateStore(tmp_path / g / "gate.db") for g in TRAFFIC_GATES}
        syncs: dict[str, ObservedSync] = {}
        south = LostGate(tmp_path, server, broker)
        try:
            for g in TRAFFIC_GATES:
                syncs[g] = gate_sync(
                    stores[g],
                    g,
                    broker.url,
                    broker.tls_files(g),
                    batch_size=20,
                    **FAST,
                )

            def south_online() -> bool:
                return '"online"' in (view.gate_state(LOST_GATE) or "")

            wait_until(
                south_online,
                60,
                lambda: f"{LOST_GATE} never online\n{south.output()}\n{collectors.output()}",
            )

            done = threading.Event()
            killer = threading.Thread(
                target=collectors.kill_b_again_and_again, args=(done, kill_every_s)
            )
            feeder = threading.Thread(target=feed, args=(plan, stores, syncs, traffic_s))
            killer.start()
            feeder.start()
            try:
                # Meanwhile the real gate loses its connection `outages` times: each is one
                # gate_offline alert, and it ends when the gate is back online.
                for n in range(1, outages + 1):
                    south.lose_connection()
                    wait_until(
                        functools.partial(offline_alerts_are, view, n),
                        60,
                        lambda: (
                            f"offline alerts {view.alerts('gate_offline')}\n{collectors.output()}"
                        ),
                    )
                    south.start()
                    wait_until(
                        lambda: view.open_outages(LOST_GATE) == 0 and south_online(),
                        60,
                        lambda: f"{LOST_GATE}'s outage never ended\n{south.output()}",
                    )
                feeder.join(timeout=traffic_s + 60)
                assert not feeder.is_alive(), "the gates did not log their traffic"
            finally:
                done.set()
                killer.join(timeout=60)
            assert collectors.kills >= 2, "the collector was not killed mid-traffic"

            expected = {g: sum(1 for gate, _ in plan.events if gate == g) for g in stores}

            def settled() -> bool:
                return (
                    all(
                        stores[g].last_seq() == n
                        and syncs[g].acked == n
                        and acked_seq(syncs[g].last_ack) == n
                        and stores[g].backlog() == 0
                        for g, n in expected.items()
                    )
                    and gate_progress(south.dir).backlog == 0
                )

            def progress() -> str:
                gates = {
                    g: (stores[g].last_seq(), syncs[g].acked, syncs[g].last_ack, stats(syncs[g]))
                    for g in stores
                }
                return f"{gates}\n{collectors.output()}"

            wait_until(settled, 60, progress, interval=0.2)
            wait_until(
                lambda: view.conflicts() == sorted(plan.conflicts),
                30,
                lambda: f"conflicts {view.conflicts()}",
            )

            assert len(view.alerts("conflict")) == len(plan.conflicts)
            offline = view.alerts("gate_offline")
            assert [gate for gate, _key in offline] == [LOST_GATE] * outages, offline
            assert len({key for _gate, key in offline}) == outages
            collectors.stop()
            for sync in syncs.values():
                sync.close()
            syncs.clear()
            south.stop()
            for g, n in expected.items():  # the retained ack, as the gate finds it next time
                with MqttWatcher(broker.url, topics.ack(SITE, g), **broker.login(g)) as watcher:
                    retained = watcher.wait_for(topics.ack(SITE, g), lambda m: m.retain, 15, g)
                    assert Ack.decode(retained.payload).acked_seq == n, g
            r = reconcile([tmp_path / g / "gate.db" for g in (*TRAFFIC_GATES, LOST_GATE)], url)
            assert (r.lost, r.duplicates, r.pending) == (0, 0, 0), r
            assert r.gate_events >= len(plan.events), r
        finally:
            for sync in syncs.values():
                sync.close()
            collectors.stop()
            south.stop()
            for store in stores.values():
                store.close()
            view.store.close()


def feed(
    plan: Traffic, stores: dict[str, GateStore], syncs: dict[str, GateSync], seconds: float
) -> None:
    """The gates log their decisions at an even pace over `seconds`, as people pass."""
    pause = seconds / max(1, len(plan.events))
    for gate, event in plan.events:
        log_event(stores[gate], event)
        syncs[gate].notify()
        time.sleep(pause)


def offline_alerts_are(view: StoreView, n: int) -> bool:
    return len(view.alerts("gate_offline")) == n


def acked_seq(ack: Ack | None) -> int | None:
    return None if ack is None else ack.acked_seq


def stats(sync: GateSync) -> dict[str, int]:
    return {k: v for k, v in sync.stats.items() if v}


def test_two_collectors_one_killed_again_and_again_lose_and_double_nothing(
    tmp_path: Path, postgres: PostgresServer
) -> None:
    run_failover(
        tmp_path, postgres, households=100, over_quota=5, outages=2, traffic_s=20, kill_every_s=4
    )


@pytest.mark.slow
def test_two_collectors_failover_longer(tmp_path: Path, postgres: PostgresServer) -> None:
    run_failover(
        tmp_path, postgres, households=600, over_quota=20, outages=4, traffic_s=90, kill_every_s=5
    )


@pytest.mark.slow
def test_two_collectors_on_one_sqlite_file(tmp_path: Path) -> None:
    """docs/configuration.md: a SQLite file serves several collectors of one machine too."""
    run_failover(
        tmp_path, None, households=100, over_quota=5, outages=2, traffic_s=20, kill_every_s=4
    )
