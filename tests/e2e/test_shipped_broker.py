"""The broker setup an installer gets from docs/configuration.md, run as shipped.

A real Mosquitto runs the shipped configuration (tests/e2e/shipped_broker.py) in both of its
documented setups: TLS, the default (`menwei broker setup`: systemd/mosquitto-menwei.conf, the
site's ACL, a certificate per client, the identity taken from it), and the password
alternative (systemd/mosquitto-menwei-passwords.conf, systemd/menwei-acl.example and
`mosquitto_passwd`), both for site "sunny". MQTT v5 clients log in as the collector and as the
gates "east" and "west" and try every flow of the protocol: what each must receive, and what
the ACL must refuse. Every refusal has a positive control sent after it (the entitled client
receives a message on the same topic), so a check cannot pass because nothing was sent or
nothing arrived yet. Then the real collector and a real gate daemon run through the broker.
What TLS itself refuses (no certificate, another CA, a wrong host name, an expired or revoked
certificate) is in tests/e2e/test_broker_tls.py.
"""

from __future__ import annotations

import base64
import logging
import os
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
from paho.mqtt.client import topic_matches_sub

from menwei.broker_setup import (
    ACL_FILE,
    BROKER_DIR,
    CONF_FILE,
    MOSQUITTO_CONF,
    mqtt_lines,
    render_acl,
)
from protocol import topics
from protocol.broker import parse_broker
from protocol.documents import MAX_DOCUMENT_BYTES, MQTT_HEADROOM_BYTES, sign_document
from protocol.events import Ack, encode_batch
from server.collector import Collector, collector_client_id, max_payload
from server.config import CONFIG_NAME, load_server_config
from server.keys import load_key
from server.site import Site
from server.storage.engine import SQLITE_FILE
from tests import collected
from tests.e2e.helpers import (
    GateThread,
    Message,
    MqttRefused,
    MqttWatcher,
    Stage,
    gate_document_versions,
    gate_progress,
    make_event,
    provision_gate,
    server_count,
    wait_until,
)
from tests.e2e.shipped_broker import (
    EXTRA_COLLECTOR,
    EXTRA_COLLECTOR_ACL_COMMAND,
    FIRST_USER_COMMAND,
    INSTALL_COMMANDS,
    NEXT_USER_COMMAND,
    PERMISSIONS_COMMAND,
    REPO,
    SITE,
    Mode,
    ShippedBroker,
    documented_tls_commands,
)

PASSWORDS = {"collector": "collector-Secret-1", "east": "east-Secret-2", "west": "west-Secret-3"}
NOT_AUTHORIZED = 0x87
FRESHNESS = f"{topics.ROOT}/{SITE}/freshness"
SITE_DOCUMENTS = (
    topics.config(SITE),
    topics.register(SITE),
    topics.register_delta(SITE),
    FRESHNESS,
)
"""Retained, server → every gate."""
PASSAGES = topics.passages(SITE)
ALL_EVENTS = topics.gate_wildcard(SITE, "events")
ALL_STATUS = topics.gate_wildcard(SITE, "status")


MODES: tuple[Mode, ...] = ("tls", "passwords")


@pytest.fixture(scope="module", params=MODES)
def broker(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ShippedBroker]:
    """The shipped broker in each documented setup: TLS (the default) and passwords."""
    workdir = tmp_path_factory.mktemp(f"shipped-broker-{request.param}")
    with ShippedBroker(workdir, PASSWORDS, mode=request.param) as b:
        yield b


def client(
    broker: ShippedBroker,
    user: str,
    *filters: str,
    will: tuple[str, bytes] | None = None,
    client_id: str | None = None,
    session_expiry_s: int | None = None,
) -> MqttWatcher:
    """An MQTT v5 client logged in as `user`: its certificate, or its password (PASSWORDS)."""
    return MqttWatcher(
        broker.url,
        *filters,
        will=will,
        client_id=client_id,
        session_expiry_s=session_expiry_s,
        **broker.login(user),
    )


def tagged(what: str) -> bytes:
    """A payload no other test (or earlier run of this one) sent."""
    return f"{what} {uuid.uuid4().hex}".encode()


