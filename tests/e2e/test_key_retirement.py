"""Issue 11's critical attack, through the shipped broker, against `menwei gate run`.

A thief holds a copy of the site's key 1. The operator runs `menwei keys rotate` and
`menwei keys retire DIR 1`. The thief, logged in to the broker with a collector's
credentials (the one login allowed to write the document topics), publishes, retained, a
config (fever threshold 42 °C) and a register (no revocations) signed with key 1, versions
1001. Before trust roots a running gate took both: key 1 trusted for passes again, a
revoked pass let in, the fever threshold moved, the server's next registers ignored.

Now: a gate that has seen the retirement refuses both (logged, counted in its status,
`untrusted_document` alerts at the collector), and so does a gate that was stopped during
the rotation and the retirement and started while the forgeries were retained; the
collector replaces the forgeries on the broker (`foreign_document`); a revoked pass stays
refused, the threshold stays 37.3 °C, the server's next register applies. Forgeries signed
while key 1 was still trusted are accepted then, and superseded by the server's documents
as soon as it retires key 1.
"""

from __future__ import annotations

import contextlib
import json
import sqlite3
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import load_pem_private_key

from menwei.broker_setup import BROKER_DIR, link_server_toml
from protocol import topics
from protocol.broker import parse_broker
from protocol.documents import CONFIG_FILE, parse_document, sign_document
from protocol.register import Register
from server.collector import Collector
from server.keys import key_path
from server.site import Site
from tests import collected
from tests.conftest import run_menwei
from tests.e2e.helpers import (
    MqttWatcher,
    Proc,
    Stage,
    gate_document_versions,
    provision_gate,
    wait_until,
)
from tests.e2e.shipped_broker import EXTRA_COLLECTOR, SITE, ShippedBroker

USERS = ("collector", "east", EXTRA_COLLECTOR)  # collector-2's certificate: the thief's login
CONFIG, REGISTER = topics.config(SITE), topics.register(SITE)


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[ShippedBroker]:
    """The shipped broker over TLS, set up as documented in the server directory (`broker
    setup` in SERVER/broker, so that `gate init` issues the gate's certificate)."""
    server = tmp_path / "server"
    Site.init(server, SITE).close()
    with ShippedBroker(tmp_path / "broker", USERS, folder=server / BROKER_DIR) as b:
        link_server_toml(server, b.url)  # the [mqtt] lines `broker setup` printed
        yield b


