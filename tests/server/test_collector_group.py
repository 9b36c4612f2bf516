"""Several collectors in a shared group (docs/configuration.md, "Several collectors"), on a
real Mosquitto: the batches are dealt between them, each stored once and acknowledged; one
that stops leaves the group at once; `server run` takes the group and its own broker login
from the command line and refuses bad ones with a clear message."""

from __future__ import annotations

import contextlib
import os
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import select

from menwei.mosquitto import MosquittoBroker
from protocol import topics
from protocol.broker import parse_broker
from protocol.events import Ack, encode_batch
from server.collector import Collector, collector_client_id
from server.config import MqttSection, ServerConfigError
from server.site import Site
from server.storage.schema import events
from tests.conftest import SITE, run_menwei
from tests.e2e.helpers import MqttWatcher, make_event, mqtt_client, publish, wait_until

GROUP = "collectors"
ACK = topics.ack(SITE, "g1")


@contextlib.contextmanager
def group_collector(directory: Path, broker: MosquittoBroker) -> Iterator[Collector]:
    """A collector of GROUP on the server directory `directory` (its own Site, as each
    `menwei server run` process has), connected."""
    with Site(directory) as site:
        settings = MqttSection(shared_group=GROUP)
        collector = Collector(site, parse_broker(broker.url), settings=settings)
        collector.start()
        try:
            wait_until(collector.connected.is_set, 15, "collector did not connect")
            yield collector
        finally:
            collector.close()


def acked(watcher: MqttWatcher) -> int:
    last = watcher.last(ACK)
    return 0 if last is None else Ack.decode(last.payload).acked_seq


def test_the_group_shares_the_batches_and_one_that_stops_leaves_it_at_once(
    site: Site, broker: MosquittoBroker
) -> None:
    """A gate that never resends (a plain publisher): every batch must reach a running
    collector. With a session kept for the stopped one, Mosquitto would deal it every other
    batch and keep them for it."""
    gate = mqtt_client(broker.url)
    seq = 0

    def send(batches: int) -> None:
        nonlocal seq
        for _ in range(batches):
            events = [make_event(SITE, "g1", seq + i) for i in range(1, 6)]
            seq += 5
            publish(gate, topics.events(SITE, "g1"), encode_batch("g1", events))

    try:
        with (
            MqttWatcher(broker.url, ACK) as acks,
            group_collector(site.dir, broker) as first,
            group_collector(site.dir, broker) as second,
        ):
            assert first.client._client_id != second.client._client_id
            send(20)
            wait_until(lambda: acked(acks) == seq, 30, lambda: f"acked {acks.last(ACK)}")
            dealt = (first.stats["batches"], second.stats["batches"])
            assert sum(dealt) == 20 and min(dealt) > 0, dealt

            second.close()
            send(20)
            wait_until(lambda: acked(acks) == seq, 30, lambda: f"acked {acks.last(ACK)}")
            assert first.stats["batches"] == dealt[0] + 20, "every batch to the one running"
    finally:
        gate.disconnect()
        gate.loop_stop()
    with site.store.read() as tx:
        keys = [tuple(r) for r in tx.execute(select(events.c.gate, events.c.seq))]
    assert sorted(keys) == [("g1", s) for s in range(1, 201)], "each event once"


def test_the_client_id_is_stable_alone_and_one_of_its_own_in_a_group() -> None:
    assert collector_client_id(SITE, None) == f"menwei-collector-{SITE}"
    ours = f"menwei-collector-{SITE}-{socket.gethostname()}-{os.getpid()}-"
    ids = [collector_client_id(SITE, GROUP) for _ in range(2)]
    assert all(i.startswith(ours) for i in ids) and ids[0] != ids[1]


@pytest.mark.parametrize("name", ["a/b", "a+", "#", "", "x" * 65])
def test_a_share_name_mqtt_would_refuse_is_a_config_error(name: str) -> None:
    with pytest.raises(ServerConfigError, match="shared_group"):
        MqttSection(shared_group=name)


def test_server_run_refuses_a_bad_group_password_file_or_certificate_clearly(site: Site) -> None:
    for args, message in (
        (["--shared-group", "a/b"], "shared_group 'a/b' must be 1-64 of"),
        (["--mqtt-password-file", str(site.dir / "missing")], "--mqtt-password-file"),
        (["--mqtt-cert-file", str(site.dir / "c.pem")], "--mqtt-key-file go together"),
        (  # a certificate for a broker written mqtt:// in server.toml: the link would be clear
            ["--mqtt-cert-file", "c.pem", "--mqtt-key-file", "c.key"],
            "write the broker as mqtts://HOST",
        ),
    ):
        done = run_menwei("server", "run", str(site.dir), *args, check=False, timeout=60)
        assert done.returncode != 0 and message in done.stderr, done.stderr
        assert "Traceback" not in done.stderr
    (site.dir / "empty.password").write_text("\n", encoding="utf-8")
    done = run_menwei(
        "server", "run", str(site.dir), "--mqtt-password-file", str(site.dir / "empty.password"),
        check=False, timeout=60,
    )  # fmt: skip
    assert done.returncode != 0 and "the first line is empty" in done.stderr, done.stderr