def receive(watcher: MqttWatcher, topic: str, payload: bytes, what: str) -> Message:
    return watcher.wait_for(topic, lambda m: m.payload == payload, 15, what)


def accepted(verdict: int | None) -> bool:
    """A PUBACK reason code below 0x80: 0 success, or 0x10 "no matching subscribers"."""
    return verdict is not None and verdict < 0x80


def refused(verdict: int | None) -> bool:
    """Mosquitto 2.0 answers a denied QoS 1 publish with PUBACK 0x87 (MQTT v5) and closes
    the connection; a broker that only closed it (None) refused it too. 0 = accepted."""
    return verdict in (NOT_AUTHORIZED, None)


# --- the installation ------------------------------------------------------------------------


def test_the_test_runs_the_documented_commands() -> None:
    lines = {
        line.strip()
        for line in (REPO / "docs" / "configuration.md").read_text("utf-8").splitlines()
    }
    commands = (
        *documented_tls_commands(),
        *INSTALL_COMMANDS,
        FIRST_USER_COMMAND,
        NEXT_USER_COMMAND,
        PERMISSIONS_COMMAND,
        NEXT_USER_COMMAND.replace("GATE", EXTRA_COLLECTOR),
        EXTRA_COLLECTOR_ACL_COMMAND,
    )
    assert [c for c in commands if c not in lines] == []


SHIPPED_CONF = {"tls": "mosquitto-menwei.conf", "passwords": "mosquitto-menwei-passwords.conf"}


def test_the_running_conf_is_the_shipped_one_with_paths_and_port_moved(
    broker: ShippedBroker,
) -> None:
    shipped = (REPO / "systemd" / SHIPPED_CONF[broker.mode]).read_text("utf-8").splitlines()
    running = (broker.etc / "conf.d" / "menwei.conf").read_text("utf-8").splitlines()
    listener = next(line for line in shipped if line.startswith("listener "))
    put_back = [
        listener if line.startswith("listener ") else line
        for line in (r.replace(str(broker.workdir), "") for r in running)
    ]
    assert put_back == shipped
    assert f"listener {broker.port} 127.0.0.1" in running
    if broker.mode == "passwords":
        acl = (REPO / "systemd" / "menwei-acl.example").read_bytes()
        assert (broker.etc / "menwei.acl").read_bytes() == acl
    else:  # the ACL `menwei broker setup` wrote for the site, with collector-2 if asked
        assert (broker.etc / "menwei.acl").read_bytes() == (broker.folder / ACL_FILE).read_bytes()
        assert (broker.folder / CONF_FILE).read_text("utf-8").splitlines() == shipped


def test_the_shipped_tls_conf_is_what_broker_setup_writes() -> None:
    """systemd/mosquitto-menwei.conf is the file `menwei broker setup` writes, and the password
    alternative differs from it only in its header and its listener's own lines."""
    tls = (REPO / "systemd" / SHIPPED_CONF["tls"]).read_text("utf-8")
    assert tls == MOSQUITTO_CONF
    passwords = (REPO / "systemd" / SHIPPED_CONF["passwords"]).read_text("utf-8")

    def shared(text: str) -> list[str]:
        return text.split("use_username_as_clientid true\n", 1)[1].splitlines()

    assert shared(passwords) == shared(tls)


def test_the_tls_acl_grants_what_the_password_acl_grants() -> None:
    """The site ACL `menwei broker setup` writes and systemd/menwei-acl.example (the password
    setup) give every gate and the collector the same topics: each rule of the example is
    covered by a rule of the generated ACL (a topic filter that matches it)."""
    example = acl_rules((REPO / "systemd" / "menwei-acl.example").read_text("utf-8"))
    generated = acl_rules(render_acl(SITE, ["collector"]))
    assert example, "the example has no rules"
    missing = [
        rule
        for rule in example
        if not any(
            (g[0], g[1], g[2]) == rule[:3] and topic_matches_sub(g[3], rule[3]) for g in generated
        )
    ]
    assert missing == []