class World:
    """A server directory, its collector (started and stopped at will) and gate "east" as a
    `menwei gate run` process, on the shipped broker."""

    def __init__(self, tmp_path: Path, broker: ShippedBroker) -> None:
        self.tmp = tmp_path
        self.broker = broker
        self.server = tmp_path / "server"
        self.site = Site(self.server)
        self.collector: Collector | None = None
        self.gate_dir = provision_gate(
            tmp_path, self.server, "east", "in", broker.url, status_interval_s=1
        )
        self.stage = Stage(self.gate_dir / "stage")
        self.gate: Proc | None = None
        self.runs = 0

    # --- parts ---------------------------------------------------------------------------

    def start_collector(self) -> None:
        self.collector = Collector(self.site, parse_broker(self.broker.url))
        self.collector.document_check_s = 0.2
        self.collector.start()
        wait_until(self.collector.connected.is_set, 15, "the collector did not connect")

    def stop_collector(self) -> None:
        if self.collector is not None:
            self.collector.close()
            self.collector = None

    def start_gate(self) -> None:
        self.runs += 1
        log = self.tmp / f"gate-{self.runs}.log"
        self.gate = Proc(log, "gate", "run", "--config", str(self.gate_dir / "gate.toml"))

    def stop_gate(self) -> None:
        if self.gate is not None:
            self.gate.stop()
            self.gate = None

    def close(self) -> None:
        self.stop_gate()
        self.stop_collector()
        self.site.close()

    def menwei(self, *args: str) -> dict[str, Any]:
        return dict(json.loads(run_menwei(*args, "--json").stdout))

    # --- what the gate holds, read without writing to it -----------------------------------

    def gate_root(self) -> int:
        with contextlib.closing(ro(self.gate_dir / "gate.db")) as conn:
            row = conn.execute("SELECT value FROM meta WHERE key = 'trust_root'").fetchone()
        return 0 if row is None else int(json.loads(row[0])["version"])

    def holds_published(self) -> bool:
        held = gate_document_versions(self.gate_dir)
        return all(held.get(k) == v for k, v in self.site.published_versions().items())

    def wait_current(self, root: int) -> None:
        def current() -> bool:
            return self.gate_root() == root and self.holds_published()

        wait_until(
            current,
            45,
            lambda: (
                f"gate root {self.gate_root()}, holds {gate_document_versions(self.gate_dir)},"
                f" server {self.site.published_versions()} root {self.site.trust_root()}\n"
                + (self.gate.output() if self.gate else "")
            ),
        )

    def scan(self, qr: str, forehead_c: float = 34.6) -> str:
        """Show a card to the gate's camera; the gate's first decision on it."""
        before = last_seq(self.gate_dir)
        self.stage.drop(qr, {"forehead_c": forehead_c})

        def decided() -> str | None:
            for body in events_after(self.gate_dir, before):
                if body["kind"] == "decision":
                    return str(body["reason"])
            return None

        return str(wait_until(decided, 30, lambda: "no decision\n" + self.gate_output()))

    def gate_output(self) -> str:
        return "" if self.gate is None else self.gate.output()

    def alerts(self, kind: str) -> list[Any]:
        return [a for a in self.site.alerts.list() if a.kind == kind]

    def gate_status(self) -> dict[str, Any]:
        for g in collected.gates(self.site.store):
            if g["gate"] == "east":
                return dict(g["status"] or {})
        return {}


def ro(db: Path) -> sqlite3.Connection:
    return sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=10)


def last_seq(gate_dir: Path) -> int:
    with contextlib.closing(ro(gate_dir / "gate.db")) as conn:
        return int(conn.execute("SELECT COALESCE(MAX(seq), 0) FROM events").fetchone()[0])


def events_after(gate_dir: Path, seq: int) -> list[dict[str, Any]]:
    with contextlib.closing(ro(gate_dir / "gate.db")) as conn:
        rows = conn.execute("SELECT body FROM events WHERE seq > ? ORDER BY seq", [seq])
        return [json.loads(body) for (body,) in rows]


@pytest.fixture
def world(tmp_path: Path, broker: ShippedBroker) -> Iterator[World]:
    w = World(tmp_path, broker)
    try:
        yield w
    finally:
        w.close()


def steal_key_1(world: World) -> Ed25519PrivateKey:
    key = load_pem_private_key(key_path(world.server, 1).read_bytes(), password=None)
    assert isinstance(key, Ed25519PrivateKey)
    return key


def forgeries(world: World, key: Ed25519PrivateKey) -> dict[str, bytes]:
    """The issue's attack: a config with the fever threshold at 42 °C and a register without
    revocations, both version 1001, signed with key 1 under root 2 (the last root that held
    key 1), carrying the real chain to it."""
    site = world.site
    bundle = parse_document(site.bundle_path(CONFIG_FILE).read_bytes(), kind="config", site=SITE)
    chain = bundle.chain[:2]
    issued = datetime.now(UTC).isoformat(timespec="milliseconds")
    policy = {**site.published_policy().policy.to_json(), "fever_threshold_c": 42.0}
    register = Register(site.register().passes, {}, {}).to_json()
    return {
        topic: sign_document(kind, SITE, 1001, issued, body, 1, key, root=2, chain=chain).encode()
        for topic, kind, body in (
            (CONFIG, "config", {"policy": policy}),
            (REGISTER, "register", register),
        )
    }


