"""The collector while its PostgreSQL store is down: one warning, not a traceback per batch;
nothing acknowledged that was not stored; everything stored once the store is back."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path

import pytest

from menwei.mosquitto import MosquittoBroker
from menwei.postgres import PostgresServer
from protocol import topics
from protocol.broker import parse_broker
from protocol.events import Ack, encode_batch
from server.collector import Collector
from server.site import Site
from tests import collected
from tests.conftest import SITE
from tests.e2e.helpers import MqttWatcher, make_event, wait_until


@pytest.fixture
def pg() -> Iterator[PostgresServer]:
    """A server of this test's own: it is stopped and started again."""
    with PostgresServer() as server:
        yield server


def test_a_store_outage_is_one_warning_and_loses_nothing(
    tmp_path: Path, pg: PostgresServer, broker: MosquittoBroker, caplog: pytest.LogCaptureFixture
) -> None:
    url = pg.create_database("outage")
    ack_topic = topics.ack(SITE, "east")
    with (
        Site.init(tmp_path / "server", SITE, store=url) as site,
        Collector(site, parse_broker(broker.url)) as collector,
        MqttWatcher(broker.url, ack_topic) as gate,
    ):
        collector.start()
        wait_until(collector.connected.is_set, 15, "collector did not connect")
        events_topic = topics.events(SITE, "east")
        first = [make_event(SITE, "east", n) for n in (1, 2)]
        gate.publish(events_topic, encode_batch("east", first))
        wait_until(lambda: collected.count_events(site.store) == 2, 15, "first batch stored")

        def acked() -> int:
            last = gate.last(ack_topic)
            return 0 if last is None else Ack.decode(last.payload).acked_seq

        wait_until(lambda: acked() == 2, 15, "first batch acknowledged")
        caplog.clear()
        with caplog.at_level(logging.INFO, logger="menwei"):
            pg.stop()
            later = [make_event(SITE, "east", n) for n in (3, 4, 5)]
            for _ in range(4):  # the gate sends its batch again and again while unacknowledged
                gate.publish(events_topic, encode_batch("east", later))
            wait_until(
                lambda: any("unavailable" in r.getMessage() for r in caplog.records),
                30,
                "no word that the store is unavailable",
            )
            assert acked() == 2, "nothing acknowledged that was not stored"
            pg.resume()
            wait_until(lambda: collector.connected.is_set(), 15, "collector lost the broker")
            gate.publish(events_topic, encode_batch("east", later))  # the gate's resend
            wait_until(lambda: acked() == 5, 60, "the resent batch was not stored after the outage")
        down = [r for r in caplog.records if "unavailable" in r.getMessage()]
        back = [r for r in caplog.records if "available again" in r.getMessage()]
        assert len(down) == 1 and len(back) == 1, [r.getMessage() for r in caplog.records]
        assert not [r for r in caplog.records if r.exc_info], "no traceback for an outage"
        assert collected.count_events(site.store) == 5
        keys = sorted(s for _g, _e, s, _u in collected.event_keys(site.store))
        assert keys == [1, 2, 3, 4, 5]
