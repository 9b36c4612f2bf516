"""The collector: events from gates into the store, acknowledgements back, documents out.

paho callbacks only queue what arrived (up to INBOX_BYTES waiting: then the
broker keeps the rest); one worker thread takes what waits
(up to GROUP_MESSAGES), parses it, stores its batches with their conflicts and
alerts in one transaction (set-based statements per batch, server/storage/
events.py; one fsync per group), and then publishes one acknowledgement per
gate (retained, so a restarted gate learns it at once): the highest
contiguous committed seq of that gate. Accepted passages are relayed to the
gates in batches. A broken message is recorded in `rejected_messages` and
never stops the collector; nothing here logs once per event. New bundle
documents (a pass issued from the command line) are noticed and published on
the retained config, register and register delta topics, and a signed freshness statement naming
their versions is re-issued every `[server] freshness_interval_s`
(protocol.freshness). Once a day (site local date) the register is re-signed
when passes dropped out of it (Site.register). Several collectors may share one
store and, with `[mqtt] shared_group`, the event stream: each periodic job (gate
health, freshness, register refresh, retention) is then done by one of them per
period (server/periodic.py). A document larger than a gate
accepts or the broker announces it takes is not published: one error, one
`document_too_large` alert, and the collector goes on (publishing it would get
the connection closed, and paho resends it after every reconnect). The collector
also reads the retained document topics: a document there that it did not publish is
replaced by its own, and a foreign one (a retired or unknown key, a forged signature,
an inflated version) raises a `foreign_document` alert (server/document_watch.py).
"""

from __future__ import annotations

import itertools
import json
import logging
import os
import queue
import socket
import ssl
import threading
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import NamedTuple

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

from protocol import topics
from protocol.broker import BrokerAddress
from protocol.broker_tls import LinkTrouble, client_context
from protocol.documents import CONFIG_FILE, FRESHNESS_FILE, MAX_DOCUMENT_BYTES, REGISTER_FILE
from protocol.errors import MessageError, ProtocolError
from protocol.events import (
    MAX_PASSAGES,
    Ack,
    DecodedBatch,
    Event,
    Passage,
    decode_batch,
    decode_status,
    encode_passages,
)
from protocol.policy import Policy
from protocol.register_documents import DELTA, DELTA_FILE
from server.alerts import HISTORY_LOST, Alert
from server.config import MqttSection
from server.conflicts import Conflict, find_conflicts
from server.document_watch import DocumentWatch, Finding
from server.gate_health import CHECK_INTERVAL_S, GateHealth
from server.live import LiveFeed
from server.periodic import Job, Jobs, every, next_midnight
from server.site import DocumentTooLarge, Site
from server.storage import StoreUnavailable
from server.storage import events as events_db
from server.storage import gates as gates_db
from server.storage.engine import lock_all
from server.storage.events import InsertResult
from server.storage.replay import households_of
from server.storage.times import utcnow
from server.visitors import purge_visitors
from server.webhooks import WebhookSender, notice_for

log = logging.getLogger("menwei.collector")
PURGE_INTERVAL_S = 24 * 3600.0
SESSION_EXPIRY_S = 24 * 3600
"""How long the broker keeps a lone collector's session (and queues its batches) while it is
down. A collector of a shared group keeps none (`Collector.start`)."""
GROUP_MESSAGES = 100
"""At most this many queued messages are stored in one transaction…"""
GROUP_BYTES = 4 * 1024 * 1024
"""… and at most about this many bytes of them."""
ABSENT = -1.0
"""The mtime noted for a bundle file that is gone (its retained topic was cleared)."""
INBOX_BYTES = 64 * 1024 * 1024
"""At most about this many bytes of received messages wait for the worker; beyond it paho's
network thread waits for room before it takes the next (and acknowledges it to the broker),
so the broker keeps the rest: a gate that floods its topic, or a broker delivering the
queue it kept while a lone collector was down, cannot grow the collector's memory without
bound (it grew by ~50 MB/s under one gate's 1 MB batches)."""


@dataclass(frozen=True)
class _Stored:
    """One batch as its group's transaction stored it."""

    gate: str
    result: InsertResult
    reset: bool  # the batch began a new epoch of a replaced database (gate_reset)
    conflicts: list[Conflict]
    alerts: list[Alert]