def publish_forgeries(world: World, forged: dict[str, bytes]) -> None:
    with MqttWatcher(world.broker.url, **world.broker.login(EXTRA_COLLECTOR)) as thief:
        for topic, payload in forged.items():
            assert thief.publish(topic, payload, retain=True) == 0, "the broker took it"


def passes_of_key_2(world: World) -> tuple[str, str]:
    """(a revoked pass, a valid one), both signed by key 2, by the command line."""
    revoked = world.menwei("pass", "issue", str(world.server), "--household", "4-4-404",
                           "--name", "孙八", "--room", "4-4-404")  # fmt: skip
    world.menwei("pass", "revoke", str(world.server), str(revoked["pass_id"]), "--reason", "lost")
    valid = world.menwei("pass", "issue", str(world.server), "--household", "5-5-505",
                         "--name", "周九", "--room", "5-5-505")  # fmt: skip
    return str(revoked["qr"]), str(valid["qr"])


def rotate(world: World) -> None:
    rotated = world.menwei("keys", "rotate", str(world.server))
    assert (rotated["key_id"], rotated["root"]) == (2, 2)


def retire_key_1(world: World) -> None:
    retired = world.menwei("keys", "retire", str(world.server), "1")
    assert retired["root"] == 3 and retired["trust_keys"] == [2]
    assert retired["private_key"] == {"action": "removed", "path": str(key_path(world.server, 1))}
    assert not key_path(world.server, 1).exists()


def assert_forgeries_refused(world: World) -> None:
    output = world.gate_output
    for kind in ("config", "register"):
        line = f"refused untrusted {kind} document (key 1, root 2, version 1001)"
        wait_until(lambda line=line: line in output(), 30, lambda: output())  # type: ignore[misc]
    assert "which trust root 3 does not hold" in output()
    versions = gate_document_versions(world.gate_dir)  # none: withdrawn, not replaced yet
    assert versions.get("config", 0) < 1001 and versions.get("register", 0) < 1001


def assert_gate_decides_as_the_server_says(world: World, revoked: str, valid: str) -> None:
    assert world.scan(revoked) == "revoked"
    assert world.scan(valid, forehead_c=35.8) == "fever_recheck"  # ~37.9 °C: 37.3 holds
    before = world.site.published_versions()["register"]
    world.menwei("pass", "issue", str(world.server), "--household", "6-6-606", "--name", "郑十一")
    after = world.site.published_versions()["register"]
    assert after > before
    wait_until(
        lambda: gate_document_versions(world.gate_dir)["register"] == after,
        30,
        lambda: f"gate holds {gate_document_versions(world.gate_dir)}, server register {after}",
    )


def assert_alerts_at_the_collector(world: World) -> None:
    def untrusted() -> list[Any]:
        return [a for a in world.alerts("untrusted_document") if a.gate == "east"]

    wait_until(lambda: len(untrusted()) >= 2, 30, lambda: f"alerts {world.site.alerts.list()}")
    assert {a.priority for a in untrusted()} == {"high"}
    assert all('"key_id": 1' in a.detail for a in untrusted())
    wait_until(
        lambda: world.gate_status().get("refused_documents", {}).get("count", 0) >= 2,
        30,
        lambda: f"gate status {world.gate_status()}",
    )
    assert world.gate_status()["refused_documents"]["last"]["key_id"] == 1
    assert world.gate_status()["trust_root"] == 3


def assert_broker_holds_the_servers_documents(world: World) -> None:
    for topic, name in ((CONFIG, "config.json"), (REGISTER, "register.json")):

        def retained(topic: str = topic) -> bytes:
            with MqttWatcher(
                world.broker.url, topic, **world.broker.login(EXTRA_COLLECTOR),
            ) as late:  # fmt: skip
                return late.wait_for(topic, lambda m: m.retain, 15, "a retained document").payload

        own = world.site.bundle_path(name)
        wait_until(lambda r=retained, o=own: r() == o.read_bytes(), 30, f"{topic} replaced")  # type: ignore[misc]
    assert world.alerts("foreign_document"), "the collector saw the forgeries"


