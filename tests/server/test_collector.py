"""The collector against a real Mosquitto: raw batches in, rows stored, retained acks out,
garbage recorded and survived, signed documents published and republished."""

from __future__ import annotations

import base64
import json
import logging
import os
import subprocess
import threading
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest

from menwei.mosquitto import MosquittoBroker, free_port, start_mosquitto, stop_mosquitto
from protocol import topics
from protocol.broker import parse_broker
from protocol.documents import decode_document
from protocol.events import Ack, Event, encode_batch
from protocol.register_documents import DELTA_FILE, read_snapshot
from server.collector import Collector, max_payload
from server.register import RegisterRow
from server.site import Site
from tests import collected
from tests.conftest import SITE
from tests.e2e.helpers import (
    Message,
    MqttWatcher,
    json_of,
    make_event,
    mqtt_client,
    publish,
    wait_until,
)

EVENTS = topics.events(SITE, "g1")
ACK = topics.ack(SITE, "g1")


@pytest.fixture
def gate_client(broker: MosquittoBroker) -> Iterator[mqtt.Client]:
    c = mqtt_client(broker.url)
    yield c
    c.disconnect()
    c.loop_stop()


@pytest.fixture
def acks(broker: MosquittoBroker) -> Iterator[MqttWatcher]:
    with MqttWatcher(broker.url, ACK) as w:
        yield w


def ev(seq: int, gate: str = "g1", **kw: Any) -> Event:
    return make_event(SITE, gate, seq, **kw)


def wait_acked(acks: MqttWatcher, seq: int, timeout: float = 10) -> None:
    acks.wait_for(ACK, lambda m: Ack.decode(m.payload).acked_seq == seq, timeout, f"ack {seq}")


def stored_keys(site: Site, gate: str = "g1") -> list[tuple[int, str]]:
    return sorted((s, u) for g, _e, s, u in collected.event_keys(site.store) if g == gate)


def rejected(site: Site) -> list[tuple[str, str]]:
    return [(topic, reason) for topic, reason, _excerpt in collected.rejected(site.store)]


def test_batch_is_stored_and_acked_with_a_retained_ack(
    site: Site, collector: Collector, gate_client: mqtt.Client, acks: MqttWatcher, broker
) -> None:
    batch = [ev(1), ev(2), ev(3)]
    publish(gate_client, EVENTS, encode_batch("g1", batch))
    wait_acked(acks, 3)
    assert stored_keys(site) == sorted((e.seq, e.uuid) for e in batch)
    ack = json_of(acks.last(ACK))
    assert ack["gate"] == "g1" and ack["acked_seq"] == 3

    # retained: a gate that connects later (a restarted gate) learns it at once
    with MqttWatcher(broker.url, ACK) as late:
        m = late.wait_for(ACK, lambda m: True, 10, "retained ack")
        assert m.retain and Ack.decode(m.payload).acked_seq == 3


def test_resent_batch_is_stored_once(
    site: Site, collector: Collector, gate_client: mqtt.Client, acks: MqttWatcher
) -> None:
    batch = encode_batch("g1", [ev(1), ev(2)])
    publish(gate_client, EVENTS, batch)
    publish(gate_client, EVENTS, batch)
    wait_until(lambda: collector.stats["batches"] == 2, 10, lambda: f"stats {collector.stats}")
    wait_acked(acks, 2)
    assert collected.count_events(site.store) == 2
    assert collector.stats["inserted"] == 2 and collector.stats["duplicates"] == 2


def test_ack_is_the_highest_contiguous_seq(
    site: Site, collector: Collector, gate_client: mqtt.Client, acks: MqttWatcher
) -> None:
    publish(gate_client, EVENTS, encode_batch("g1", [ev(1), ev(2), ev(4), ev(5)]))
    wait_until(lambda: collected.count_events(site.store) == 4, 10, "4 events stored")
    wait_acked(acks, 2)
    publish(gate_client, EVENTS, encode_batch("g1", [ev(3)]))
    wait_acked(acks, 5)


