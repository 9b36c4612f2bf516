"""Hostile and broken batches in one group with good ones, on SQLite and a real PostgreSQL
(the collector on a real Mosquitto): what PostgreSQL cannot store (a NUL character) is
refused event by event like any bad field, the good events of the same message and of the
other gates' messages are stored and acknowledged in the group's one transaction, a gate
cannot lower the priority of an alert the server holds high, and a flood waits at the
broker, not in the collector's memory."""

from __future__ import annotations

import itertools
import json
import logging
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest

from menwei.mosquitto import MosquittoBroker
from protocol import topics
from protocol.broker import parse_broker
from protocol.events import Ack, Event, encode_batch
from server.collector import Collector
from server.site import Site
from tests import collected
from tests.e2e.helpers import MqttWatcher, make_event, wait_until

_sites = (f"hostile-{n}" for n in itertools.count(1))


@pytest.fixture
def collector(
    tmp_path: Path, store_url: str, shared_broker: MosquittoBroker
) -> Iterator[Collector]:
    """A collector of a site of its own (its retained acks are its own on the shared broker)."""
    with Site.init(tmp_path / "server", next(_sites), store=store_url) as site:
        c = Collector(site, parse_broker(shared_broker.url))
        c.start()
        try:
            wait_until(c.connected.is_set, 15, "collector did not connect")
            yield c
        finally:
            c.close()


def alert(site: str, gate: str, reason: str, detail: dict[str, Any]) -> Event:
    return make_event(
        site, gate, 1, kind="alert", reason=reason, decision=None, direction=None,
        pass_id=None, household=None, detail=detail,
    )  # fmt: skip


def test_nul_characters_are_refused_event_by_event_and_spoil_nothing_else(
    collector: Collector, shared_broker: MosquittoBroker, caplog: pytest.LogCaptureFixture
) -> None:
    """On PostgreSQL a NUL in a stored text failed the group's transaction, every message was
    then stored alone, and the one with the NUL was lost with a traceback, never recorded
    nor acknowledged (its good events with it), at each resend of the gate."""
    site = collector.site
    slug = site.site
    epochs = {"epoch": "\x00", "new_epoch": "ab", "confirmed_seq": 1, "moved": 0}
    g1 = [make_event(slug, "g1", 1), make_event(slug, "g1", 2)]
    g2 = [
        make_event(slug, "g2", 1, uuid="u\x00"),
        make_event(slug, "g2", 2, household="1-1\x00"),
        make_event(slug, "g2", 3),
    ]
    group = [
        (topics.events(slug, "g1"), encode_batch("g1", g1)),
        (topics.events(slug, "g2"), encode_batch("g2", g2)),
        (
            topics.events(slug, "g3"),
            encode_batch("g3", [alert(slug, "g3", "fever", {"priority": "normal"})]),
        ),
        (
            topics.events(slug, "g4"),
            encode_batch("g4", [alert(slug, "g4", "gate_history_lost", epochs)]),
        ),
        (topics.events(slug, "g2"), b"\x00\x00 not json"),
    ]
    acks = [topics.ack(slug, g) for g in ("g1", "g2", "g3", "g4")]
    with MqttWatcher(shared_broker.url, *acks) as w, caplog.at_level(logging.WARNING):
        collector.handle_many(group)
        for topic, seq in zip(acks, (2, 0, 1, 1), strict=True):
            w.wait_for(topic, lambda m, s=seq: Ack.decode(m.payload).acked_seq == s, 15, topic)
    assert "at once failed" not in caplog.text, "one transaction for the whole group"
    assert "Traceback" not in caplog.text
    keys = sorted((g, s) for g, _e, s, _u in collected.event_keys(site.store))
    assert keys == [("g1", 1), ("g1", 2), ("g2", 3), ("g3", 1), ("g4", 1)]
    reasons = collected.rejected(site.store)
    assert [r for _t, r, _x in reasons[:2]] == [
        "event 0: bad event: field 'uuid' must not contain NUL",
        "event 1: bad event: field 'household' must not contain NUL",
    ]
    assert "not JSON" in reasons[2][1] and "\x00" not in reasons[2][2]
    by_kind = {a.kind: a for a in site.alerts.list()}
    assert by_kind["fever"].priority == "high", "a gate cannot lower a fever alert"
    assert json.loads(by_kind["gate_history_lost"].detail)["new_epoch"] == "ab"


def message(topic: str, payload: bytes) -> mqtt.MQTTMessage:
    """A message as paho hands it to on_message."""
    msg = mqtt.MQTTMessage(topic=topic.encode())
    msg.payload = payload
    return msg


