"""Hostile MQTT input, sent through a real Mosquitto to a real collector (issue 11: events
with a 300-character household, year 9999, 99.9 °C or role `admin` were stored; deeply
nested messages raised RecursionError and were not recorded; 10,000 malformed messages made
340,000 rows of `rejected_messages`, never purged).

The collector is the conftest's: the real one of a new site, on this test's own broker. Each
hostile event rides in a batch with a good one: the good one is stored and acknowledged,
the hostile one is refused, counted and (within the sample's bound) recorded with its reason.
"""

from __future__ import annotations

import json
import logging
import math
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from menwei.mosquitto import MosquittoBroker
from protocol import topics
from protocol.events import MAX_DETAIL_DEPTH, Ack, encode_batch
from server.collector import Collector
from server.storage.events import SAMPLES_PER_DAY, SAMPLES_PER_TOPIC_DAY, TOPICS_PER_DAY
from tests import collected
from tests.conftest import SITE
from tests.e2e.helpers import MqttWatcher, make_event, mqtt_client, publish, wait_until

NOW = datetime.now(UTC)


def deep(depth: int) -> Any:
    value: Any = 1
    for _ in range(depth):
        value = {"a": value}
    return value


# (what the event says, how its reason must read)
HOSTILE: list[tuple[dict[str, Any], str]] = [
    ({"household": "H" * 300}, "household id"),
    ({"household": "1-1-101'; DROP TABLE events; --"}, "household id"),
    ({"at": "9999-12-31T23:59:59+00:00"}, "outside 2000..2100"),
    ({"at": (NOW + timedelta(days=3)).isoformat()}, "ahead of the collector's clock"),
    ({"temperature_c": 99.9}, "'temperature_c' must be 34..43 °C or null"),
    ({"temperature_c": -40.0}, "'temperature_c' must be 34..43 °C or null"),
    ({"role": "admin"}, "'role' must be one of resident, staff, visitor"),
    ({"reason": "<script>alert(1)</script>"}, "'reason' must be a reason code"),
    ({"uuid": "x" * 100}, "'uuid' must be up to 64"),
    ({"gate": "G 1"}, "'gate' 'G 1' must be 1-32 of a-z"),
    ({"versions": {"config": -1}}, "'versions' must map"),
    ({"versions": {f"v{i}": 1 for i in range(100)}}, "'versions' must map"),
    ({"kind": "root"}, "unknown event kind"),
    ({"detail": deep(MAX_DETAIL_DEPTH + 1)}, "'detail' nests deeper"),
]


def encode_events(gate: str, events: list[dict[str, Any]]) -> bytes:
    """A batch of events as JSON objects, whatever they hold (encode_batch takes Events)."""
    return json.dumps({"schema": 1, "gate": gate, "events": events}).encode()


def hostile_json(overrides: dict[str, Any], seq: int) -> dict[str, Any]:
    event = make_event(SITE, "east", seq).to_json()
    event.update(overrides)
    return event


def test_hostile_event_fields_are_refused_and_the_good_events_stored(
    collector: Collector, broker: MosquittoBroker
) -> None:
    good = [make_event(SITE, "east", 1 + 2 * i) for i in range(len(HOSTILE))]
    batches = [
        encode_events("east", [ok.to_json(), hostile_json(bad, 2 + 2 * i)])
        for i, (ok, (bad, _why)) in enumerate(zip(good, HOSTILE, strict=True))
    ]
    # JSON's NaN (Python's json reads it) as a temperature: refused too.
    nan = hostile_json({"temperature_c": math.nan}, 99)
    batches.append(encode_events("east", [nan]))
    gate = mqtt_client(broker.url)
    try:
        for payload in batches:
            publish(gate, topics.events(SITE, "east"), payload)
    finally:
        gate.disconnect()
        gate.loop_stop()
    store = collector.site.store
    wait_until(lambda: collected.rejected_count(store) >= len(HOSTILE) + 1, 60, "not refused")
    stored = {e["uuid"] for e in collected.events(store)}
    assert stored == {e.uuid for e in good}, "only the good events"
    reasons = [reason for _t, reason, _x in collected.rejected(store)]
    for (_bad, why), reason in zip(HOSTILE, reasons[: len(HOSTILE)], strict=True):
        assert why in reason, (why, reason)
    assert "'temperature_c' must be a finite number" in reasons[-1]
    assert collected.rejected_count(store) == len(HOSTILE) + 1
    # The good events are acknowledged up to the first refused one (seq 2): nothing past a
    # gap is acknowledged, the gate keeps the rest until it is fixed.
    assert collected.contiguous_seq(store, "east") == 1