def acl_rules(text: str) -> list[tuple[str, str, str, str]]:
    """(who, kind, access, topic) of every rule: who is "pattern" or the `user` section."""
    rules, user = [], ""
    for line in text.splitlines():
        words = line.split()
        if not words or words[0].startswith("#"):
            continue
        if words[0] == "user":
            user = words[1]
        elif words[0] == "pattern":
            rules.append(("*", "pattern", words[1], words[2]))
        elif words[0] == "topic":
            rules.append((user, "topic", words[1], words[2]))
    return rules


def test_only_the_clients_of_the_site_get_in(broker: ShippedBroker) -> None:
    """Passwords: only the users of the password file. TLS: the identity of the certificate,
    whatever username the client sends (tests/e2e/test_broker_tls.py refuses a missing,
    foreign, expired and revoked certificate)."""
    with client(broker, "east") as east:  # control: the right credential works
        assert east.connect_reason == 0
    if broker.mode == "passwords":
        for user, password in (("east", "wrong"), ("south", "any"), (None, None)):
            with pytest.raises(MqttRefused):
                MqttWatcher(broker.url, username=user, password=password)
        return
    # TLS: the identity is the certificate's. Gate east sending the collector's username and
    # password is still east: the collector's topics stay closed to it.
    with client(broker, "collector") as server:  # control: the collector may publish it
        assert accepted(server.publish(topics.config(SITE), tagged("config"), retain=True))
    with MqttWatcher(
        broker.url, username="collector", password="any", **broker.login("east")
    ) as east:
        assert refused(east.publish(topics.config(SITE), tagged("forged config"), retain=True))


# --- what every gate must receive -----------------------------------------------------------


def test_each_gate_receives_its_ack_and_the_site_documents_and_passages(
    broker: ShippedBroker,
) -> None:
    mine = {g: (topics.ack(SITE, g), *SITE_DOCUMENTS, PASSAGES) for g in ("east", "west")}
    sent = {t: tagged(t) for t in {t for ts in mine.values() for t in ts}}
    with (
        client(broker, "collector") as server,
        client(broker, "east", *mine["east"]) as east,
        client(broker, "west", *mine["west"]) as west,
    ):
        for topic, payload in sent.items():
            assert accepted(server.publish(topic, payload, retain=topic != PASSAGES)), topic
        for gate, watcher in (("east", east), ("west", west)):
            for topic in mine[gate]:
                receive(watcher, topic, sent[topic], f"{gate} receives what the server sent")
    # A gate that connects later (restarted, or back online) gets the retained ones at once.
    late_topics = (topics.ack(SITE, "east"), *SITE_DOCUMENTS)
    with client(broker, "east", *late_topics) as late:
        for topic in late_topics:
            assert receive(late, topic, sent[topic], "retained for a late gate").retain


def test_the_collector_receives_every_gates_events_and_status_also_shared(
    broker: ShippedBroker,
) -> None:
    shared = f"$share/collectors/{ALL_EVENTS}"
    sent = {
        t: tagged(t)
        for g in ("east", "west")
        for t in (topics.events(SITE, g), topics.status(SITE, g))
    }
    with (
        client(broker, "collector", shared, ALL_STATUS) as server,
        client(broker, "east") as east,
        client(broker, "west") as west,
    ):
        for gate, watcher in (("east", east), ("west", west)):
            assert accepted(
                watcher.publish(topics.events(SITE, gate), sent[topics.events(SITE, gate)])
            )
            status = topics.status(SITE, gate)
            assert accepted(watcher.publish(status, sent[status], retain=True))
        for topic, payload in sent.items():
            receive(server, topic, payload, "the collector receives it")


def test_a_gates_last_will_reaches_the_collector(broker: ShippedBroker) -> None:
    offline = tagged("offline")
    with client(broker, "collector", ALL_STATUS) as server:
        client(broker, "west", will=(topics.status(SITE, "west"), offline)).kill()
        receive(server, topics.status(SITE, "west"), offline, "west's Last Will")


# --- what the ACL must refuse ---------------------------------------------------------------