def test_garbage_is_recorded_and_the_collector_keeps_working(
    site: Site, collector: Collector, gate_client: mqtt.Client, acks: MqttWatcher
) -> None:
    good = ev(1)
    wrong_types = ev(2).to_json() | {"seq": "two", "clock_trusted": "yes"}
    other_gate = ev(3, gate="g2")
    oversized = json.dumps(
        {"schema": 1, "gate": "g1", "events": [], "pad": "x" * (1024 * 1024 + 10)}
    ).encode()
    garbage: list[tuple[bytes, str]] = [
        (b"\x00\xffnot json at all", "not JSON"),
        (b'["a", "list"]', "must be an object"),
        (json.dumps({"schema": 99, "gate": "g1", "events": []}).encode(), "schema"),
        (json.dumps({"schema": 1, "events": "nope"}).encode(), "events"),
        (oversized, "exceeds"),
        (json.dumps({"schema": 1, "gate": "g1", "events": [wrong_types]}).encode(), "event 0"),
        (encode_batch("g1", [other_gate]), "sent on"),
    ]
    for payload, _ in garbage:
        publish(gate_client, EVENTS, payload)
    publish(gate_client, topics.status(SITE, "g1"), b"{broken status")
    publish(gate_client, EVENTS, encode_batch("g1", [good]))

    wait_acked(acks, 1)
    assert stored_keys(site) == [(1, good.uuid)]
    assert stored_keys(site, "g2") == [], "an event claiming another gate is never stored"
    wait_until(
        lambda: len(rejected(site)) == len(garbage) + 1,
        10,
        lambda: f"rejected rows: {rejected(site)}",
    )
    rows = rejected(site)
    for (payload, why), (topic, reason) in zip(garbage, rows, strict=False):
        assert topic == EVENTS
        assert why in reason, f"{payload[:40]!r}: reason {reason!r} should mention {why!r}"
    assert rows[-1][0] == topics.status(SITE, "g1")
    excerpt = max(len(x) for _t, _r, x in collected.rejected(site.store))
    assert excerpt <= 200, "an oversized message is not stored whole"

    # still working afterwards: the next batch is stored and acknowledged
    publish(gate_client, EVENTS, encode_batch("g1", [ev(2), ev(3)]))
    wait_acked(acks, 3)
    assert collected.count_events(site.store) == 3


def test_good_events_of_a_batch_with_a_bad_one_are_stored(
    site: Site, collector: Collector, gate_client: mqtt.Client, acks: MqttWatcher
) -> None:
    bad = ev(2).to_json() | {"kind": "teleport"}
    raw = json.dumps(
        {"schema": 1, "gate": "g1", "events": [ev(1).to_json(), bad, ev(3).to_json()]}
    ).encode()
    publish(gate_client, EVENTS, raw)
    wait_acked(acks, 1)  # seq 2 is missing: contiguous stops at 1
    wait_until(lambda: collected.count_events(site.store) == 2, 10, "events 1 and 3 stored")
    assert [s for s, _ in stored_keys(site)] == [1, 3]
    assert any("event 1" in r for _, r in rejected(site))


def test_status_messages_update_the_gates_table(
    site: Site, collector: Collector, gate_client: mqtt.Client
) -> None:
    publish(
        gate_client,
        topics.status(SITE, "g1"),
        json.dumps({"schema": 1, "gate": "g1", "state": "online", "backlog": 7}).encode(),
    )

    def status() -> dict[str, Any] | None:
        return next((g["status"] for g in collected.gates(site.store) if g["gate"] == "g1"), None)

    got = wait_until(status, 10, "status of g1 stored")
    assert got["state"] == "online" and got["backlog"] == 7


def test_a_status_is_shown_under_the_gate_its_topic_names(
    collector: Collector, gate_client: mqtt.Client
) -> None:
    """The ACL binds a gate's login to its own status topic; the payload may claim another."""
    with collector.feed.subscribe() as sub:
        publish(
            gate_client,
            topics.status(SITE, "g1"),
            json.dumps({"schema": 1, "gate": "g2", "state": "online"}).encode(),
        )
        item = wait_until(lambda: sub.get(0.2), 10, "no status on the live feed")
    assert (item["type"], item["gate"]) == ("status", "g1")


