"""The broker setup an installer gets from docs/configuration.md, run as shipped.

A real Mosquitto runs `systemd/mosquitto-menwei.conf` and `systemd/menwei-acl.example`
(site "sunny") with a password file made by the documented `mosquitto_passwd` commands
(tests/e2e/shipped_broker.py). MQTT v5 clients log in as the collector and as the gates
"east" and "west" and try every flow of the protocol: what each must receive, and what the
ACL must refuse. Every refusal has a positive control sent after it (the entitled client
receives a message on the same topic), so a check cannot pass because nothing was sent or
nothing arrived yet. Then the real collector and a real gate daemon run through the broker.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from protocol import topics
from protocol.broker import parse_broker
from server.collector import Collector
from server.config import CONFIG_NAME, load_server_config
from server.site import Site
from server.store import STORE_NAME
from tests.e2e.helpers import (
    GateThread,
    Message,
    MqttRefused,
    MqttWatcher,
    Stage,
    gate_document_versions,
    gate_progress,
    provision_gate,
    server_count,
    wait_until,
)
from tests.e2e.shipped_broker import (
    FIRST_USER_COMMAND,
    INSTALL_COMMANDS,
    NEXT_USER_COMMAND,
    PERMISSIONS_COMMAND,
    REPO,
    SITE,
    ShippedBroker,
)

PASSWORDS = {"collector": "collector-Secret-1", "east": "east-Secret-2", "west": "west-Secret-3"}
NOT_AUTHORIZED = 0x87
FRESHNESS = f"{topics.ROOT}/{SITE}/freshness"
SITE_DOCUMENTS = (topics.config(SITE), topics.register(SITE), FRESHNESS)
"""Retained, server → every gate."""
PASSAGES = topics.passages(SITE)
ALL_EVENTS = topics.gate_wildcard(SITE, "events")
ALL_STATUS = topics.gate_wildcard(SITE, "status")


@pytest.fixture(scope="module")
def broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ShippedBroker]:
    with ShippedBroker(tmp_path_factory.mktemp("shipped-broker"), PASSWORDS) as b:
        yield b


def client(
    broker: ShippedBroker,
    user: str,
    *filters: str,
    will: tuple[str, bytes] | None = None,
    client_id: str | None = None,
) -> MqttWatcher:
    """An MQTT v5 client logged in as `user` (password from PASSWORDS)."""
    return MqttWatcher(
        broker.url,
        *filters,
        username=user,
        password=PASSWORDS[user],
        will=will,
        client_id=client_id,
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
    commands = (*INSTALL_COMMANDS, FIRST_USER_COMMAND, NEXT_USER_COMMAND, PERMISSIONS_COMMAND)
    assert [c for c in commands if c not in lines] == []


def test_the_running_conf_is_the_shipped_one_with_paths_and_port_moved(
    broker: ShippedBroker,
) -> None:
    shipped = (REPO / "systemd" / "mosquitto-menwei.conf").read_text("utf-8").splitlines()
    running = (broker.etc / "conf.d" / "menwei.conf").read_text("utf-8").splitlines()
    put_back = [
        "listener 1883 0.0.0.0" if line.startswith("listener ") else line
        for line in (r.replace(str(broker.workdir), "") for r in running)
    ]
    assert put_back == shipped
    assert f"listener {broker.port} 127.0.0.1" in running
    acl = (REPO / "systemd" / "menwei-acl.example").read_bytes()
    assert (broker.etc / "menwei.acl").read_bytes() == acl


def test_only_the_users_of_the_password_file_get_in(broker: ShippedBroker) -> None:
    with client(broker, "east") as east:  # control: the right password works
        assert east.connect_reason == 0
    for user, password in (("east", "wrong"), ("south", "any"), (None, None)):
        with pytest.raises(MqttRefused):
            MqttWatcher(broker.url, username=user, password=password)


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
    genuine message (the forgery did not replace it)."""
    retain = topic != PASSAGES and not topic.endswith("/events")
    genuine, forged, genuine_after = tagged("genuine"), tagged("forged"), tagged("genuine after")
    with client(broker, reader, watch) as watcher:
        with client(broker, entitled) as real:
            assert accepted(real.publish(topic, genuine, retain=retain))
        receive(watcher, topic, genuine, "control: the entitled publisher gets through")
        with client(broker, "east") as forger:
            assert refused(forger.publish(topic, forged, retain=retain))
        if retain:
            with client(broker, reader, topic) as late:
                got = late.wait_for(topic, lambda m: m.retain, 15, "the retained message")
                assert got.payload == genuine
        with client(broker, entitled) as real:
            assert accepted(real.publish(topic, genuine_after, retain=retain))
        # Sent after the forgery was refused: once it is here, a forgery would be here too.
        receive(watcher, topic, genuine_after, "control after the forgery")
        assert forged not in [m.payload for m in watcher.on(topic)]


