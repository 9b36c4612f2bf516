"""MQTT sync of one gate: events up with end-to-end acknowledgement, documents down.

The outbox in SQLite is the queue (paho's in-memory session is not): the
sender publishes batches of unacknowledged events at QoS 1 while fewer than
`window` are in flight, and goes back to the last acknowledged seq when the
collector's acknowledgement has not advanced for `resend_after_s` or after a
reconnect. A broker PUBACK proves nothing about the collector; only the
collector's ack (highest contiguous committed seq) clears the outbox.

paho callbacks run on paho's network thread: they only queue what arrived;
the sender thread does the work (DB writes, verification, publishing).

After each (re)connection the retained documents arrive together; the sender waits
for them (up to SETTLE_S) and hands them on signed-under-the-newest-root first, so a
document carrying the chain to a root that retires a key is applied before one that
key signed (it is then refused, never applied and withdrawn a moment later).
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

from edge.storage_fault import StorageFault
from edge.store import EpochMove, GateStore
from protocol import topics
from protocol.broker import BrokerAddress
from protocol.broker_tls import LinkTrouble, TlsFiles, client_context
from protocol.documents import claimed_root
from protocol.errors import MessageError
from protocol.events import Ack, encode_batch, encode_status
from protocol.register_documents import DELTA

log = logging.getLogger("menwei.gate.sync")

SETTLE_S = 3.0
"""After subscribing, how long the gate waits for the retained documents of every document
topic before applying those that came (seconds)."""
ALWAYS_RETAINED = frozenset({"config", "register", "freshness"})
"""The document kinds a site always has retained: the settle window ends when all came (a
register delta is retained only between a change and the next snapshot)."""
REPLACED = frozenset({"register", DELTA, "freshness"})
"""Kinds of which only the newest queued counts: a statement or a cumulative delta replaces
the one before it, a snapshot the one before it."""


@dataclass(frozen=True)
class SyncSettings:
    site: str
    gate: str
    broker: BrokerAddress
    username: str | None = None
    password: str | None = None
    keepalive_s: int = 30
    batch_size: int = 50
    window: int = 500
    resend_after_s: float = 10.0
    status_interval_s: float = 15.0
    tls: TlsFiles = field(default_factory=TlsFiles)
    """[mqtt] ca_file, cert_file, key_file: used with an mqtts:// broker."""