def test_documents_are_published_retained_and_verify(
    site: Site, collector: Collector, broker: MosquittoBroker
) -> None:
    keys = {k.key_id: k for k in site.trust_keys()}
    cfg_topic, reg_topic = topics.config(SITE), topics.register(SITE)
    with MqttWatcher(broker.url, cfg_topic, reg_topic) as first:
        for topic in (cfg_topic, reg_topic):
            first.wait_for(topic, lambda m: True, 10, "a document")
    # a subscriber arriving later (a gate starting) gets both as retained messages
    with MqttWatcher(broker.url, cfg_topic, reg_topic) as w:
        for kind, topic in (("config", cfg_topic), ("register", reg_topic)):
            m = w.wait_for(topic, lambda m: True, 10, f"{kind} document")
            assert m.retain
            doc = decode_document(m.payload, kind=kind, site=SITE, trust_keys=keys)
            assert m.payload == site.bundle_path(f"{kind}.json").read_bytes()
            assert doc.version >= 1
        cfg = decode_document(w.last(cfg_topic).payload, kind="config", site=SITE, trust_keys=keys)
        assert cfg.key_id == 1 and cfg.chain[-1].body["keys"][0]["key_id"] == 1  # root 1


def test_a_pass_issued_after_start_is_republished(
    site: Site, collector: Collector, broker: MosquittoBroker
) -> None:
    keys = {k.key_id: k for k in site.trust_keys()}
    reg_topic = topics.register(SITE)

    def version(m) -> int:
        return decode_document(m.payload, kind="register", site=SITE, trust_keys=keys).version

    with MqttWatcher(broker.url, reg_topic) as w:
        first = version(w.wait_for(reg_topic, lambda m: True, 10, "register document"))
        issued = site.issue_pass("5-1-501", "钱七", room="5-1-501")
        m = w.wait_for(reg_topic, lambda m: version(m) > first, 15, "a newer register")
        doc = decode_document(m.payload, kind="register", site=SITE, trust_keys=keys)
        assert issued.pass_id in read_snapshot(doc).passes
        site.revoke_pass(issued.pass_id, "lost card")
        m = w.wait_for(reg_topic, lambda m: version(m) > doc.version, 15, "register after revoke")
        revoked = decode_document(m.payload, kind="register", site=SITE, trust_keys=keys)
        assert read_snapshot(revoked).revoked == {issued.pass_id: "lost card"}


def test_a_delta_is_published_after_its_snapshot_and_cleared_by_the_next_one(
    site: Site, collector: Collector, broker: MosquittoBroker
) -> None:
    """One pass issued on a large register goes out as a small retained delta; a new snapshot
    empties the delta topic (an empty retained message), so a gate that connects later gets
    the snapshot and no stale delta."""
    collector.document_check_s = 0.1
    site.registry.apply_import(
        [
            RegisterRow(i + 2, f"4-1-{i}", "4", "1", str(i), "g", f"住户{i}", "1", "resident")
            for i in range(400)
        ]
    )
    site.issue_all()
    reg_topic, delta_topic = topics.register(SITE), topics.register_delta(SITE)
    snapshot = site.published_versions()["register"]
    with MqttWatcher(broker.url, reg_topic, delta_topic) as gate:
        gate.wait_for(reg_topic, lambda m: json_of(m)["version"] == snapshot, 15, "snapshot")
        site.issue_pass("9-9-901", "新住户")
        delta = gate.wait_for(delta_topic, lambda m: m.payload != b"", 15, "the delta")
        assert json_of(delta)["body"]["base"] == snapshot and len(delta.payload) < 1000
        assert delta.payload == site.bundle_path(DELTA_FILE).read_bytes()
        cut = site.publish_register(snapshot=True)
        gate.wait_for(reg_topic, lambda m: json_of(m)["version"] == cut.version, 15, "snapshot")
        # After the delta (the collector clears the topic when it starts, too).
        wait_until(
            lambda: gate.last(delta_topic).payload == b"",  # type: ignore[union-attr]
            15,
            "the delta topic emptied",
        )
    # The delta topic first: a retained delta would be delivered before the snapshot.
    with MqttWatcher(broker.url, delta_topic, reg_topic) as late:
        late.wait_for(reg_topic, lambda m: m.retain, 15, "the retained snapshot")
        assert late.on(delta_topic) == []


def test_a_tampered_document_does_not_verify(site: Site) -> None:
    """Anyone can publish a retained message; only a signed document verifies."""
    keys = {k.key_id: k for k in site.trust_keys()}
    raw = json.loads(site.bundle_path("register.json").read_bytes())
    raw["version"] += 100
    raw["body"]["passes"] += 1
    with pytest.raises(Exception, match="signature"):
        decode_document(json.dumps(raw).encode(), kind="register", site=SITE, trust_keys=keys)


