"""Gate health: the pure outage decision, its shell on a real store, and a gate whose
connection dies (its Last Will, delivered by a real Mosquitto) raising one alert."""

from __future__ import annotations

import dataclasses
import json
import time
from datetime import UTC, datetime, timedelta
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from menwei.mosquitto import MosquittoBroker
from protocol import topics
from protocol.broker import parse_broker
from protocol.events import encode_status
from server.collector import Collector
from server.config import AlertsSection
from server.gate_health import Assessment, GateHealth, Outage, assess
from server.site import Site
from tests import collected
from tests.conftest import SITE
from tests.e2e.helpers import mqtt_client, publish, wait_until

NOW = datetime(2026, 3, 1, 8, 0, tzinfo=UTC)
FIVE = timedelta(minutes=5)


def row(gate: str, seen: datetime | None, state: str | None = "online") -> dict[str, Any]:
    return {
        "gate": gate,
        "contiguous_seq": 0,
        "last_seen": seen.isoformat(timespec="milliseconds") if seen else None,
        "status": {"state": state, "gate": gate} if state else None,
    }


def iso(t: datetime) -> str:
    return t.isoformat(timespec="milliseconds")


# --- the pure decision ---------------------------------------------------------------------


def test_online_and_recently_seen_is_healthy() -> None:
    gates = [row("east", NOW - timedelta(seconds=20)), row("west", NOW - timedelta(minutes=4))]
    assert assess(gates, {}, NOW, FIVE) == Assessment()


def test_last_will_opens_an_outage_at_once() -> None:
    seen = NOW - timedelta(seconds=3)
    result = assess([row("east", seen, "offline")], {}, NOW, FIVE)
    assert result.opened == (Outage("east", iso(seen), "offline"),)
    assert result.opened[0].key == f"offline:east:{iso(seen)}"


def test_silence_longer_than_the_limit_opens_an_outage() -> None:
    seen = NOW - FIVE - timedelta(seconds=1)
    opened = assess([row("east", seen)], {}, NOW, FIVE).opened
    assert opened == (Outage("east", iso(seen), "silent"),)
    # events only, never a status: silence counts the same
    assert assess([row("west", seen, None)], {}, NOW, FIVE).opened[0].cause == "silent"
    # exactly at the limit: not yet
    assert assess([row("east", NOW - FIVE)], {}, NOW, FIVE) == Assessment()


def test_an_open_outage_is_not_raised_again_and_ends_when_the_gate_is_back() -> None:
    down = NOW - timedelta(minutes=30)
    still_down = [row("east", down, "offline")]
    assert assess(still_down, {"east": iso(down)}, NOW, FIVE) == Assessment()
    back = [row("east", NOW - timedelta(seconds=2))]
    assert assess(back, {"east": iso(down)}, NOW, FIVE) == Assessment(ended=("east",))


def test_back_online_then_offline_again_is_a_second_outage() -> None:
    t1 = NOW - timedelta(minutes=20)
    first = assess([row("east", t1, "offline")], {}, NOW, FIVE).opened[0]
    t2 = NOW - timedelta(seconds=1)
    second = assess([row("east", t2, "offline")], {}, NOW, FIVE).opened[0]
    assert first.key != second.key
    assert {first.since, second.since} == {iso(t1), iso(t2)}


def test_gate_never_seen_is_ignored() -> None:
    assert assess([row("east", None, None)], {}, NOW, FIVE) == Assessment()


def test_after_the_collector_reconnects_old_knowledge_is_not_trusted() -> None:
    listening = NOW - timedelta(seconds=2)
    old = NOW - timedelta(hours=2)
    # the stored status predates this connection: wait for the retained one
    assert assess([row("east", old, "offline")], {}, NOW, FIVE, listening) == Assessment()
    # silence counts from when we started listening, not from before a collector outage
    assert assess([row("west", old)], {}, NOW, FIVE, listening) == Assessment()
    late = NOW + FIVE
    result = assess([row("west", old)], {}, late, FIVE, listening)
    assert result.opened == (Outage("west", iso(old), "silent"),)
    # a stale "online" does not end an outage either
    assert assess([row("east", old)], {"east": iso(old)}, NOW, FIVE, listening) == Assessment()


def test_offline_status_heard_again_after_reconnect_is_the_same_outage() -> None:
    listening = NOW - timedelta(seconds=2)
    redelivered = row("east", NOW - timedelta(seconds=1), "offline")
    assert assess([redelivered], {"east": "earlier"}, NOW, FIVE, listening) == Assessment()


# --- the shell on a real store ---------------------------------------------------------------


def kinds(site: Site) -> list[tuple[str, str | None]]:
    return [(a.kind, a.gate) for a in reversed(site.alerts.list())]


def test_one_alert_per_outage_on_a_real_store(site: Site) -> None:
    health = GateHealth(site.store, site.alerts, FIVE)
    collected.set_gate_status(site.store, "east", {"state": "online"})
    assert health.check() == []
    collected.set_gate_status(site.store, "east", {"state": "offline"})
    (alert,) = health.check()
    assert alert.kind == "gate_offline" and alert.gate == "east" and alert.priority == "normal"
    assert json.loads(alert.detail)["cause"] == "offline"
    assert health.check() == [], "the same outage is raised once"
    assert health.open_outages() == {"east": alert.event_at}

    collected.set_gate_status(site.store, "east", {"state": "online"})
    assert health.check() == [] and health.open_outages() == {}
    time.sleep(0.002)  # last_seen has millisecond resolution
    collected.set_gate_status(site.store, "east", {"state": "offline"})
    (second,) = health.check()
    assert second.key != alert.key
    assert kinds(site) == [("gate_offline", "east"), ("gate_offline", "east")]