# (forged topic, who may publish it, who reads it to see whether a forgery got through)
FORGERIES = [
    (topics.events(SITE, "west"), "west", ALL_EVENTS, "collector"),
    (topics.status(SITE, "west"), "west", ALL_STATUS, "collector"),
    (topics.config(SITE), "collector", topics.config(SITE), "west"),
    (topics.register(SITE), "collector", topics.register(SITE), "west"),
    (topics.register_delta(SITE), "collector", topics.register_delta(SITE), "west"),
    (FRESHNESS, "collector", FRESHNESS, "west"),
    (PASSAGES, "collector", PASSAGES, "west"),
    (topics.ack(SITE, "west"), "collector", topics.ack(SITE, "west"), "west"),
    (topics.ack(SITE, "east"), "collector", topics.ack(SITE, "east"), "east"),
]


@pytest.mark.parametrize(("topic", "entitled", "watch", "reader"), FORGERIES)
def test_a_gate_cannot_publish_as_another_gate_or_as_the_server(
    broker: ShippedBroker, topic: str, entitled: str, watch: str, reader: str
) -> None:
    """Gate east forges `topic`. Sequence: genuine, forged, genuine again. The reader must
    see both genuine messages and never the forgery; a retained topic must keep the first
    genuine message (the forgery did not replace it). A user holds one connection at a time
    (use_username_as_clientid): the reader's connections follow each other, and when the
    reader is east itself, the retained message is what shows a forgery."""
    retain = topic != PASSAGES and not topic.endswith("/events")
    genuine, forged, genuine_after = tagged("genuine"), tagged("forged"), tagged("genuine after")
    seen: list[bytes] = []
    with client(broker, reader, watch) as watcher:
        with client(broker, entitled) as real:
            assert accepted(real.publish(topic, genuine, retain=retain))
        receive(watcher, topic, genuine, "control: the entitled publisher gets through")
        if reader != "east":  # live while east forges
            forge(broker, topic, forged, retain)
        seen += [m.payload for m in watcher.on(topic)]
    if reader == "east":
        forge(broker, topic, forged, retain)
    if retain:
        with client(broker, reader, topic) as late:
            got = late.wait_for(topic, lambda m: m.retain, 15, "the retained message")
            assert got.payload == genuine
    with client(broker, reader, watch) as watcher:
        with client(broker, entitled) as real:
            assert accepted(real.publish(topic, genuine_after, retain=retain))
        # Sent after the forgery was refused: once it is here, a forgery would be here too.
        receive(watcher, topic, genuine_after, "control after the forgery")
        seen += [m.payload for m in watcher.on(topic)]
    assert forged not in seen


def forge(broker: ShippedBroker, topic: str, payload: bytes, retain: bool) -> None:
    with client(broker, "east") as forger:
        assert refused(forger.publish(topic, payload, retain=retain))


def test_a_gate_cannot_leave_a_last_will_for_another_gate(broker: ShippedBroker) -> None:
    forged, genuine = tagged("forged will"), tagged("genuine will")
    west_status = topics.status(SITE, "west")
    with client(broker, "collector", ALL_STATUS) as server:
        client(broker, "east", will=(west_status, forged)).kill()
        # Taking over the forger's connection (its client id is its username, east): once
        # connected, the broker has finished with the old one (and published or dropped its
        # Will).
        with client(broker, "east"):
            pass
        client(broker, "west", will=(west_status, genuine)).kill()
        receive(server, west_status, genuine, "control: west's own Last Will")
        assert forged not in [m.payload for m in server.on(west_status)]


def test_a_gate_reads_no_other_gates_ack_events_or_status(broker: ShippedBroker) -> None:
    west = {t: tagged(t) for t in ("events", "status", "ack")}
    others = tuple(f"{topics.ROOT}/{SITE}/west/{leaf}" for leaf in west)
    everything = f"{topics.ROOT}/{SITE}/#"
    config = tagged("config")
    with (
        client(broker, "collector", ALL_EVENTS, ALL_STATUS) as server,
        client(broker, "west", topics.ack(SITE, "west")) as west_gate,
        client(broker, "east", everything, *others) as east,
    ):
        assert accepted(server.publish(topics.config(SITE), config, retain=True))
        receive(east, topics.config(SITE), config, "control: east reads the site's config")
        assert accepted(west_gate.publish(topics.events(SITE, "west"), west["events"]))
        assert accepted(west_gate.publish(topics.status(SITE, "west"), west["status"], retain=True))
        assert accepted(server.publish(topics.ack(SITE, "west"), west["ack"], retain=True))
        receive(server, topics.events(SITE, "west"), west["events"], "control: collector")
        receive(server, topics.status(SITE, "west"), west["status"], "control: collector")
        receive(west_gate, topics.ack(SITE, "west"), west["ack"], "control: west's own ack")
        barrier(server, east)
        assert [m.topic for m in east.messages if "/west/" in m.topic] == []
    # Nor the retained west/status and west/ack, for a gate that subscribes to everything
    # later; the retained config is the control.
    with client(broker, "collector") as server, client(broker, "east", everything) as late:
        barrier(server, late)
        receive(late, topics.config(SITE), config, "control: the retained config")
        assert [m.topic for m in late.messages if "/west/" in m.topic] == []