def test_collector_reconnects_after_a_broker_restart(
    site: Site, collector: Collector, broker: MosquittoBroker
) -> None:
    broker.stop()
    wait_until(lambda: not collector.connected.is_set(), 15, "collector noticed the broker down")
    broker.start()
    wait_until(collector.connected.is_set, 30, "collector reconnected")
    # documents are republished (the broker kept no retained messages: persistence off)
    with MqttWatcher(broker.url, topics.register(SITE)) as w:
        w.wait_for(topics.register(SITE), lambda m: True, 15, "register after restart")
        client = mqtt_client(broker.url)
        try:
            with MqttWatcher(broker.url, ACK) as acks:
                publish(client, EVENTS, encode_batch("g1", [ev(1)]))
                wait_acked(acks, 1)
        finally:
            client.disconnect()
            client.loop_stop()


def test_passes_issued_in_the_collector_process_while_events_stream_in(
    site: Site, collector: Collector, gate_client: mqtt.Client, acks: MqttWatcher
) -> None:
    """Site and Collector share one SQLite connection in one process (`menwei server run`
    with a dashboard, the demo): issuing passes while the collector commits batches must
    neither fail nor disturb the collector's transactions."""
    stop = threading.Event()
    sent: list[int] = []

    def stream() -> None:
        seq = 0
        while not stop.is_set() and seq < 1500:
            batch = [ev(seq + i + 1) for i in range(20)]
            publish(gate_client, EVENTS, encode_batch("g1", batch))
            seq += 20
            sent.append(seq)

    t = threading.Thread(target=stream)
    t.start()
    errors: list[str] = []
    try:
        for i in range(80):
            try:
                site.issue_pass(f"8-1-{i}", "孙八")
            except Exception as exc:  # every failure is the finding
                errors.append(f"{type(exc).__name__}: {exc}")
    finally:
        stop.set()
        t.join()
    assert not errors, errors[:3]
    assert len(site.register().passes) == 80
    last = sent[-1]
    wait_acked(acks, last, timeout=30)
    assert collected.count_events(site.store) == last
    assert collector.stats["inserted"] == last, collector.stats


def test_an_event_time_out_of_range_is_rejected_and_the_batch_is_still_checked(
    site: Site, collector: Collector, gate_client: mqtt.Client, acks: MqttWatcher
) -> None:
    """A gate credential publishing year 9999 (which overflows every local-time conversion)
    loses that event to rejected_messages; the good event of the batch is stored, acked and
    still checked for conflicts (a pass used after its revocation)."""
    issued = site.issue_pass("1-1-101", "张三丰")
    site.revoke_pass(issued.pass_id, "lost")
    revoked = collected.revoked_at(site.store, issued.pass_id)
    assert revoked is not None
    used = ev(1, pass_id=issued.pass_id, at=(revoked + timedelta(minutes=1)).isoformat())
    far = ev(2, pass_id=issued.pass_id, at="9999-12-31T20:00:00+00:00")
    publish(gate_client, EVENTS, encode_batch("g1", [used, far]))

    wait_acked(acks, 1)
    assert stored_keys(site) == [(1, used.uuid)]
    wait_until(lambda: rejected(site), 10, "the far event recorded")
    [(topic, reason)] = rejected(site)
    assert topic == EVENTS
    assert "event 1" in reason and "'at'" in reason and "2000..2100" in reason
    conflicts = wait_until(lambda: collected.conflicts(site.store), 10, "the conflict check ran")
    assert [(c["kind"], c["seq"]) for c in conflicts] == [("revoked_pass_used", 1)]