def test_a_gate_cannot_leave_a_last_will_for_another_gate(broker: ShippedBroker) -> None:
    forged, genuine = tagged("forged will"), tagged("genuine will")
    west_status = topics.status(SITE, "west")
    with client(broker, "collector", ALL_STATUS) as server:
        cid = f"forger-{uuid.uuid4().hex[:8]}"
        client(broker, "east", will=(west_status, forged), client_id=cid).kill()
        # Taking over the forger's client id: once connected, the broker has finished with
        # the old connection (and published or dropped its Will).
        with client(broker, "east", client_id=cid):
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


# --- the real collector and gate ------------------------------------------------------------


def configure_collector(server_dir: Path, broker: ShippedBroker) -> None:
    """server.toml [mqtt] as docs/configuration.md shows it."""
    toml = server_dir / CONFIG_NAME
    text = toml.read_text("utf-8")
    line = 'broker = "mqtt://127.0.0.1:1883"\n'
    assert line in text, "server.toml layout changed: cannot set [mqtt]"
    toml.write_text(
        text.replace(
            line,
            f'broker = "{broker.url}"\nusername = "collector"\n'
            f'password = "{PASSWORDS["collector"]}"\nshared_group = "collectors"\n',
            1,
        ),
        "utf-8",
    )
    mqtt = load_server_config(server_dir).mqtt
    assert (mqtt.username, mqtt.shared_group) == ("collector", "collectors")


def test_the_collector_and_a_gate_work_through_the_shipped_broker(tmp_path: Path) -> None:
    """On a broker of its own: the other tests leave retained test payloads behind."""
    with ShippedBroker(tmp_path / "broker", PASSWORDS) as broker:
        run_collector_and_gate(tmp_path, broker)


def run_collector_and_gate(tmp_path: Path, broker: ShippedBroker) -> None:
    server_dir = tmp_path / "server"
    Site.init(server_dir, SITE).close()
    configure_collector(server_dir, broker)
    with Site(server_dir) as site:
        resident = site.issue_pass("1-1-101", "张三丰", room="1-1-101")
        gate_dir = provision_gate(
            tmp_path,
            server_dir,
            "east",
            "in",
            broker.url,
            username="east",
            password=PASSWORDS["east"],
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
                    stored = server_count(site.dir / STORE_NAME, "east")
                    return p.last_seq == 1 and p.acked_seq == 1 and stored == 1

                wait_until(
                    synced,
                    30,
                    lambda: (
                        f"gate {gate_progress(gate_dir)}, "
                        f"collector {server_count(site.dir / STORE_NAME, 'east')}\n{broker.log()}"
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
                        for g in site.store.gates()
                    ),
                    30,
                    lambda: f"gate status at the collector: {site.store.gates()}",
                )
        finally:
            collector.close()
        assert collector.stats["rejected"] == 0


def test_a_restart_keeps_the_retained_documents(tmp_path: Path) -> None:
    config = tagged("config")
    with ShippedBroker(tmp_path / "broker", {"collector": "c", "east": "e"}) as broker:
        with MqttWatcher(broker.url, username="collector", password="c") as server:
            assert accepted(server.publish(topics.config(SITE), config, retain=True))
        broker.restart()
        with MqttWatcher(broker.url, topics.config(SITE), username="east", password="e") as east:
            receive(east, topics.config(SITE), config, "the retained config after a restart")