class GateSync:
    """Owns the MQTT connection of a gate. `start()` returns at once; it connects in the
    background and keeps reconnecting. `status` supplies the retained status fields."""

    def __init__(
        self,
        settings: SyncSettings,
        store: GateStore,
        *,
        on_document: Callable[[str, bytes], None],
        on_passage: Callable[[bytes], None] | None = None,
        on_history_lost: Callable[[int], EpochMove] | None = None,
        status: Callable[[], dict[str, Any]],
    ) -> None:
        """`on_history_lost(collector_seq)` moves the store to a new epoch and logs the
        alert (GateDaemon.on_history_lost); without it the store moves with no alert. Raises
        BrokerTlsError when the TLS files of an mqtts:// broker cannot be used."""
        self.s = settings
        self.store = store
        self._on_document = on_document
        self._on_passage = on_passage
        self._on_history_lost = on_history_lost or (lambda n: store.start_new_epoch(n)[0])
        self._status = status
        self._inbox: queue.Queue[tuple[str, bytes]] = queue.Queue()
        self._documents = {
            topics.config(settings.site): "config",
            topics.register(settings.site): "register",
            topics.register_delta(settings.site): DELTA,
            topics.freshness(settings.site): "freshness",
        }
        # Documents waiting for the others of a new connection: (kind, payload), in order.
        self._arrived: list[tuple[str, bytes]] = []
        self._settle_until = 0.0  # monotonic; 0: not settling
        self._stop = threading.Event()
        self._wake = threading.Event()
        self.connected = False
        self._reconnected = False
        self._announce = False
        self.sent_up_to = 0
        try:
            self.acked = store.acked_seq()
        except StorageFault:  # a store at fault at start: read again once the ack comes
            self.acked = 0
        self._last_progress = time.monotonic()
        self._low_ack: tuple[int, float] | None = None  # (ack, first seen) below `acked`
        self._probed = False  # the event at `acked` was sent again since the low ack came
        self.stats = {
            "batches": 0,
            "resends": 0,
            "publish_errors": 0,
            "bad_messages": 0,
            "foreign_acks": 0,
            "requeued": 0,
            "probes": 0,
            "statements_skipped": 0,
            "documents_skipped": 0,
            "history_lost": 0,
        }
        self._thread = threading.Thread(target=self._run, name="gate-sync", daemon=True)
        self.client = mqtt.Client(
            CallbackAPIVersion.VERSION2,
            client_id=f"menwei-gate-{settings.site}-{settings.gate}",
            protocol=mqtt.MQTTv5,
        )
        if settings.username:
            self.client.username_pw_set(settings.username, settings.password)
        self.trouble = LinkTrouble(log, settings.broker.host, settings.broker.port)
        self.trouble.attach(self.client)
        if settings.broker.tls:
            self.client.tls_set_context(client_context(settings.tls))
        self.client.will_set(
            topics.status(settings.site, settings.gate),
            encode_status({"gate": settings.gate, "site": settings.site, "state": "offline"}),
            qos=1,
            retain=True,
        )
        self.client.reconnect_delay_set(min_delay=1, max_delay=30)
        self.client.on_connect = self._on_connect
        self.client.on_disconnect = self._on_disconnect
        self.client.on_message = self._on_message

    # --- lifecycle ---------------------------------------------------------------------

    def start(self) -> None:
        b = self.s.broker
        # A persistent session: passages relayed while this gate is offline wait at the
        # broker for a day (its counters catch up); events never depend on it.
        props = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
        props.SessionExpiryInterval = 24 * 3600
        self.client.connect_async(
            b.host, b.port, keepalive=self.s.keepalive_s, clean_start=False, properties=props
        )
        self.client.loop_start()
        self._thread.start()

    def close(self) -> None:
        """Say offline (retained), disconnect cleanly, stop the threads. Idempotent."""
        if self._stop.is_set():
            return
        self._stop.set()
        self._wake.set()
        if self._thread.is_alive():
            self._thread.join(timeout=5)
        if self.connected:
            info = self.client.publish(
                topics.status(self.s.site, self.s.gate),
                encode_status(self._status() | {"state": "offline"}),
                qos=1,
                retain=True,
            )
            if info.rc == MQTTErrorCode.MQTT_ERR_SUCCESS:
                info.wait_for_publish(timeout=2)
        self.client.disconnect()
        self.client.loop_stop()

    def notify(self) -> None:
        """A new event is in the outbox: send soon."""
        self._wake.set()

    # --- paho callbacks (network thread: keep tiny) -------------------------------------

    def _on_connect(
        self, client: mqtt.Client, _u: object, _f: object, rc: ReasonCode, _p: Properties | None
    ) -> None:
        if rc.is_failure:
            log.warning("broker refused connection: %s", rc)
            return
        subs = [
            (topics.ack(self.s.site, self.s.gate), 1),
            (topics.config(self.s.site), 1),
            (topics.register(self.s.site), 1),
            (topics.register_delta(self.s.site), 1),
            (topics.freshness(self.s.site), 1),
            (topics.passages(self.s.site), 1),
        ]
        result, _mid = client.subscribe(subs)
        if result != MQTTErrorCode.MQTT_ERR_SUCCESS:
            log.warning("subscribe failed: %s", result)
            return
        self.trouble.connected()
        self._settle_until = time.monotonic() + SETTLE_S
        self.connected = True
        self._reconnected = True
        self._announce = True
        self._wake.set()

    def _on_disconnect(
        self, _c: mqtt.Client, _u: object, _f: object, rc: ReasonCode, _p: Properties | None
    ) -> None:
        self.connected = False
        if not self._stop.is_set():
            log.warning("disconnected from broker: %s", rc)

    def _on_message(self, _c: mqtt.Client, _u: object, msg: mqtt.MQTTMessage) -> None:
        self._inbox.put((msg.topic, bytes(msg.payload)))
        self._wake.set()

    # --- the sender thread ---------------------------------------------------------------

    def _run(self) -> None:
        next_status = 0.0
        while not self._stop.is_set():
            self._wake.wait(timeout=0.5)
            self._wake.clear()
            try:
                self._drain_inbox()
                if not self.connected:
                    continue
                if self._announce:
                    # A new session: say online now. The broker may hold our Last Will
                    # ("offline", retained) or nothing at all after its own restart.
                    self._announce = False
                    next_status = 0.0
                self._send()
                if time.monotonic() >= next_status:
                    self.publish_status()
                    next_status = time.monotonic() + self.s.status_interval_s
            except StorageFault:
                time.sleep(1.0)  # the daemon shows the fault once and retries the store
            except Exception:  # the sync thread must survive anything one message does
                log.exception("sync loop error")
                time.sleep(0.5)

    def _drain_inbox(self) -> None:
        messages = []
        while True:
            try:
                messages.append(self._inbox.get_nowait())
            except queue.Empty:
                break
        for topic, payload in messages:
            kind = self._documents.get(topic)
            if kind is not None:
                # A gate back from a long absence gets every statement (one per
                # freshness_interval_s), register snapshot and delta its session queued: only
                # the newest of each counts (a statement or a cumulative delta replaces the one
                # before it, a snapshot everything before it), so only it is verified.
                if kind in REPLACED:
                    older = [a for a in self._arrived if a[0] == kind]
                    skipped = "statements" if kind == "freshness" else "documents"
                    self.stats[f"{skipped}_skipped"] += len(older)
                    self._arrived = [a for a in self._arrived if a[0] != kind]
                self._arrived.append((kind, payload))
            elif topic == topics.ack(self.s.site, self.s.gate):
                self._handle_ack(payload)
            elif topic == topics.passages(self.s.site) and self._on_passage is not None:
                self._on_passage(payload)
        self._hand_on_documents()

    def _hand_on_documents(self) -> None:
        """The documents that arrived, newest root first, once each topic of ALWAYS_RETAINED
        delivered after a new connection (or SETTLE_S passed); at once outside that window."""
        if not self._arrived:
            return
        if self._settle_until:
            kinds = {kind for kind, _ in self._arrived}
            if not kinds >= ALWAYS_RETAINED and time.monotonic() < self._settle_until:
                return
            self._settle_until = 0.0
        arrived, self._arrived = self._arrived, []
        arrived.sort(key=lambda item: claimed_root(item[1]), reverse=True)  # stable
        for kind, payload in arrived:
            if payload:  # empty: a retained document cleared (a delta a snapshot replaced)
                self._on_document(kind, payload)

    def _handle_ack(self, payload: bytes) -> None:
        try:
            ack = Ack.decode(payload)
        except MessageError as exc:
            self.stats["bad_messages"] += 1
            log.warning("ignored bad ack: %s", exc)
            return
        if ack.epoch != self.store.epoch:
            # The retained ack of this gate's previous database (a replaced SD card): its
            # numbers are not ours. The collector acks our epoch once our events arrive.
            log.info("ignored the ack of another database epoch (%r)", ack.epoch)
            self.stats["foreign_acks"] += 1
            return
        last = self.store.last_seq()
        mine = self.store.uuid_at(ack.acked_seq) if ack.uuid is not None else None
        if ack.acked_seq > last or (mine is not None and mine != ack.uuid):
            # The collector holds seqs of our epoch that this log does not (beyond our last
            # seq, or another event at the acknowledged one): committed history was lost
            # here. Never acknowledge by these numbers (it would drop our events) and never
            # use them again: move to a new epoch.
            self._move_epoch(ack.acked_seq, last)
            return
        if ack.acked_seq > self.acked:
            self.store.mark_acked(ack.acked_seq)
            self.acked = ack.acked_seq
            self._last_progress = time.monotonic()
        if ack.acked_seq >= self.acked:
            self._low_ack = None
            self._probed = False
        elif self._low_ack is None:
            # Less than the collector acknowledged before, and our outbox keeps the highest
            # ack of the epoch. A stale ack queued in our session is followed at once by newer
            # ones. With several collectors the later of two acks may be the lower (each
            # publishes after its own commit; the retained one is the last the broker got):
            # one probe brings the current one. One that stays low after that means the
            # collector's store lost events (restored from a backup): `_send` then queues
            # them again (_requeue_if_collector_lost_events).
            self._low_ack = (ack.acked_seq, time.monotonic())

    def _move_epoch(self, collector_seq: int, last: int) -> None:
        move = self._on_history_lost(collector_seq)
        log.error(
            "history lost: the collector holds epoch %r up to seq %d, this gate %d (confirmed"
            " %d); %d unconfirmed events go again as epoch %r seq 1..%d. Check the storage.",
            move.lost_epoch,
            collector_seq,
            last,
            move.confirmed_seq,
            move.moved,
            move.epoch,
            move.moved,
        )
        self.stats["history_lost"] += 1
        self.acked = self.sent_up_to = 0
        self._low_ack = None
        self._probed = False
        self._last_progress = time.monotonic()
        self._wake.set()

    def _requeue_if_collector_lost_events(self, now: float) -> None:
        """An ack below ours for resend_after_s: first send the event at our ack once more
        (a collector holding everything up to it acknowledges it again: the low one was an
        older ack that reached the broker last); still low resend_after_s later: queue every
        event after the low ack again (the collector's store lost them)."""
        low = self._low_ack
        if low is None or now - low[1] <= self.s.resend_after_s:
            return
        if not self._probed:
            self._probed = True
            event = self.store.event_at(self.acked)
            if event is not None:
                self.stats["probes"] += 1
                log.info("ack %d below ours (%d): that event sent again", low[0], self.acked)
                self.client.publish(
                    topics.events(self.s.site, self.s.gate),
                    encode_batch(self.s.gate, [event]),
                    qos=1,
                )
                self._low_ack = (low[0], now)
                return
        self._low_ack = None
        self._probed = False
        requeued = self.store.requeue_after(low[0])
        log.warning(
            "collector stays at ack %d below %d: %d events queued again",
            low[0],
            self.acked,
            requeued,
        )
        self.stats["requeued"] += requeued
        self.acked = self.sent_up_to = low[0]
        self._last_progress = now

    def _send(self) -> None:
        now = time.monotonic()
        self._requeue_if_collector_lost_events(now)
        if self._reconnected:
            self._reconnected = False
            self.sent_up_to = self.acked  # a new connection: everything unacked goes again
            self._last_progress = now
        if self.sent_up_to > self.acked and now - self._last_progress > self.s.resend_after_s:
            log.info(
                "no ack progress for %.0fs: resending from %d", self.s.resend_after_s, self.acked
            )
            self.stats["resends"] += 1
            self.sent_up_to = self.acked
            self._last_progress = now
        self.sent_up_to = max(self.sent_up_to, self.acked)
        while self.connected and self.sent_up_to - self.acked < self.s.window:
            room = self.s.window - (self.sent_up_to - self.acked)
            events = self.store.unacked(self.sent_up_to, min(self.s.batch_size, room))
            if not events:
                return
            info = self.client.publish(
                topics.events(self.s.site, self.s.gate),
                encode_batch(self.s.gate, events),
                qos=1,
            )
            if info.rc != MQTTErrorCode.MQTT_ERR_SUCCESS:
                self.stats["publish_errors"] += 1
                log.warning("publish failed (%s); will retry", mqtt.error_string(info.rc))
                return
            if self.sent_up_to == self.acked:
                self._last_progress = now  # the resend timer runs from the first unacked send
            self.sent_up_to = events[-1].seq
            self.stats["batches"] += 1

    def publish_status(self) -> None:
        info = self.client.publish(
            topics.status(self.s.site, self.s.gate),
            encode_status(self._status() | {"state": "online"}),
            qos=1,
            retain=True,
        )
        if info.rc != MQTTErrorCode.MQTT_ERR_SUCCESS:
            log.warning("status publish failed: %s", mqtt.error_string(info.rc))