def test_a_status_of_the_wrong_shape_is_rejected_naming_the_field(
    site: Site, collector: Collector, gate_client: mqtt.Client
) -> None:
    status_topic = topics.status(SITE, "g1")
    good = {"schema": 1, "gate": "g1", "state": "online", "backlog": 3}
    bad = [
        ("versions", "x"),
        ("clock", [1]),
        ("camera", "ok"),
        ("backlog", "7"),
        ("last_seq", -1),
        ("acked_seq", 1.5),
        ("data_age_h", "old"),
        ("data_as_of", "9999-12-31T20:00:00+00:00"),
        ("max_data_age_h", 0),
        ("freshness", [1]),
        ("storage", "full"),
    ]
    publish(gate_client, status_topic, json.dumps(good).encode(), retain=True)
    for key, value in bad:
        publish(gate_client, status_topic, json.dumps(good | {key: value}).encode(), retain=True)
    publish(gate_client, topics.status(SITE, "g2"), json.dumps(good | {"gate": "g2"}).encode())

    def seen(gate: str) -> dict[str, Any] | None:
        return next((g["status"] for g in collected.gates(site.store) if g["gate"] == gate), None)

    wait_until(lambda: seen("g2"), 10, "status of g2 stored")  # after every bad one
    wait_until(lambda: len(rejected(site)) == len(bad), 10, lambda: f"{rejected(site)}")
    for (key, _), (topic, reason) in zip(bad, rejected(site), strict=True):
        assert topic == status_topic and f"field {key!r} must be" in reason, reason
    assert seen("g1") == good  # the last status of the right shape stays


# --- the register re-signed daily; documents too large for the gates or the broker -----------


def test_the_register_is_re_signed_when_the_day_rolls(tmp_path: Path, broker: MosquittoBroker):
    """Passes that ended drop out of the register without any edit: the collector re-signs it
    once a day (site local date), so the document does not grow with every pass ever issued."""
    start = datetime.now(UTC).replace(microsecond=0)
    clock = [start]
    Site.init(tmp_path / "server", SITE).close()
    with Site(tmp_path / "server", clock=lambda: clock[0]) as site:
        keys = {k.key_id: k for k in site.trust_keys()}
        stays = site.issue_pass("1-1-101", "张三丰")
        ends = site.issue_pass(
            "1-1-102", "李四", valid_from=start - timedelta(days=1), valid_until=start
        )
        reg_topic = topics.register(SITE)

        def body(m: Message) -> dict[str, Any]:
            doc = decode_document(m.payload, kind="register", site=SITE, trust_keys=keys)
            return read_snapshot(doc).to_json()

        with (
            Collector(site, parse_broker(broker.url)) as collector,
            MqttWatcher(broker.url, reg_topic) as gate,
        ):
            collector.document_check_s = 0.1
            collector.start()
            first = gate.wait_for(reg_topic, lambda m: True, 15, "the register")
            assert [p["pass_id"] for p in body(first)["passes"]] == [stays.pass_id, ends.pass_id]

            clock[0] = start + timedelta(days=2)  # two days later, nothing edited

            later = gate.wait_for(
                reg_topic, lambda m: len(body(m)["passes"]) == 1, 15, "the register without it"
            )
            assert [p["pass_id"] for p in body(later)["passes"]] == [stays.pass_id]


def small_broker(workdir: Path, max_packet: int) -> tuple[str, subprocess.Popen[bytes]]:
    """A Mosquitto whose max_packet_size is `max_packet` (announced to MQTT v5 clients)."""
    port = free_port()
    conf = workdir / "mosquitto.conf"
    conf.write_text(
        f"listener {port} 127.0.0.1\nallow_anonymous true\npersistence false\n"
        f"max_packet_size {max_packet}\nlog_dest stderr\n"
    )
    out = open(workdir / "mosquitto.log", "ab")  # noqa: SIM115 - closed by the test's finally
    try:
        return f"mqtt://127.0.0.1:{port}", start_mosquitto(conf, port, out)
    finally:
        out.close()  # the broker process holds its own descriptor