def barrier(server: MqttWatcher, east: MqttWatcher) -> None:
    """The collector acks east after everything sent so far; east receiving it means the
    broker has delivered to east whatever it was going to deliver before it."""
    marker = tagged("marker")
    assert accepted(server.publish(topics.ack(SITE, "east"), marker, retain=True))
    receive(east, topics.ack(SITE, "east"), marker, "the marker")


# --- one connection and one session per user (use_username_as_clientid) ---------------------

COLLECTOR_ID = collector_client_id(SITE, None)
"""The client id server/collector.py sends (a collector alone)."""
WEST_ID = f"menwei-gate-{SITE}-west"
"""The client id edge/sync.py sends for gate west."""
SESSION_S = 300
ATTACK_S = 3.0


def take_over(broker: ShippedBroker, victim_ids: tuple[str, ...], seconds: float) -> int:
    """Gate east connects again and again with the victims' client ids (clean_start, as the
    attack that wiped sessions did), for `seconds`. Returns how many connections it made."""
    made = 0
    end = time.monotonic() + seconds
    while time.monotonic() < end or made < 2 * len(victim_ids):
        for victim in victim_ids:
            with client(broker, "east", client_id=victim) as attacker:
                assert attacker.connect_reason == 0
                made += 1
    return made


def test_a_gate_cannot_disconnect_the_collector_or_another_gate(broker: ShippedBroker) -> None:
    """Found in an attack on the shipped setup: logged in as east, looping connects with the
    collector's client id kept the real collector connected 3% of 30 s. Now the broker uses
    each login's username as its client id: east's connections replace only each other."""
    with (
        client(
            broker, "collector", ALL_EVENTS, client_id=COLLECTOR_ID, session_expiry_s=SESSION_S
        ) as server,
        client(broker, "west", PASSAGES, client_id=WEST_ID, session_expiry_s=SESSION_S) as west,
    ):
        made = take_over(broker, (COLLECTOR_ID, WEST_ID), ATTACK_S)
        # Control: both still work on the connection they had (and were never dropped).
        event, passage = tagged("west event"), tagged("passage")
        assert accepted(west.publish(topics.events(SITE, "west"), event))
        receive(server, topics.events(SITE, "west"), event, "the collector, after the attack")
        assert accepted(server.publish(PASSAGES, passage))
        receive(west, PASSAGES, passage, "west, after the attack")
        assert (server.disconnects, west.disconnects, made >= 4) == (0, 0, True)


def test_a_gate_cannot_wipe_the_collectors_or_another_gates_session(
    broker: ShippedBroker,
) -> None:
    """The collector and gate west leave persistent sessions (a restart); east connects with
    their client ids and clean_start. Their sessions are their usernames': what was queued for
    them while away still reaches them."""
    for user, wanted, cid in (("collector", ALL_EVENTS, COLLECTOR_ID), ("west", PASSAGES, WEST_ID)):
        with client(broker, user, wanted, client_id=cid, session_expiry_s=SESSION_S):
            pass
    take_over(broker, (COLLECTOR_ID, WEST_ID), 1.0)
    event, passage = tagged("east event"), tagged("passage")
    with client(broker, "east") as east:
        assert accepted(east.publish(topics.events(SITE, "east"), event))
    with client(
        broker, "collector", ALL_EVENTS, client_id=COLLECTOR_ID, session_expiry_s=SESSION_S
    ) as server:
        assert server.session_present
        receive(server, topics.events(SITE, "east"), event, "queued for the collector")
        assert accepted(server.publish(PASSAGES, passage))
    with client(broker, "west", PASSAGES, client_id=WEST_ID, session_expiry_s=SESSION_S) as west:
        assert west.session_present
        receive(west, PASSAGES, passage, "queued for west")