def tls_context(cfg: MqttSection, directory: Path) -> ssl.SSLContext:
    """The client TLS context the collector links with: [mqtt] ca_file, cert_file and key_file
    of server directory `directory`, loaded. Raises BrokerTlsError, one line naming the file
    (`server run` and `server doctor` print the same line)."""
    return client_context(cfg.tls_files(directory))


class Collector:
    def __init__(
        self,
        site: Site,
        broker: BrokerAddress,
        *,
        client_id: str | None = None,
        feed: LiveFeed | None = None,
        settings: MqttSection | None = None,
    ) -> None:
        """`settings`: the broker login and shared group of this process (default: server.toml's
        [mqtt]; `server run` overrides it from its options; TLS files relative to the server
        directory). `client_id` default: `collector_client_id`. Raises BrokerTlsError when the
        TLS files of an mqtts:// broker cannot be used."""
        self.site = site
        self.mqtt = settings if settings is not None else site.config.mqtt
        self.store = site.store
        self.alerts = site.alerts
        self.feed = feed if feed is not None else LiveFeed()
        self.broker = broker
        self.connected = threading.Event()
        self._inbox: queue.Queue[tuple[str, bytes]] = queue.Queue()
        self.inbox_bytes = INBOX_BYTES
        self._waiting_bytes = 0  # payload bytes in _inbox
        self._room = threading.Condition()  # notified when the worker takes from _inbox
        self._stop = threading.Event()
        # bundle file → mtime last published (ABSENT: its topic was cleared)
        self._published: dict[str, float] = {}
        # bundle file → (mtime, bound) of a document found too large: not tried again
        self._too_large: dict[str, tuple[float, int]] = {}
        self.broker_max_packet: int | None = None  # announced by the broker (MQTT v5 CONNACK)
        self.document_check_s = 1.0  # how often the bundle is looked at (changed documents)
        self._document_topics = {
            topics.config(site.site): ("config", CONFIG_FILE),
            topics.register(site.site): ("register", REGISTER_FILE),
            topics.register_delta(site.site): (DELTA, DELTA_FILE),
            topics.freshness(site.site): ("freshness", FRESHNESS_FILE),
        }
        self.watch = DocumentWatch(
            site.site,
            {kind: site.bundle_path(name) for kind, name in self._document_topics.values()},
            site.known_keys,
        )
        self._replace: set[str] = set()  # bundle files to publish again over a retained stranger
        self.jobs = Jobs(self.store)  # periodic work, once among the collectors of this store
        self._interval_warned = False
        self._store_down_since: float | None = None  # monotonic: the store became unavailable
        self.stats = {
            "batches": 0,
            "inserted": 0,
            "duplicates": 0,
            "rejected": 0,
            "conflicts": 0,
            "freshness": 0,
            "renumbered": 0,
            "foreign_documents": 0,
        }
        self._thread = threading.Thread(target=self._run, name="collector", daemon=True)
        acfg = site.config.alerts
        self.health = GateHealth(
            self.store, self.alerts, timedelta(minutes=acfg.gate_offline_after_min)
        )
        self.health_interval_s = CHECK_INTERVAL_S
        self.listening_since: datetime | None = None  # when the current connection began
        self.webhooks = (
            WebhookSender(acfg, site=site.site, tz=site.config.tz) if acfg.webhook_url else None
        )
        self.client = mqtt.Client(
            CallbackAPIVersion.VERSION2,
            client_id=client_id or collector_client_id(site.site, self.mqtt.shared_group),
            protocol=mqtt.MQTTv5,
        )
        cfg = self.mqtt
        if cfg.username:
            self.client.username_pw_set(cfg.username, cfg.password)
        self.trouble = LinkTrouble(log, broker.host, broker.port)
        self.trouble.attach(self.client)
        if broker.tls:
            self.client.tls_set_context(tls_context(cfg, site.dir))
        self.client.reconnect_delay_set(min_delay=1, max_delay=15)
        self.client.on_connect = self._on_connect
        self.client.on_disconnect = self._on_disconnect
        self.client.on_message = self._on_message

    def start(self) -> None:
        # A lone collector keeps a persistent session: while it restarts, the broker queues
        # the gates' batches for it (a speed-up only: the gates' outboxes are the guarantee).
        # In a shared group it keeps none: Mosquitto deals a shared subscription's messages
        # to every session in the group, connected or not (2.0: subs.c subs__shared_process,
        # database.c db__message_insert), so a stopped collector's turn would wait for it
        # instead of going to the ones that run. Without a session it leaves the group as
        # soon as its connection ends, and its in-flight batches are resent by the gates.
        shared = self.mqtt.shared_group is not None
        props = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
        props.SessionExpiryInterval = 0 if shared else SESSION_EXPIRY_S
        self.client.connect_async(
            self.broker.host,
            self.broker.port,
            keepalive=30,
            clean_start=shared,
            properties=props,
        )
        self.client.loop_start()
        if self.webhooks is not None:
            self.webhooks.start()
        self._thread.start()

    def close(self) -> None:
        if self._stop.is_set():
            return
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=10)
        self.client.disconnect()
        self.client.loop_stop()
        if self.webhooks is not None:
            self.webhooks.close()

    def __enter__(self) -> Collector:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- paho callbacks (network thread) -------------------------------------------------

    def _on_connect(
        self, client: mqtt.Client, _u: object, _f: object, rc: ReasonCode, props: Properties | None
    ) -> None:
        if rc.is_failure:
            log.warning("broker refused connection: %s", rc)
            return
        self.trouble.connected()
        self.broker_max_packet = getattr(props, "MaximumPacketSize", None)
        self.listening_since = datetime.now(UTC)  # before subscribing: retained status follows
        group = self.mqtt.shared_group
        subs = []
        for leaf in ("events", "status"):
            t = topics.gate_wildcard(self.site.site, leaf)
            subs.append((f"$share/{group}/{t}" if group and leaf == "events" else t, 1))
        subs += [(t, 1) for t in self._document_topics]  # what gates find retained there
        result, _mid = client.subscribe(subs)
        if result != MQTTErrorCode.MQTT_ERR_SUCCESS:
            log.warning("subscribe failed: %s", result)
            return
        self._published.clear()  # republish documents after every (re)connect
        self.connected.set()

    def _on_disconnect(
        self, _c: mqtt.Client, _u: object, _f: object, rc: ReasonCode, _p: Properties | None
    ) -> None:
        self.connected.clear()
        if not self._stop.is_set():
            log.warning("disconnected from broker: %s", rc)

    def _on_message(self, _c: mqtt.Client, _u: object, msg: mqtt.MQTTMessage) -> None:
        payload = bytes(msg.payload)
        with self._room:  # wait for room (INBOX_BYTES), or for close()
            while self._waiting_bytes > self.inbox_bytes and not self._stop.is_set():
                self._room.wait(0.5)
            self._waiting_bytes += len(payload)
        self._inbox.put((msg.topic, payload))

    # --- worker ----------------------------------------------------------------------------

    def _run(self) -> None:
        next_check = next_health = 0.0
        while not self._stop.is_set():
            group = self._next_group()
            if group:
                try:
                    self.handle_many(group)
                    self._store_ok()
                except StoreUnavailable as exc:  # not acknowledged: the gates send them again
                    self._store_down(exc)
                except Exception:  # one bad message must never stop the collector
                    log.exception("collector error on %s", group[0][0])
            try:
                # Periodic work: each job runs once per period among the collectors sharing
                # the store (server/periodic.py); this one tries them on its own schedule.
                if self.connected.is_set() and time.monotonic() >= next_check:
                    next_check = time.monotonic() + self.document_check_s
                    self._refresh_register()
                    self._reaffirm()
                    self._publish_documents()
                    self._purge_when_due()
                if self.connected.is_set() and time.monotonic() >= next_health:
                    next_health = time.monotonic() + self.health_interval_s
                    self._check_health()
            except StoreUnavailable as exc:
                self._store_down(exc)
            except Exception:
                log.exception("collector error on periodic work")

    def _store_down(self, exc: StoreUnavailable) -> None:
        """One warning when the store becomes unavailable, not one per batch and job: the
        batches are not acknowledged, and their gates send them again (resend_after_s)."""
        if self._store_down_since is None:
            self._store_down_since = time.monotonic()
            log.warning("%s; gates' batches wait for it (they are sent again)", exc)

    def _store_ok(self) -> None:
        if self._store_down_since is not None:
            down_s = time.monotonic() - self._store_down_since
            self._store_down_since = None
            log.warning("the store is available again after %.0f s", down_s)

    def _check_health(self) -> None:
        """Gate health (server/gate_health.py) every health_interval_s, by one collector."""
        job = every("gate_health", system_utc, timedelta(seconds=self.health_interval_s))

        def check() -> None:
            for alert in self.health.check(listening_since=self.listening_since):
                self._raised(alert)

        self.jobs.run_if_due(job, check)

    def _purge_when_due(self) -> None:
        """Retention once a day, by one collector (purge_personal_data)."""
        job = every("retention_purge", system_utc, timedelta(seconds=PURGE_INTERVAL_S))
        self.jobs.run_if_due(job, self.purge_personal_data)

    def _next_group(self) -> list[tuple[str, bytes]]:
        """The messages waiting, as many as GROUP_MESSAGES and GROUP_BYTES allow (waiting up
        to 0.2 s for the first): stored in one transaction, so the store's fsync is paid per
        group, not per batch, when gates send faster than one commit."""
        try:
            group = [self._inbox.get(timeout=0.2)]
        except queue.Empty:
            return []
        size = len(group[0][1])
        while len(group) < GROUP_MESSAGES and size < GROUP_BYTES:
            try:
                message = self._inbox.get_nowait()
            except queue.Empty:
                break
            group.append(message)
            size += len(message[1])
        with self._room:
            self._waiting_bytes -= size
            self._room.notify_all()
        return group

    def purge_personal_data(self) -> int:
        """Retention (DESIGN.md, privacy): erase visitors' names and phones once they are
        older than [privacy] visitor_retention_days past their pass. Runs daily."""
        days = self.site.config.privacy.visitor_retention_days
        purged = purge_visitors(self.site, days, by="collector")
        before = (datetime.now(UTC) - timedelta(days=REJECTED_RETENTION_DAYS)).isoformat()
        with self.store.write() as tx:
            dropped = events_db.purge_rejected(tx, before=before)
        if dropped:
            log.info(
                "retention: %d rejected messages older than %d days",
                dropped,
                REJECTED_RETENTION_DAYS,
            )
        if purged:
            log.info("retention: erased the personal data of %d visitors", purged)
        return purged

    def handle(self, topic: str, payload: bytes) -> None:
        """One message, as the worker handles a group of one."""
        self.handle_many([(topic, payload)])

    def handle_many(self, messages: Sequence[tuple[str, bytes]]) -> None:
        """Messages (topic, payload) in the order they arrived. Their event batches, the
        malformed ones recorded, the conflicts and alerts they make are stored in one
        transaction; then each gate gets one retained ack (of its last batch), accepted
        passages are relayed in batches, the live feed and webhooks learn what is new.
        Gate statuses follow, one by one. When the group's transaction fails, each message
        is tried alone, so one bad message costs only itself."""
        batches: list[tuple[str, str, DecodedBatch]] = []
        rejects: list[Reject] = []
        statuses: list[tuple[str, str, bytes]] = []
        for topic, payload in messages:
            if topic in self._document_topics:
                self._retained_document(topic, payload)
                continue
            where = topics.gate_of(topic)
            if where is None or where[0] != self.site.site:
                rejects.append(Reject(topic, "unexpected topic", payload))
                continue
            site, gate, leaf = where
            if leaf == "status":
                statuses.append((topic, gate, payload))
            elif leaf == "events":
                try:
                    batch = decode_batch(payload, site=site, gate=gate, now=self.site.now())
                except MessageError as exc:
                    rejects.append(Reject(topic, str(exc), payload))
                    continue
                except Exception as exc:  # a reader's bug: this message only, not the group
                    log.exception("cannot read a message on %s", topic)
                    rejects.append(Reject(topic, f"unreadable: {type(exc).__name__}", payload))
                    continue
                rejects += _event_rejects(topic, batch.rejected, payload)
                batches.append((topic, gate, batch))
        if batches or rejects:
            try:
                stored = self._store(batches, rejects)
            except StoreUnavailable:
                raise  # no message is at fault: one at a time would fail alike
            except Exception:
                if len(messages) == 1:
                    raise
                log.exception("storing %d messages at once failed: one at a time", len(messages))
                for message in messages:
                    try:
                        self.handle_many([message])
                    except StoreUnavailable:
                        raise
                    except Exception:
                        log.exception("collector error on %s", message[0])
                return
            self._stored(stored, rejects)
        for topic, gate, payload in statuses:
            try:
                self._status(topic, gate, payload)
            except Exception:  # one gate's status never keeps the others from being stored
                log.exception("collector error on %s", topic)

    def _store(
        self, batches: list[tuple[str, str, DecodedBatch]], rejects: list[Reject]
    ) -> list[_Stored]:
        """Rejects, batches, their conflicts and alerts in one write transaction; the gates'
        and households' locks first, in one sorted set (server/storage/engine.py lock_all)."""
        policy = self._policy() if batches else None
        now = utcnow()
        names = {f"gate:{gate}" for _t, gate, _b in batches}
        names |= {f"household:{h}" for _t, _g, b in batches for h in households_of(b.events)}
        if rejects:
            names.add(REJECTIONS_LOCK)
        stored: list[_Stored] = []
        with self.store.write() as tx:
            lock_all(tx, names)
            for r in rejects:
                events_db.reject_message(tx, r.topic, r.reason, r.payload, now=now, count=r.refused)
            for _topic, gate, batch in batches:
                result = events_db.insert_events(tx, gate, batch.events, now=now)
                raised: list[Alert | None] = []
                reset = result.replaced_epoch is not None and not _history_move(batch.events)
                if reset:
                    raised.append(
                        self.alerts.raise_alert(
                            f"gate_reset:{gate}:{result.epoch}",
                            "gate_reset",
                            gate=gate,
                            detail=f"database replaced: epoch {result.replaced_epoch!r}"
                            f" -> {result.epoch!r}",
                            tx=tx,
                        )
                    )
                raised += [self.alerts.from_event(e, tx=tx) for e in result.new_events]
                found = [] if policy is None else find_conflicts(tx, policy, result.new_events)
                raised += [
                    self.alerts.raise_alert(
                        f"conflict:{c.kind}:{c.uuid}",
                        "conflict",
                        gate=c.gate,
                        detail=f"{c.kind}: {c.detail}",
                        tx=tx,
                    )
                    for c in found
                ]
                stored.append(
                    _Stored(gate, result, reset, found, [a for a in raised if a is not None])
                )
        return stored

    def _policy(self) -> Policy | None:
        """The rules the gates were given (the published config), not server.toml's
        candidate; None, logged, when there is none usable (events are stored and
        acknowledged all the same, their conflicts found with the next batch)."""
        try:
            return self.site.published_policy().policy
        except ProtocolError as exc:
            log.error("no conflict check: %s", exc)
            return None

    def _stored(self, stored: list[_Stored], rejects: list[Reject]) -> None:
        """After the commit: counters, acks, relays, the live feed, webhooks, and one log line
        per batch that needs one (never one per event)."""
        for topic, n in Counter(r.topic for r in rejects).items():
            first = next(r.reason for r in rejects if r.topic == topic)
            log.warning("rejected %d on %s: %s", n, topic, first)
        self.stats["rejected"] += sum(r.refused for r in rejects)
        last: dict[str, InsertResult] = {}
        for s in stored:
            r = s.result
            self.stats["batches"] += 1
            self.stats["inserted"] += r.inserted
            self.stats["duplicates"] += r.duplicates
            self.stats["renumbered"] += r.renumbered
            self.stats["conflicts"] += len(s.conflicts)
            last[s.gate] = r
        for gate, r in last.items():
            info = self.client.publish(
                topics.ack(self.site.site, gate),
                Ack(gate, r.contiguous_seq, r.epoch, r.contiguous_uuid).encode(),
                qos=1,
                retain=True,
            )
            if info.rc != MQTTErrorCode.MQTT_ERR_SUCCESS:
                # The gate resends when its ack does not advance; the next batch acks again.
                log.warning("ack publish failed: %s", mqtt.error_string(info.rc))
        self._relay_passages([e for s in stored for e in s.result.new_events])
        for s in stored:
            r = s.result
            if s.reset:
                log.warning(
                    "gate %s numbers from a new database (epoch %r, was %r)",
                    s.gate,
                    r.epoch,
                    r.replaced_epoch,
                )
            if s.conflicts:
                kinds = Counter(c.kind for c in s.conflicts)
                log.warning(
                    "%d conflicts in a batch of %s (%s), e.g. %s",
                    len(s.conflicts),
                    s.gate,
                    ", ".join(f"{k} {n}" for k, n in sorted(kinds.items())),
                    s.conflicts[0].detail,
                )
            for event in r.new_events:
                self.feed.publish({"type": "event", **event.to_json()})
            for alert in s.alerts:
                self._raised(alert)

    def _status(self, topic: str, gate: str, payload: bytes) -> None:
        try:
            status = decode_status(payload)
        except MessageError as exc:
            self._reject(topic, str(exc), payload)
            return
        with self.store.write() as tx:
            gates_db.set_status(tx, gate, status, utcnow())
        # The topic names the gate (the ACL binds it to the login); the payload may lie.
        self.feed.publish({"type": "status", **status, "gate": gate})
        alert = self.health.on_status(gate, status)
        if alert is not None:
            self._raised(alert)

    def _raised(self, alert: Alert) -> None:
        """A new alert: to the live feed, and to the webhook when configured (never blocks)."""
        self.feed.publish({"type": "alert", **alert.to_json()})
        if self.webhooks is not None and self.webhooks.wants(alert):
            self.webhooks.submit(notice_for(alert, self.store))

    def _relay_passages(self, events: list[Event]) -> None:
        """Tell the other gates of the site about accepted passages (their counters): in
        messages of up to MAX_PASSAGES (the batch form, docs/protocol.md)."""
        passages = [p for p in map(Passage.from_event, events) if p is not None]
        failed = 0
        for i in range(0, len(passages), MAX_PASSAGES):
            info = self.client.publish(
                topics.passages(self.site.site),
                encode_passages(passages[i : i + MAX_PASSAGES]),
                qos=1,
            )
            failed += info.rc != MQTTErrorCode.MQTT_ERR_SUCCESS
        if failed:
            log.warning(
                "passage relay failed for %d of %d messages",
                failed,
                -(-len(passages) // MAX_PASSAGES),
            )

    def _reject(self, topic: str, reason: str, payload: bytes) -> None:
        self.stats["rejected"] += 1
        log.warning("rejected message on %s: %s", topic, reason)
        with self.store.write() as tx:
            lock_all(tx, {REJECTIONS_LOCK})
            events_db.reject_message(tx, topic, reason, payload, now=utcnow())

    def _retained_document(self, topic: str, payload: bytes) -> None:
        """A message on a document topic: nothing to do when it is the published document;
        otherwise the published one goes out again (_publish_documents, rate-limited), and a
        foreign one is logged and raised as a `foreign_document` alert (rate-limited)."""
        kind, name = self._document_topics[topic]
        finding, alert = self.watch.check(kind, payload)
        if finding is None:
            return
        self._replace.add(name)
        self._published.pop(name, None)
        if not finding.foreign:
            log.info(
                "retained %s is not the published one (%s): publishing it again",
                kind,
                finding.detail,
            )
            return
        self.stats["foreign_documents"] += 1
        log.error(
            "retained %s NOT published by this server: %s; publishing the site's own again"
            " (docs/alerts.md, foreign_document)",
            kind,
            finding.detail,
        )
        if alert:
            self._raise_foreign(finding)

    def _raise_foreign(self, finding: Finding) -> None:
        raised = self.alerts.raise_alert(
            f"foreign_document:{finding.kind}:{finding.digest[:16]}",
            "foreign_document",
            detail=finding.detail,
        )
        if raised is not None:
            self._raised(raised)

    def _reaffirm(self) -> None:
        """A freshness statement every freshness_interval_s (by the site's clock), from one of
        the collectors sharing the store: when the first starts (unless one was issued less
        than an interval ago) and then once per interval, so connected gates never find their
        documents too old. (A document change issues its own: Site.publish_register.) A
        clock that stepped back more than a minute does not wait for the old due time."""
        interval = self.freshness_interval()

        def reaffirm() -> None:
            if self.site.publish_freshness() is not None:
                self.stats["freshness"] += 1

        self.jobs.run_if_due(every("freshness", self.site.now, interval), reaffirm)

    def freshness_interval(self) -> timedelta:
        """[server] freshness_interval_s, but at most half of the *published* max_data_age_h:
        server.toml is checked against its own candidate policy, and gates enforce the
        published one (a shorter limit published after this collector started counts too)."""
        configured = self.site.config.server.freshness_interval_s
        try:
            limit_s = self.site.published_policy().policy.max_data_age_h * 3600 / 2
        except ProtocolError as exc:  # no usable published config: the statement says so
            log.warning("published policy unreadable: %s", exc)
            limit_s = configured
        if limit_s < configured and not self._interval_warned:
            self._interval_warned = True
            log.warning(
                "freshness_interval_s = %g is more than half the published max_data_age_h;"
                " statements every %g s instead",
                configured,
                limit_s,
            )
        return timedelta(seconds=min(configured, limit_s))

    def _refresh_register(self) -> None:
        """Once per local day of the site (by its clock: when the first collector starts, then
        after each local midnight), by one of the collectors sharing the store: a new register
        version if passes ended (or quarantines ran out) since the last one, so the document
        stays the size of what can still be presented (Site.register)."""

        def refresh() -> None:
            try:
                doc = self.site.refresh_register()
            except DocumentTooLarge as exc:  # a register grown past it under an older Menwei
                day = self.site.now().astimezone(self.site.config.tz).date().isoformat()
                self._too_large_alert(
                    f"document_too_large:register:refresh:{day}", f"register not refreshed: {exc}"
                )
                return
            if doc is not None:
                log.info("register v%d: passes that ended dropped out", doc.version)

        job = Job("register_refresh", self.site.now, next_midnight(self.site.config.tz))
        self.jobs.run_if_due(job, refresh)

    def document_bound(self, topic: str) -> int:
        """The largest document, in bytes, that may be published on `topic`: what a gate
        accepts (MAX_DOCUMENT_BYTES) and, when the broker announced a maximum packet size,
        what fits in a packet of that size."""
        bound = MAX_DOCUMENT_BYTES
        if self.broker_max_packet is not None:
            bound = min(bound, max_payload(topic, self.broker_max_packet))
        return bound

    def _publish_documents(self) -> None:
        # Documents before the statement that names them: a gate that applies them in the
        # order they arrive can count the statement at once.
        for name, topic in (
            (CONFIG_FILE, topics.config(self.site.site)),
            (REGISTER_FILE, topics.register(self.site.site)),
            (DELTA_FILE, topics.register_delta(self.site.site)),
            (FRESHNESS_FILE, topics.freshness(self.site.site)),
        ):
            path: Path = self.site.bundle_path(name)
            kind = self._document_topics[topic][0]
            replacing = name in self._replace
            if replacing and time.monotonic() < self.watch.republish_after(kind):
                continue  # replaced a moment ago: no publish war with another publisher
            try:
                mtime = path.stat().st_mtime
            except FileNotFoundError:
                # Gone from the bundle (a delta when a new snapshot is cut): an empty retained
                # message clears the topic, so no gate receives a stale one.
                if self._published.get(name) != ABSENT:
                    self._send(name, topic, b"", ABSENT)
                continue
            if self._published.get(name) == mtime:
                continue
            bound = self.document_bound(topic)
            if self._too_large.get(name) == (mtime, bound):
                continue
            data = path.read_bytes()
            if len(data) > bound:
                self._too_large[name] = (mtime, bound)
                self._refuse_large(name, data, bound)
                continue
            self._send(name, topic, data, mtime)

    def _send(self, name: str, topic: str, data: bytes, mtime: float) -> None:
        """Publish bundle file `name` (`data`; empty: clear the topic) retained on `topic`,
        noting the `mtime` published (ABSENT: cleared)."""
        info = self.client.publish(topic, data, qos=1, retain=True)
        if info.rc != MQTTErrorCode.MQTT_ERR_SUCCESS:
            return
        self._published[name] = mtime
        if name in self._replace:
            self._replace.discard(name)
            self.watch.republished(self._document_topics[topic][0])
        log.info("%s %s", "published" if data else "cleared the topic of", name)

    def _refuse_large(self, name: str, data: bytes, bound: int) -> None:
        """One error and one high-priority alert per document version; the gates keep the
        version they hold (docs/alerts.md, "Document too large")."""
        try:
            version = f"v{int(json.loads(data)['version'])}"
        except (ValueError, KeyError, TypeError):
            version = "?"
        kind = name.removesuffix(".json")
        detail = (
            f"{kind} {version} is {len(data)} bytes, over the {bound} bytes that gates accept"
            f" and the broker takes: not published; gates keep the {kind} they hold"
        )
        self._too_large_alert(f"document_too_large:{kind}:{version}:{len(data)}", detail)

    def _too_large_alert(self, key: str, detail: str) -> None:
        log.error("%s (docs/alerts.md, document_too_large)", detail)
        alert = self.alerts.raise_alert(key, "document_too_large", detail=detail)
        if alert is not None:
            self._raised(alert)


def system_utc() -> datetime:
    """The system clock, aware UTC: what gate health and retention are scheduled by."""
    return datetime.now(UTC)


_instances = itertools.count(1)


def collector_client_id(site: str, shared_group: str | None) -> str:
    """The MQTT client id of a collector: `menwei-collector-{site}`, the same at every start
    (the broker keeps its session). In a shared group one of its own,
    `menwei-collector-{site}-{host}-{pid}-{n}` (n: 1, 2, ... per call in this process): two
    collectors on one broker never take each other's connection, and none keeps a session to
    come back to (Collector.start). (A broker with `use_username_as_clientid`, as shipped,
    replaces it by the username: there each collector needs a user of its own,
    docs/configuration.md.)"""
    if shared_group is None:
        return f"menwei-collector-{site}"
    return f"menwei-collector-{site}-{socket.gethostname()}-{os.getpid()}-{next(_instances)}"


REJECTED_RETENTION_DAYS = 30
"""Rejected messages (excerpts of what gates sent wrong) are kept this long (daily purge)."""
REJECTS_PER_MESSAGE = 10
"""At most this many rows of `rejected_messages` for one batch (the last one says how many
more of its events were refused): a hostile batch of 500 bad events is not 500 rows."""


class Reject(NamedTuple):
    """A refused message, or refused events of a batch: `refused` of them (server/storage/
    events.py reject_message counts them all and keeps a sample)."""

    topic: str
    reason: str
    payload: bytes
    refused: int = 1


REJECTIONS_LOCK = "rejections"
"""Held while refusals are counted: two collectors keep the day's sample within its bound."""


def _event_rejects(topic: str, refused: Sequence[tuple[int, str]], payload: bytes) -> list[Reject]:
    """The rows of `rejected_messages` for a batch's refused events (index, reason): at most
    REJECTS_PER_MESSAGE, the last counting the refused events left over."""
    rows = [Reject(topic, f"event {i}: {why}", payload) for i, why in refused[:REJECTS_PER_MESSAGE]]
    more = len(refused) - REJECTS_PER_MESSAGE
    if more > 0:
        last = rows[-1]
        rows[-1] = Reject(
            topic,
            f"{last.reason} (and {more} more refused events of this batch)",
            payload,
            1 + more,
        )
    return rows


def _history_move(events: list[Event]) -> bool:
    """Whether a batch that begins a new epoch comes from a gate that moved there after losing
    committed history (its alert or its renumbered events), not from a replaced database."""
    return any(
        "moved_from" in e.detail or (e.kind == "alert" and e.reason == HISTORY_LOST) for e in events
    )


def max_payload(topic: str, max_packet: int) -> int:
    """The largest payload, in bytes, of an MQTT v5 PUBLISH on `topic` (QoS 1, no properties,
    as the collector sends them) that fits in `max_packet` bytes: 1 byte of packet type, the
    remaining length (1-4 bytes, 7 bits each), topic length (2) and UTF-8 topic, packet id (2),
    property length (1), payload."""
    fixed = 2 + len(topic.encode()) + 2 + 1
    return max(min(max_packet - 1 - n, 128**n - 1) for n in (1, 2, 3, 4)) - fixed
