"""The server's Prometheus metrics: scraped from the dashboard without a login, while a real
collector stores batches a gate publishes through a real Mosquitto."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from prometheus_client.parser import text_string_to_metric_families
from starlette.testclient import TestClient

from menwei.mosquitto import MosquittoBroker
from protocol import topics
from protocol.broker import parse_broker
from protocol.events import encode_batch, encode_status
from server.collector import Collector
from server.site import Site
from server.web.app import create_app
from tests.conftest import SITE
from tests.e2e.helpers import make_event, mqtt_client, publish, wait_until

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


@pytest.fixture
def collector(site: Site, shared_broker: MosquittoBroker) -> Iterator[Collector]:
    c = Collector(site, parse_broker(shared_broker.url))
    c.start()
    wait_until(c.connected.is_set, 15, "collector did not connect to the broker")
    yield c
    c.close()


def parse(text: str) -> Samples:
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def scrape(client: TestClient) -> Samples:
    response = client.get("/metrics")  # no session cookie: Prometheus has none
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    return parse(response.text)


def value(samples: Samples, name: str, **labels: str) -> float | None:
    return samples.get((name, frozenset(labels.items())))


def test_metrics_follow_batches_alerts_and_gates(
    site: Site, collector: Collector, shared_broker: MosquittoBroker
) -> None:
    gate = mqtt_client(shared_broker.url)
    try:
        with TestClient(create_app(site, collector.feed, collector)) as client:
            before = scrape(client)
            assert value(before, "menwei_server_events_stored", gate="g1") is None
            assert value(before, "menwei_server_alerts_open", kind="fever") is None
            assert value(before, "menwei_server_gates", state="online") == 0
            assert value(before, "menwei_collector_connected") == 1
            assert value(before, "menwei_collector_batches_total") == 0
            assert value(before, "menwei_server_live_subscribers") == 0

            publish(
                gate,
                topics.status(SITE, "g1"),
                encode_status({"gate": "g1", "site": SITE, "state": "online", "backlog": 2}),
                retain=True,
            )
            fever = make_event(
                SITE,
                "g1",
                2,
                kind="alert",
                decision=None,
                reason="fever",
                direction="in",
                detail={"priority": "high"},
            )
            batch = encode_batch("g1", [make_event(SITE, "g1", 1), fever])
            publish(gate, topics.events(SITE, "g1"), batch)
            wait_until(lambda: collector.stats["inserted"] == 2, 15, "batch not stored")
            publish(gate, topics.events(SITE, "g1"), batch)  # a resend: duplicates only
            publish(gate, topics.events(SITE, "g1"), b"not json")
            wait_until(lambda: collector.stats["rejected"] == 1, 15, "garbage not rejected")

            after = scrape(client)
            assert value(after, "menwei_server_events_stored", gate="g1") == 2
            assert value(after, "menwei_collector_batches_total") == 2
            assert value(after, "menwei_collector_inserted_total") == 2
            assert value(after, "menwei_collector_duplicates_total") == 2
            assert value(after, "menwei_collector_rejected_total") == 1
            assert value(after, "menwei_server_rejected_messages") == 1
            assert value(after, "menwei_server_alerts_open", kind="fever") == 1
            assert value(after, "menwei_server_gates", state="online") == 1
            assert value(after, "menwei_server_gate_state", gate="g1", state="online") == 1
            assert value(after, "menwei_server_gate_backlog", gate="g1") == 2
            assert value(after, "menwei_server_gate_last_seen_timestamp_seconds", gate="g1")
            assert (value(after, "menwei_server_live_published_total") or 0) >= 3

            [alert] = site.alerts.list(open_only=True)
            assert site.alerts.acknowledge(alert.id, "olga", "sent to the fever clinic")
            assert value(scrape(client), "menwei_server_alerts_open", kind="fever") is None
    finally:
        gate.disconnect()
        gate.loop_stop()


def test_metrics_without_a_collector_still_read_the_store(site: Site) -> None:
    with TestClient(create_app(site)) as client:
        samples = scrape(client)
        assert value(samples, "menwei_server_rejected_messages") == 0
        assert value(samples, "menwei_server_gates", state="silent") == 0
        assert not any(name.startswith("menwei_collector_") for name, _ in samples)
        assert client.get("/", follow_redirects=False).status_code == 303  # pages still need one