def test_a_gates_session_is_its_usernames_and_survives_restarts(tmp_path: Path) -> None:
    """A gate restarted (any client id: the broker uses its username), also across a broker
    restart, gets what was queued for it while it was away."""
    with ShippedBroker(tmp_path / "broker", PASSWORDS) as broker:
        with client(broker, "west", PASSAGES, client_id=WEST_ID, session_expiry_s=SESSION_S):
            pass
        before_restart, after_restart = tagged("passage 1"), tagged("passage 2")
        with client(broker, "collector") as server:
            assert accepted(server.publish(PASSAGES, before_restart))
        broker.restart()
        with client(broker, "collector") as server:
            assert accepted(server.publish(PASSAGES, after_restart))
        with client(
            broker, "west", PASSAGES, client_id="another-id", session_expiry_s=SESSION_S
        ) as west:
            assert west.session_present
            receive(west, PASSAGES, before_restart, "queued before the broker restarted")
            receive(west, PASSAGES, after_restart, "queued after it")


@pytest.mark.parametrize("mode", MODES)
def test_two_collectors_with_their_own_users_share_the_events(tmp_path: Path, mode: Mode) -> None:
    """docs/configuration.md, "Several collectors": collector-2 with its own certificate
    (`menwei broker add-client`) or password and ACL section, both in the shared group. Both
    connect as two `menwei server run --shared-group` do (server/collector.py: a client id of
    its own, no session); both stay connected (two processes with one identity would replace
    each other), and the gates' events are dealt between them, each once: what Mosquitto
    delivers through `$share/...` is checked against the gate's topic, which collector-2's ACL
    section lets it read."""
    users = {**PASSWORDS, EXTRA_COLLECTOR: "collector-Secret-4"}
    shared = f"$share/collectors/{ALL_EVENTS}"
    sent = [tagged(f"event {i}") for i in range(20)]
    with ShippedBroker(tmp_path / "broker", users, mode=mode) as broker:
        acl = (broker.etc / "menwei.acl").read_text("utf-8")
        assert f"user {EXTRA_COLLECTOR}\ntopic read menwei/{SITE}/+/events\n" in acl
        collectors = [
            MqttWatcher(
                broker.url,
                shared,
                client_id=collector_client_id(SITE, "collectors"),
                **broker.login(u),
            )
            for u in ("collector", EXTRA_COLLECTOR)
        ]
        try:
            with client(broker, "east") as east:
                for payload in sent:
                    assert accepted(east.publish(topics.events(SITE, "east"), payload))

            def dealt() -> list[bytes]:
                return [m.payload for c in collectors for m in c.on(topics.events(SITE, "east"))]

            wait_until(lambda: len(dealt()) >= len(sent), 15, lambda: f"dealt {len(dealt())}")
            assert sorted(dealt()) == sorted(sent)
            assert [bool(c.on(topics.events(SITE, "east"))) for c in collectors] == [True, True]
            assert [c.disconnects for c in collectors] == [0, 0]
        finally:
            for c in collectors:
                c.close()


# --- the real collector and gate ------------------------------------------------------------


def new_server(tmp_path: Path) -> Path:
    server_dir = tmp_path / "server"
    Site.init(server_dir, SITE).close()
    return server_dir


def configure_collector(server_dir: Path, broker: ShippedBroker) -> None:
    """server.toml [mqtt] as docs/configuration.md shows it: the lines `menwei broker setup`
    printed (TLS), or the collector's password; and the shared group."""
    toml = server_dir / CONFIG_NAME
    text = toml.read_text("utf-8")
    line = 'broker = "mqtt://127.0.0.1:1883"\n'
    assert line in text, "server.toml layout changed: cannot set [mqtt]"
    if broker.mode == "tls":
        login = mqtt_lines(broker.url, BROKER_DIR)
    else:
        secret = PASSWORDS["collector"]
        login = f'broker = "{broker.url}"\nusername = "collector"\npassword = "{secret}"\n'
    toml.write_text(text.replace(line, f'{login}shared_group = "collectors"\n', 1), "utf-8")
    mqtt = load_server_config(server_dir).mqtt
    assert mqtt.shared_group == "collectors"