def test_deeply_nested_messages_are_recorded_rejections_not_recursion_errors(
    collector: Collector, broker: MosquittoBroker, caplog: pytest.LogCaptureFixture
) -> None:
    slug = collector.site.site
    nested = {
        topics.events(slug, "g1"): b'{"schema": 1, "events": ' + b"[" * 100_000 + b"]" * 100_000
        + b"}",
        topics.events(slug, "g2"): encode_events(
            "g2", [hostile_json({"gate": "g2", "detail": deep(900)}, 1)]
        ),
        topics.status(slug, "g3"): json.dumps({"state": "online", "clock": deep(900)}).encode(),
        topics.status(slug, "g4"): b'{"state": "online", "x": ' + b"[" * 50_000 + b"]" * 50_000
        + b"}",
    }  # fmt: skip
    good = encode_batch("g5", [make_event(slug, "g5", 1)])
    with caplog.at_level(logging.WARNING), MqttWatcher(broker.url, topics.ack(slug, "g5")) as w:
        gate = mqtt_client(broker.url)
        try:
            for topic, payload in nested.items():
                publish(gate, topic, payload)
            publish(gate, topics.events(slug, "g5"), good)
        finally:
            gate.disconnect()
            gate.loop_stop()
        w.wait_for(
            topics.ack(slug, "g5"), lambda m: Ack.decode(m.payload).acked_seq == 1, 30, "g5 acked"
        )
        store = collector.site.store
        wait_until(lambda: collected.rejected_count(store) == len(nested), 30, "not recorded")
    assert "RecursionError" not in caplog.text and "Traceback" not in caplog.text
    by_topic = {topic: reason for topic, reason, _x in collected.rejected(store)}
    assert set(by_topic) == set(nested)
    assert all("deep" in reason for reason in by_topic.values()), by_topic
    assert not {"g3", "g4"} & {g["gate"] for g in collected.gates(store)}, "no status stored"


def flood(broker: MosquittoBroker, messages: list[tuple[str, bytes]]) -> None:
    """Publish every message at QoS 1 without waiting for each (paho queues them), then
    wait for the last PUBACK."""
    gate = mqtt_client(broker.url)
    try:
        infos = [gate.publish(topic, payload, qos=1) for topic, payload in messages]
        infos[-1].wait_for_publish(timeout=120)
        wait_until(lambda: all(i.is_published() for i in infos), 120, "the broker took them")
    finally:
        gate.disconnect()
        gate.loop_stop()


def test_ten_thousand_malformed_messages_are_counted_and_a_bounded_sample_kept(
    collector: Collector, broker: MosquittoBroker
) -> None:
    slug = collector.site.site
    topic = topics.events(slug, "east")
    flood(broker, [(topic, b"garbage %d" % n) for n in range(10_000)])
    store = collector.site.store
    wait_until(lambda: collected.rejected_count(store) == 10_000, 240, "not all counted")
    assert len(collected.rejected(store)) == SAMPLES_PER_TOPIC_DAY
    ((_day, counted_topic, refused, sampled),) = collected.rejection_counts(store)
    assert (counted_topic, refused, sampled) == (topic, 10_000, SAMPLES_PER_TOPIC_DAY)
    assert collector.stats["rejected"] == 10_000

    # Made-up gate names (a broker without the ACL): the rows stay bounded too.
    names = [f"x{n}" for n in range(TOPICS_PER_DAY + 50)]
    flood(broker, [(topics.events(slug, g), b"[]") for g in names for _ in range(5)])
    total = 10_000 + 5 * len(names)
    wait_until(lambda: collected.rejected_count(store) == total, 240, "not all counted")
    counts = collected.rejection_counts(store)
    assert len(counts) == TOPICS_PER_DAY + 1  # the rest under "(other topics)"
    assert sum(r for _d, _t, r, _s in counts) == total
    assert len(collected.rejected(store)) <= SAMPLES_PER_DAY