def begin(world: World) -> tuple[Ed25519PrivateKey, str, str]:
    """The collector and the gate run; the thief copies key 1; the operator rotates to key 2
    and issues (and revokes) passes signed by it. Returns (key 1, revoked pass, valid pass)."""
    world.start_collector()
    world.start_gate()
    world.wait_current(root=1)
    stolen = steal_key_1(world)
    rotate(world)
    revoked, valid = passes_of_key_2(world)
    return stolen, revoked, valid


def test_a_running_gate_refuses_documents_of_the_retired_key(world: World) -> None:
    stolen, revoked, valid = begin(world)
    retire_key_1(world)
    world.wait_current(root=3)

    publish_forgeries(world, forgeries(world, stolen))

    assert_forgeries_refused(world)
    assert_alerts_at_the_collector(world)
    assert_broker_holds_the_servers_documents(world)
    assert_gate_decides_as_the_server_says(world, revoked, valid)


def test_a_gate_stopped_during_rotation_and_retirement_refuses_them_when_it_starts(
    world: World,
) -> None:
    """The forgeries are retained when the gate starts (the collector is down then): the
    server's freshness statement, retained beside them, carries the chain to root 3, and the
    gate applies what arrives newest root first, so it refuses key 1's documents instead of
    taking them for the moment before."""
    world.start_collector()
    world.start_gate()
    world.wait_current(root=1)
    world.stop_gate()  # from here on, until the forgeries are retained
    stolen = steal_key_1(world)
    rotate(world)
    revoked, valid = passes_of_key_2(world)
    retire_key_1(world)
    with MqttWatcher(
        world.broker.url, topics.freshness(SITE), **world.broker.login(EXTRA_COLLECTOR)
    ) as w:
        statement = world.site.bundle_path("freshness.json").read_bytes()
        w.wait_for(topics.freshness(SITE), lambda m: m.payload == statement, 30, "root 3's")
    world.stop_collector()
    publish_forgeries(world, forgeries(world, stolen))

    world.start_gate()
    assert_forgeries_refused(world)
    wait_until(lambda: world.gate_root() == 3, 30, world.gate_output)
    assert "applied config version 1001" not in world.gate_output()
    assert "applied register version 1001" not in world.gate_output()
    # What key 1 signed before (its provisioned documents) stopped applying: until the
    # server's own arrive, the guard confirms; nobody passes on the thief's word.
    assert world.scan(revoked) == "guard_confirm"
    assert world.scan(valid) == "guard_confirm"

    world.start_collector()  # replaces the forgeries: the gate gets the server's documents
    world.wait_current(root=3)
    assert_alerts_at_the_collector(world)
    assert_broker_holds_the_servers_documents(world)
    assert_gate_decides_as_the_server_says(world, revoked, valid)


def test_version_inflation_while_key_1_was_trusted_is_superseded_by_its_retirement(
    world: World,
) -> None:
    stolen, revoked, valid = begin(world)
    world.wait_current(root=2)

    publish_forgeries(world, forgeries(world, stolen))
    # Key 1 is in root 2: a gate cannot tell the thief from the server, and takes them.
    wait_until(
        lambda: (
            gate_document_versions(world.gate_dir)["register"] == 1001
            and gate_document_versions(world.gate_dir)["config"] == 1001
        ),
        30,
        world.gate_output,
    )
    assert world.scan(revoked) == "ok"
    assert world.scan(valid, forehead_c=35.8) == "ok"  # ~37.9 °C, under the forged 42 °C
    # The collector saw versions above its own, signed by an active key: a stolen key.
    wait_until(lambda: world.alerts("foreign_document"), 30, "no foreign_document alert")
    assert "key 1 is compromised" in world.alerts("foreign_document")[0].detail

    retire_key_1(world)
    world.wait_current(root=3)
    assert gate_document_versions(world.gate_dir)["register"] < 1001
    assert_gate_decides_as_the_server_says(world, revoked, valid)