def test_the_collector_publishes_no_document_over_the_brokers_packet_size(
    tmp_path: Path, site: Site, caplog: pytest.LogCaptureFixture
):
    """A broker announcing 4096 bytes: a register of 40 passes with rooms that do not compress
    does not fit. The collector does not publish it (the broker would close its connection,
    and paho would resend it at every reconnect), logs one error, raises one alert, and keeps
    doing its job."""
    for i in range(40):
        room = base64.b64encode(os.urandom(150)).decode()
        site.issue_pass(f"2-1-{i:03d}", "孙八", room=room, publish=False)
    site.publish_register()
    register = site.bundle_path("register.json").read_bytes()
    assert len(register) > 4096 > len(site.bundle_path("config.json").read_bytes())
    url, proc = small_broker(tmp_path, 4096)
    try:
        reg_topic, cfg_topic = topics.register(SITE), topics.config(SITE)
        with (
            caplog.at_level(logging.ERROR, logger="menwei.collector"),
            MqttWatcher(url, cfg_topic, reg_topic, ACK) as gate,
            Collector(site, parse_broker(url)) as collector,
        ):
            collector.document_check_s = 0.1
            collector.start()
            wait_until(collector.connected.is_set, 15, "collector did not connect")
            gate.wait_for(cfg_topic, lambda m: True, 15, "the config, which fits")
            wait_until(
                lambda: site.alerts.open_counts().get("document_too_large") == 1, 15, "alert"
            )
            # Its bound is what the broker takes: the broker's verdict on payloads around it
            # (on a topic of its own: the bound depends on the topic's length).
            assert collector.document_bound(reg_topic) == max_payload(reg_topic, 4096)
            bound = collector.document_bound("menwei-probe")
            for size, verdict in ((bound, "accepted"), (bound + 8, "refused")):
                with MqttWatcher(url) as probe:
                    reason = probe.publish("menwei-probe", b"x" * size)
                assert ("accepted" if reason is not None and reason < 0x80 else "refused") == (
                    verdict
                ), size
            # Still at work: a batch is stored and acked, over the same connection.
            client = mqtt_client(url)
            try:
                publish(client, EVENTS, encode_batch("g1", [ev(1)]))
                wait_acked(gate, 1)
            finally:
                client.disconnect()
                client.loop_stop()
            assert collector.connected.is_set()
            assert gate.on(reg_topic) == []
        errors = [r for r in caplog.records if "document_too_large" in r.getMessage()]
        assert len(errors) == 1, [r.getMessage() for r in errors]
        (alert,) = [a for a in site.alerts.list() if a.kind == "document_too_large"]
        assert alert.priority == "high" and f"{len(register)} bytes" in alert.detail
    finally:
        stop_mosquitto(proc)


def test_queued_batches_are_stored_together_and_acked_once_per_gate(
    site: Site, collector: Collector, broker: MosquittoBroker
) -> None:
    """What waits in the queue is stored in one transaction: each gate then gets one ack,
    of its last batch, and the accepted passages go out in one relayed message."""
    other = topics.events(SITE, "g2")
    passages = topics.passages(SITE)
    first, second = ev(1), ev(2)
    with MqttWatcher(broker.url, ACK, topics.ack(SITE, "g2"), passages) as w:
        collector.handle_many(
            [
                (EVENTS, encode_batch("g1", [first, second])),
                (other, encode_batch("g2", [ev(1, gate="g2", pass_id=2)])),
                (EVENTS, b"not json"),
                (EVENTS, encode_batch("g1", [ev(3), second])),  # one resent
            ]
        )
        relayed = w.wait_for(passages, lambda m: True, 10, "relayed passages")
        assert [Ack.decode(m.payload).acked_seq for m in w.on(ACK)] == [3]
        assert [Ack.decode(m.payload).acked_seq for m in w.on(topics.ack(SITE, "g2"))] == [1]
        assert len(w.on(passages)) == 1
    assert [(p["gate"], p["pass_id"]) for p in json_of(relayed)["passages"]] == [
        ("g1", 1),
        ("g1", 1),
        ("g2", 2),
        ("g1", 1),
    ]
    assert (collector.stats["batches"], collector.stats["inserted"]) == (3, 4)
    assert (collector.stats["duplicates"], collector.stats["rejected"]) == (1, 1)
    [(topic, reason)] = rejected(site)
    assert topic == EVENTS and "not JSON" in reason


def test_a_conflict_storm_logs_one_warning_per_batch(
    site: Site, collector: Collector, caplog: pytest.LogCaptureFixture
) -> None:
    """Twenty members out at once through two gates: twenty conflicts recorded, one line."""
    collector.handle(EVENTS, encode_batch("g1", [ev(1, pass_id=100, household="9-9-909")]))
    storm = [ev(s, gate="g2", pass_id=s, household="9-9-909") for s in range(1, 21)]
    with caplog.at_level(logging.INFO, logger="menwei.collector"):
        collector.handle(topics.events(SITE, "g2"), encode_batch("g2", storm))
    assert collector.stats["conflicts"] >= 20
    lines = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(lines) == 1 and "conflicts in a batch of g2" in lines[0], lines