def test_a_restarted_collector_does_not_raise_an_outage_twice(site: Site) -> None:
    GateHealth(site.store, site.alerts, FIVE)
    collected.set_gate_status(site.store, "east", {"state": "offline"})
    assert len(GateHealth(site.store, site.alerts, FIVE).check()) == 1
    # restart: the broker delivers the retained will again (a new last_seen)
    listening = datetime.now(UTC)
    collected.set_gate_status(site.store, "east", {"state": "offline"})
    assert GateHealth(site.store, site.alerts, FIVE).check(listening_since=listening) == []
    assert len(site.alerts.list()) == 1


def test_a_silent_gate_is_raised_on_a_real_store(site: Site) -> None:
    health = GateHealth(site.store, site.alerts, FIVE)
    collected.set_gate_status(site.store, "east", {"state": "online"})
    assert health.check() == []
    (alert,) = health.check(now=datetime.now(UTC) + FIVE + timedelta(seconds=1))
    assert json.loads(alert.detail)["cause"] == "silent"


# --- a real gate connection dies -------------------------------------------------------------


def test_a_killed_gate_connection_raises_gate_offline(site: Site, broker: MosquittoBroker) -> None:
    site.config = dataclasses.replace(site.config, alerts=AlertsSection(gate_offline_after_min=5))
    status_topic = topics.status(SITE, "north")
    b = parse_broker(broker.url)
    gate = mqtt.Client(
        CallbackAPIVersion.VERSION2, client_id="test-gate-north", protocol=mqtt.MQTTv5
    )
    gate.will_set(status_topic, encode_status({"gate": "north", "state": "offline"}), 1, True)
    gate.connect(b.host, b.port, keepalive=30)
    gate.loop_start()
    publish(gate, status_topic, encode_status({"gate": "north", "state": "online"}), retain=True)

    with Collector(site, parse_broker(broker.url)) as collector:
        collector.health_interval_s = 0.2
        collector.start()
        wait_until(collector.connected.is_set, 15, "collector did not connect")

        def state() -> str | None:
            rows = [g for g in collected.gates(site.store) if g["gate"] == "north"]
            return rows[0]["status"]["state"] if rows and rows[0]["status"] else None

        wait_until(lambda: state() == "online", 10, "retained online status not stored")
        assert site.alerts.list() == []

        # the gate dies without DISCONNECT: the broker publishes its Last Will
        gate.loop_stop()
        sock = gate.socket()
        assert sock is not None
        sock.close()

        wait_until(
            lambda: [a for a in site.alerts.list() if a.kind == "gate_offline"],
            15,
            lambda: f"no gate_offline alert; gates {collected.gates(site.store)}",
        )
        (alert,) = site.alerts.list()
        assert alert.gate == "north" and json.loads(alert.detail)["cause"] == "offline"

        # back online, then lost again: a second alert
        again = mqtt_client(broker.url, client_id="test-gate-north")
        try:
            publish(again, status_topic, encode_status({"gate": "north", "state": "online"}), True)
            wait_until(lambda: collector.health.open_outages() == {}, 10, "outage did not end")
            publish(again, status_topic, encode_status({"gate": "north", "state": "offline"}), True)
            wait_until(lambda: len(site.alerts.list()) == 2, 10, "second outage not raised")
        finally:
            again.disconnect()
            again.loop_stop()


# --- storage faults -------------------------------------------------------------------------


def storage_status(state: str, since: str = "2026-03-01T08:00:00+00:00") -> dict[str, Any]:
    storage = (
        {"state": "fault", "kind": "full", "error": "database or disk is full", "since": since}
        if state == "fault"
        else {"state": "ok", "kind": None, "error": None, "since": None}
    )
    return {"gate": "east", "state": "online", "storage": storage}


def test_a_storage_fault_in_a_status_raises_one_high_priority_alert(site: Site) -> None:
    health = GateHealth(site.store, site.alerts, FIVE)
    assert health.on_status("east", storage_status("ok")) is None
    assert health.on_status("east", {"gate": "east", "state": "offline"}) is None  # a Will

    alert = health.on_status("east", storage_status("fault"))
    assert alert is not None
    assert (alert.kind, alert.priority, alert.gate) == ("storage_fault", "high", "east")
    assert json.loads(alert.detail) == {
        "kind": "full",
        "error": "database or disk is full",
        "since": "2026-03-01T08:00:00+00:00",
    }
    # The same fault again (every 15 s, or retained after a collector restart): no new alert.
    assert health.on_status("east", storage_status("fault")) is None
    assert health.on_status("east", storage_status("ok")) is None
    second = health.on_status("east", storage_status("fault", "2026-03-02T09:00:00+00:00"))
    assert second is not None and second.id != alert.id
    assert [a.kind for a in site.alerts.list()] == ["storage_fault", "storage_fault"]


def test_the_collector_raises_the_storage_alert_when_the_status_arrives(
    site: Site, broker: MosquittoBroker
) -> None:
    with Collector(site, parse_broker(broker.url)) as collector:
        collector.start()
        wait_until(collector.connected.is_set, 15, "collector did not connect")
        client = mqtt_client(broker.url)
        try:
            payload = encode_status(storage_status("fault"))
            publish(client, topics.status(SITE, "east"), payload, retain=True)
        finally:
            client.loop_stop()
            client.disconnect()
        wait_until(
            lambda: [a for a in site.alerts.list() if a.kind == "storage_fault"],
            15,
            "no storage_fault alert from the gate's status",
        )