def gate_login(broker: ShippedBroker, gate: str) -> dict[str, str]:
    """gate.toml's [mqtt] login: none over TLS (`gate init` wrote its certificate's files)."""
    if broker.mode == "tls":
        return {}
    return {"username": gate, "password": PASSWORDS[gate]}


@pytest.mark.parametrize("mode", MODES)
def test_the_collector_and_a_gate_work_through_the_shipped_broker(
    tmp_path: Path, mode: Mode
) -> None:
    """On a broker of its own: the other tests leave retained test payloads behind. Over TLS
    the broker folder is the server directory's broker/, so the gate's certificate is the one
    `gate init` issues."""
    server_dir = new_server(tmp_path)
    folder = server_dir / BROKER_DIR
    with ShippedBroker(tmp_path / "broker", PASSWORDS, mode=mode, folder=folder) as broker:
        run_collector_and_gate(tmp_path, server_dir, broker)


def run_collector_and_gate(tmp_path: Path, server_dir: Path, broker: ShippedBroker) -> None:
    configure_collector(server_dir, broker)
    with Site(server_dir) as site:
        resident = site.issue_pass("1-1-101", "张三丰", room="1-1-101")
        gate_dir = provision_gate(
            tmp_path,
            server_dir,
            "east",
            "in",
            broker.url,
            **gate_login(broker, "east"),
            resend_after_s=1.5,
            status_interval_s=2,
        )
        held = gate_document_versions(gate_dir)
        collector = Collector(site, parse_broker(broker.url))
        collector.start()
        try:
            wait_until(collector.connected.is_set, 15, "the collector did not connect")
            with GateThread(gate_dir, broker.url):
                Stage(gate_dir / "stage").drop(resident.qr, {"forehead_c": 34.5})

                def synced() -> bool:
                    p = gate_progress(gate_dir)
                    stored = server_count(site.dir / SQLITE_FILE, "east")
                    return p.last_seq == 1 and p.acked_seq == 1 and stored == 1

                wait_until(
                    synced,
                    30,
                    lambda: (
                        f"gate {gate_progress(gate_dir)}, "
                        f"collector {server_count(site.dir / SQLITE_FILE, 'east')}\n{broker.log()}"
                    ),
                )
                # New documents reach the running gate through the broker.
                site.issue_pass("1-1-102", "李四", room="1-1-102")
                site.publish_config()
                wanted = {"config": held["config"] + 1, "register": held["register"] + 1}
                wait_until(
                    lambda: all(
                        gate_document_versions(gate_dir)[k] >= v for k, v in wanted.items()
                    ),
                    30,
                    lambda: f"gate holds {gate_document_versions(gate_dir)}, wanted {wanted}",
                )
                wait_until(
                    lambda: any(
                        g["gate"] == "east" and (g["status"] or {}).get("state") == "online"
                        for g in collected.gates(site.store)
                    ),
                    30,
                    lambda: f"gate status at the collector: {collected.gates(site.store)}",
                )
        finally:
            collector.close()
        assert collector.stats["rejected"] == 0


def test_the_brokers_packet_limit_fits_the_largest_document_a_gate_accepts() -> None:
    """The broker must take every document a gate would accept (else the collector gets
    disconnected publishing it); the collector learns the limit from the broker (MQTT v5
    CONNACK), which announces max_packet_size and not message_size_limit."""
    conf = (REPO / "systemd" / "mosquitto-menwei.conf").read_text("utf-8").splitlines()
    settings = {line.split()[0]: line.split()[1:] for line in conf if line and line[0] != "#"}
    assert settings["max_packet_size"] == [str(MAX_DOCUMENT_BYTES + MQTT_HEADROOM_BYTES)]
    assert "message_size_limit" not in settings
    assert max_payload(topics.register(SITE), MAX_DOCUMENT_BYTES + MQTT_HEADROOM_BYTES) > (
        MAX_DOCUMENT_BYTES
    )