def test_a_flood_waits_at_the_broker_not_in_the_collectors_memory(site: Site) -> None:
    """Past `inbox_bytes` waiting for the worker, paho's thread waits for room (it has not
    acknowledged the message yet, so the broker keeps the rest); the worker taking a group
    makes room; close() releases a thread that still waits. (A gate flooding 1 MB batches
    grew the collector by ~50 MB/s before.)"""
    c = Collector(site, parse_broker("mqtt://127.0.0.1:1"))  # never started: no network
    c.inbox_bytes = 1000
    topic = topics.events(site.site, "g1")
    c._on_message(c.client, None, message(topic, b"x" * 1500))  # there was room: taken
    second = threading.Thread(
        target=c._on_message, args=(c.client, None, message(topic, b"y" * 10))
    )
    second.start()
    second.join(timeout=1.0)
    assert second.is_alive(), "over inbox_bytes: the next message waits"
    assert [p for _t, p in c._next_group()] == [b"x" * 1500]
    second.join(timeout=30)
    assert not second.is_alive(), "the worker took a group: room again"
    c._on_message(c.client, None, message(topic, b"z" * 2000))
    third = threading.Thread(target=c._on_message, args=(c.client, None, message(topic, b"w")))
    third.start()
    c.close()
    third.join(timeout=30)
    assert not third.is_alive(), "close() releases a waiting network thread"


def test_a_storage_fault_of_any_text_is_one_alert_and_the_next_status_is_stored(
    collector: Collector,
) -> None:
    """A status is the gate's free text: a NUL (PostgreSQL) in a storage fault's `since`, which
    names the alert, failed its alert with a traceback and the statuses after it in the group
    were never stored; a fault's texts are kept to 200 characters."""
    site = collector.site
    fault = {"state": "fault", "kind": "io", "error": "e" * 5000, "since": "2026\x00" + "9" * 5000}
    statuses = [
        ("g1", {"state": "online", "storage": fault}),
        ("g2", {"state": "online", "backlog": 3}),
    ]
    collector.handle_many(
        [(topics.status(site.site, g), json.dumps(s).encode()) for g, s in statuses]
    )
    stored = {g["gate"]: g["status"] for g in collected.gates(site.store)}
    assert stored["g2"]["backlog"] == 3
    [alert] = site.alerts.list()
    assert alert.kind == "storage_fault" and len(json.loads(alert.detail)["since"]) == 200


def test_json_nested_too_deeply_costs_only_its_own_message(collector: Collector) -> None:
    """[[[[… deeper than Python's parser goes raised RecursionError out of handle_many, and the
    whole group was dropped: a real `server run` flooded with them by one gate acknowledged 10
    of another gate's 100 events in 9 s."""
    site = collector.site
    deep = b'{"schema": 1, "events": ' + b"[" * 100_000 + b"]" * 100_000 + b"}"
    good = encode_batch("g2", [make_event(site.site, "g2", 1)])
    collector.handle_many(
        [(topics.events(site.site, "g1"), deep), (topics.events(site.site, "g2"), good)]
    )
    assert [(g, s) for g, _e, s, _u in collected.event_keys(site.store)] == [("g2", 1)]
    [(topic, reason, _excerpt)] = collected.rejected(site.store)
    assert topic == topics.events(site.site, "g1") and "too deeply" in reason


def test_a_batch_of_bad_events_is_a_few_rejected_rows_not_one_per_event(
    collector: Collector,
) -> None:
    """A hostile batch of 500 refused events made 500 rows of `rejected_messages` (a table
    read by people and kept for REJECTED_RETENTION_DAYS): now REJECTS_PER_MESSAGE, the last
    saying how many more; the good event of the batch is stored."""
    from server.collector import REJECTS_PER_MESSAGE

    slug = collector.site.site
    bad = [make_event(slug, "g1", n, reason="r\x00") for n in range(1, 500)]
    good = make_event(slug, "g1", 500)
    collector.handle_many([(topics.events(slug, "g1"), encode_batch("g1", [*bad, good]))])
    reasons = [r for _t, r, _x in collected.rejected(collector.site.store)]
    assert len(reasons) == REJECTS_PER_MESSAGE
    assert reasons[0] == "event 0: bad event: field 'reason' must not contain NUL"
    assert reasons[-1].endswith(
        f"(and {499 - REJECTS_PER_MESSAGE} more refused events of this batch)"
    )
    assert [s for _g, _e, s, _u in collected.event_keys(collector.site.store)] == [500]