def test_a_register_too_large_to_publish_does_not_take_the_collector_down(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Found in an attack on the shipped setup: a register over the broker's limit got the
    collector disconnected at every publish, and paho resent it after every reconnect: no
    acks, nothing stored, forever. Now a document over the bound is not published: one error,
    one alert, and the collector keeps storing and acknowledging events, also after a
    reconnect. The server signs no register that large any more (server/site.py refuses the
    change): this store holds one grown under an older Menwei (100 passes whose 100 kB room
    texts do not compress), which left it in the bundle as plain JSON over 8 MiB. The
    collector's daily refresh cannot re-sign it either: one more error and alert for that."""
    server_dir = new_server(tmp_path)
    folder = server_dir / BROKER_DIR
    with ShippedBroker(tmp_path / "broker", PASSWORDS, folder=folder) as broker:
        configure_collector(server_dir, broker)
        with Site(server_dir) as site:
            for i in range(100):
                room = base64.b64encode(os.urandom(75_000)).decode()
                site.issue_pass(f"9-9-{i:03d}", "孙八", room=room, publish=False)
            version = site.published_versions()["register"] + 1
            issued_at = datetime.now(UTC).isoformat()
            body = site.register().to_json()
            doc = sign_document(
                "register", SITE, version, issued_at, body, 1, load_key(server_dir, 1)
            )
            register = doc.encode()
            site.bundle_path("register.json").write_bytes(register)
            assert len(register) > MAX_DOCUMENT_BYTES
            documents = (topics.config(SITE), topics.register(SITE), FRESHNESS)
            collector = Collector(site, parse_broker(broker.url))
            collector.document_check_s = 0.1
            with caplog.at_level(logging.ERROR, logger="menwei.collector"):
                try:
                    collector.start()
                    with client(broker, "east", *documents, topics.ack(SITE, "east")) as east:
                        east.wait_for(FRESHNESS, lambda m: True, 15, "the freshness statement")
                        send_event_and_wait_for_its_ack(east, 1)
                    wait_until(
                        lambda: site.alerts.open_counts().get("document_too_large") == 2,
                        15,
                        "the document_too_large alerts",
                    )
                    broker.restart()  # the collector reconnects: nothing is resent
                    with client(broker, "east", *documents, topics.ack(SITE, "east")) as east:
                        # Republished after the reconnect, in the order of the bundle: config,
                        # (register), freshness. A live freshness means the register was passed.
                        east.wait_for(FRESHNESS, lambda m: not m.retain, 30, "a live statement")
                        send_event_and_wait_for_its_ack(east, 2)
                        assert east.on(topics.register(SITE)) == []
                    assert collector.connected.is_set()
                finally:
                    collector.close()
            assert server_count(site.dir / SQLITE_FILE, "east") == 2
            alerts = [a for a in site.alerts.list() if a.kind == "document_too_large"]
            assert {a.priority for a in alerts} == {"high"}
            (unpublished,) = [a for a in alerts if f"{len(register)} bytes" in a.detail]
            assert "not published" in unpublished.detail
            (refresh,) = [a for a in alerts if a is not unpublished]
            assert refresh.detail.startswith("register not refreshed: the register of 100 passes")
        errors = [r for r in caplog.records if "document_too_large" in r.getMessage()]
        assert len(errors) == 2, [r.getMessage() for r in errors]
        assert "oversize" not in broker.log()


def send_event_and_wait_for_its_ack(east: MqttWatcher, seq: int) -> None:
    batch = encode_batch("east", [make_event(SITE, "east", seq)])
    assert accepted(east.publish(topics.events(SITE, "east"), batch))
    east.wait_for(
        topics.ack(SITE, "east"),
        lambda m: Ack.decode(m.payload).acked_seq == seq,
        30,
        f"the ack of seq {seq}",
    )


def test_a_restart_keeps_the_retained_documents(tmp_path: Path) -> None:
    config = tagged("config")
    with ShippedBroker(tmp_path / "broker", ["collector", "east"]) as broker:
        with MqttWatcher(broker.url, **broker.login("collector")) as server:
            assert accepted(server.publish(topics.config(SITE), config, retain=True))
        broker.restart()
        with MqttWatcher(broker.url, topics.config(SITE), **broker.login("east")) as east:
            receive(east, topics.config(SITE), config, "the retained config after a restart")
