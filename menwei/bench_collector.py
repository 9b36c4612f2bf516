"""Collector benchmark: G gates' batches through a private Mosquitto to K real collectors.

The parts are the real ones, each in its own process: a private Mosquitto
(`MosquittoBroker`), a server directory made by `menwei server init` (its store
SQLite, or PostgreSQL with `--store URL` / `--postgres`), K `menwei server run`
processes on it (`--shared-group` when K > 1; `CollectorFleet`), and one process
that plays the G gates (`_gates_process`). The gates' logs are scripted
(menwei/gate_traffic.py: each gate's own residents going out and in, one decision
every 10 s of a day that ends now) and numbered as `GateStore` numbers them (seq
1..N in a random epoch per gate, a uuid per event); a batch is what `GateSync` sends:
`protocol.events.encode_batch` of up to `--batch` events on
`menwei/{site}/{gate}/events`, QoS 1.

Two phases, the same messages:
1. raw: before any collector runs, every batch is published at once to a bare
   subscriber that only counts messages: the broker's delivery rate here;
2. collectors: the gates send as `GateSync` does: at most `--window` unacknowledged
   events each (its default, 500), the next batch when the collector's ack advances.
   A gate also sends everything after its ack again when the ack has not advanced for
   `resend_after_s` (10 s); here only with `--resend-after 10`: by default the collectors
   alone are measured, and a batch they lose shows as `lost` (the run ends when no ack
   has advanced for STALL_S) instead of being hidden by a resend. The phase ends when
   every gate's ack has reached its last seq.

`events_per_s` is the events committed and acknowledged per second, from the first
publish to the last gate's ack reaching its last seq. `collector_rss_mb` is the
largest peak RSS (VmHWM) of the collector processes. Then what the gates logged is
reconciled with the store (menwei/reconcile.py): `lost` and `duplicates` must be 0.

The CLI (`menwei bench collector`) calls `run_collector_bench`.
"""

from __future__ import annotations

import contextlib
import json
import multiprocessing
import random
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode

from edge.sync import SyncSettings
from menwei.collector_process import CollectorFleet, init_server
from menwei.gate_traffic import resident_event
from menwei.mosquitto import MosquittoBroker
from menwei.postgres import PostgresServer
from menwei.reconcile import reconcile_keys
from protocol import topics
from protocol.broker import parse_broker
from protocol.errors import MessageError
from protocol.events import MAX_BATCH_EVENTS, Ack, Event, encode_batch
from server.storage import default_url
from server.storage.events import EventKey

SITE = "bench-site"
SHARED_GROUP = "bench-collectors"
EVERY = timedelta(seconds=10)  # between two decisions of one gate
CONNECT_TIMEOUT_S = 60.0
STALL_S = 60.0  # without resends: no ack advancing this long ends the run (incomplete)


class BenchError(RuntimeError):
    """The benchmark could not run; the message says what failed."""


@dataclass(frozen=True)
class GateFleet:
    """The simulated gates: `gates` gates of `site`, each with a log of `events_per_gate`
    events decided every EVERY from `start`, sent in batches of `batch`, at most `window`
    unacknowledged, again after the ack when it has not advanced for `resend_after_s`
    (0: never). Deterministic for a `seed`: the gates' process and the reconciliation build
    the same logs."""

    site: str
    gates: int
    events_per_gate: int
    batch: int
    start: datetime
    window: int = SyncSettings.window
    resend_after_s: float = 0.0
    seed: int = 0

    @property
    def names(self) -> list[str]:
        return [f"gate-{n:02d}" for n in range(1, self.gates + 1)]

    @property
    def events(self) -> int:
        return self.gates * self.events_per_gate

    def numbering(self, gate: str) -> tuple[str, list[str]]:
        """The epoch of `gate`'s log and the uuid of each of its events (seq 1, 2, ...)."""
        rng = random.Random(f"{self.seed}:{gate}")
        epoch = f"{rng.getrandbits(64):016x}"
        uuids = [
            str(uuid.UUID(int=rng.getrandbits(128), version=4)) for _ in range(self.events_per_gate)
        ]
        return epoch, uuids

    def log(self, index: int) -> list[Event]:
        """The events gate number `index` (from 0) logged, in seq order."""
        gate = self.names[index]
        epoch, uuids = self.numbering(gate)
        return [
            resident_event(
                self.site,
                gate,
                i,
                self.start,
                gate_index=index,
                every=EVERY,
                seq=i + 1,
                epoch=epoch,
                uuid=u,
            )
            for i, u in enumerate(uuids)
        ]

    def keys(self) -> set[EventKey]:
        """(gate, epoch, seq, uuid) of every logged event."""
        keys: set[EventKey] = set()
        for gate in self.names:
            epoch, uuids = self.numbering(gate)
            keys.update((gate, epoch, seq, u) for seq, u in enumerate(uuids, 1))
        return keys

    def batches(self, index: int) -> list[tuple[int, bytes]]:
        """Gate `index`'s log as `GateSync` sends it: (last seq, payload) per batch."""
        log = self.log(index)
        gate = self.names[index]
        return [
            (chunk[-1].seq, encode_batch(gate, chunk))
            for chunk in (log[k : k + self.batch] for k in range(0, len(log), self.batch))
        ]


def run_collector_bench(
    gates: int = 50,
    events_per_gate: int = 1000,
    batch: int = 50,
    *,
    store: str | None = None,
    postgres: bool = False,
    collectors: int = 1,
    window: int = SyncSettings.window,
    resend_after_s: float = 0.0,
    timeout_s: float | None = None,
) -> dict[str, object]:
    """Run both phases (module doc) and return the numbers. `store`: a database URL for the
    server directory (default its SQLite file; an empty database); `postgres`: a throwaway
    PostgreSQL server (menwei/postgres.py) for the run; `window`, `resend_after_s`: how the
    gates send (GateFleet). Raises ValueError for bad sizes, BenchError when a part does not
    start or a phase does not end within `timeout_s` (default 120 s + 10 ms per event)."""
    if min(gates, events_per_gate, batch, collectors) < 1 or resend_after_s < 0:
        raise ValueError("--gates, --events-per-gate, --batch and --collectors must be positive")
    if not batch <= min(window, MAX_BATCH_EVENTS):
        raise ValueError(f"--batch must be at most --window and {MAX_BATCH_EVENTS}")
    if store is not None and postgres:
        raise ValueError("give --store URL or --postgres, not both")
    start = datetime.now(UTC) - EVERY * events_per_gate
    fleet = GateFleet(SITE, gates, events_per_gate, batch, start, window, resend_after_s)
    timeout = timeout_s if timeout_s is not None else 120.0 + fleet.events / 100.0
    with contextlib.ExitStack() as stack:
        work = Path(
            stack.enter_context(tempfile.TemporaryDirectory(prefix="menwei-bench-collector-"))
        )
        if postgres:
            store = stack.enter_context(PostgresServer()).create_database("menwei_bench")
        broker = stack.enter_context(MosquittoBroker(workdir=work))
        server_dir = work / "server"
        init_server(server_dir, SITE, store)
        with _gates_process(fleet, broker.url, timeout) as gates_conn:
            raw = _raw_phase(fleet, broker.url, gates_conn, timeout)
            group = SHARED_GROUP if collectors > 1 else None
            with CollectorFleet(
                server_dir, SITE, broker.url, collectors, shared_group=group, log_dir=work
            ) as running:
                sent = _ask(gates_conn, "collectors", timeout + 30)
                rss = running.peak_rss_mb()
                log_tail = "" if sent["complete"] else running.log_tail()
        r = reconcile_keys(fleet.keys(), store or default_url(server_dir))
    seconds = float(sent["seconds"])
    acked = sum(sent["acked_seq"].values())
    events_per_s = acked / seconds if seconds > 0 else 0.0
    raw_per_s = fleet.events / raw if raw > 0 else 0.0
    return {
        "gates": gates,
        "events_per_gate": events_per_gate,
        "events": fleet.events,
        "batch": batch,
        "window": window,
        "resend_after_s": resend_after_s,
        "collectors": collectors,
        "store": "postgresql" if (store or "").startswith("postgres") else "sqlite",
        "seconds": round(seconds, 3),
        "events_per_s": round(events_per_s, 1),
        "raw_seconds": round(raw, 3),
        "raw_events_per_s": round(raw_per_s, 1),
        "ratio": round(events_per_s / raw_per_s, 4) if raw_per_s > 0 else 0.0,
        "drain_s": round(float(sent["drain_s"]), 3),
        "collector_rss_mb": round(max(rss), 1),
        "collectors_rss_mb": [round(x, 1) for x in rss],
        "batches_sent": sent["batches"],
        "resends": sent["resends"],
        "complete": sent["complete"],
        "collector_events": r.collector_events,
        "lost": r.lost,
        "duplicates": r.duplicates,
    } | ({"collector_log_tail": log_tail} if log_tail else {})


# --- the bare subscriber (phase 1) -----------------------------------------------------------


def _raw_phase(fleet: GateFleet, broker_url: str, gates: Connection, timeout: float) -> float:
    """Every batch published at once to a subscriber that only counts them: seconds from the
    first publish until it has received the last one."""
    expected = fleet.gates * -(-fleet.events_per_gate // fleet.batch)
    counted = threading.Event()
    received = [0, 0.0]  # messages, monotonic time of the last one

    def on_message(_c: mqtt.Client, _u: object, _m: mqtt.MQTTMessage) -> None:
        received[0] += 1
        if received[0] == expected:
            received[1] = time.monotonic()
            counted.set()

    with _subscriber(
        broker_url, "menwei-bench-raw", topics.gate_wildcard(fleet.site, "events"), on_message
    ):
        sent = _ask(gates, "raw", timeout)
        if not counted.wait(timeout):
            raise BenchError(f"the bare subscriber got {received[0]} of {expected} batches")
    return received[1] - float(sent["first"])


@contextlib.contextmanager
def _subscriber(
    broker_url: str, client_id: str, topic: str, on_message: Any
) -> Iterator[mqtt.Client]:
    """A connected MQTT v5 client subscribed to `topic` at QoS 1 (its callback `on_message`)."""
    broker = parse_broker(broker_url)
    subscribed = threading.Event()
    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=client_id, protocol=mqtt.MQTTv5)
    client.on_connect = lambda c, *_: c.subscribe(topic, qos=1)
    client.on_subscribe = lambda *_: subscribed.set()
    client.on_message = on_message
    client.connect(broker.host, broker.port)
    client.loop_start()
    try:
        if not subscribed.wait(CONNECT_TIMEOUT_S):
            raise BenchError(f"could not subscribe to {topic} at {broker_url}")
        yield client
    finally:
        client.disconnect()
        client.loop_stop()


# --- the gates' process ----------------------------------------------------------------------


@contextlib.contextmanager
def _gates_process(fleet: GateFleet, broker_url: str, timeout: float) -> Iterator[Connection]:
    """The simulated gates in their own process (`_SimulatedGates`), ready to publish: a pipe
    to it. Commands: "raw", then "collectors"; each answers with a dict (see `_SimulatedGates`)."""
    ctx = multiprocessing.get_context("spawn")  # no fork of this process's threads
    ours, theirs = ctx.Pipe()
    proc = ctx.Process(
        target=_gates_main,
        args=(fleet, broker_url, timeout, theirs),
        name="menwei-bench-gates",
    )
    proc.start()
    try:
        _ask(ours, None, CONNECT_TIMEOUT_S + fleet.events / 1000)
        yield ours
    finally:
        with contextlib.suppress(OSError):
            ours.send("stop")
        proc.join(10)
        if proc.is_alive():
            proc.kill()
            proc.join()


def _ask(conn: Connection, command: str | None, timeout: float) -> dict[str, Any]:
    """Send `command` (if any) to the gates' process and wait for its answer."""
    if command is not None:
        conn.send(command)
    if not conn.poll(timeout):
        raise BenchError(
            f"the simulated gates did not answer {command or 'ready'} in {timeout:g} s"
        )
    try:
        answer: dict[str, Any] = conn.recv()
    except EOFError:
        raise BenchError("the simulated gates' process ended") from None
    if "error" in answer:
        raise BenchError(f"simulated gates: {answer['error']}")
    return answer


def _gates_main(fleet: GateFleet, broker_url: str, timeout: float, conn: Connection) -> None:
    """Entry point of the gates' process: answers "ready", then each command."""
    gates: _SimulatedGates | None = None
    try:
        gates = _SimulatedGates(fleet, broker_url)
        conn.send({"ready": True})
        while (command := conn.recv()) in ("raw", "collectors"):
            conn.send(gates.publish_all() if command == "raw" else gates.sync(timeout))
    except EOFError:
        pass  # the benchmark's process went away
    except Exception as exc:  # told to the parent, which says it
        with contextlib.suppress(OSError):
            conn.send({"error": f"{type(exc).__name__}: {exc}"})
    finally:
        if gates is not None:
            gates.close()


class _SimulatedGates:
    """All the gates of a GateFleet on one MQTT connection (client id menwei-bench-gates),
    subscribed to their acks. Times are `time.monotonic()` (one clock for every process of
    the machine)."""

    def __init__(self, fleet: GateFleet, broker_url: str) -> None:
        self.fleet = fleet
        self.names = fleet.names
        self.batches = [fleet.batches(i) for i in range(fleet.gates)]
        self.epochs = {g: fleet.numbering(g)[0] for g in self.names}
        self._lock = threading.Lock()
        self._acked = dict.fromkeys(self.names, 0)
        self._acked_at: dict[str, float] = {}
        self._wake = threading.Event()
        broker = parse_broker(broker_url)
        subscribed = threading.Event()
        self.client = mqtt.Client(
            CallbackAPIVersion.VERSION2, client_id="menwei-bench-gates", protocol=mqtt.MQTTv5
        )
        self.client.max_inflight_messages_set(100)  # the broker's max_inflight_messages
        self.client.max_queued_messages_set(0)
        self.client.on_connect = lambda c, *_: c.subscribe(
            topics.gate_wildcard(fleet.site, "ack"), qos=1
        )
        self.client.on_subscribe = lambda *_: subscribed.set()
        self.client.on_message = self._on_ack
        self.client.connect(broker.host, broker.port)
        self.client.loop_start()
        if not subscribed.wait(CONNECT_TIMEOUT_S):
            raise BenchError(f"could not subscribe to the acks at {broker_url}")

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()

    def _on_ack(self, _c: mqtt.Client, _u: object, msg: mqtt.MQTTMessage) -> None:
        try:
            ack = Ack.decode(bytes(msg.payload))
        except MessageError:
            return
        now = time.monotonic()
        with self._lock:
            if ack.epoch != self.epochs.get(ack.gate) or ack.acked_seq <= self._acked[ack.gate]:
                return
            self._acked[ack.gate] = ack.acked_seq
            if ack.acked_seq >= self.fleet.events_per_gate:
                self._acked_at[ack.gate] = now
        self._wake.set()

    def _publish(self, gate: str, payload: bytes) -> mqtt.MQTTMessageInfo:
        info = self.client.publish(topics.events(self.fleet.site, gate), payload, qos=1)
        if info.rc != MQTTErrorCode.MQTT_ERR_SUCCESS:
            raise BenchError(f"publish failed: {mqtt.error_string(info.rc)}")
        return info

    def publish_all(self) -> dict[str, Any]:
        """Phase 1: every batch of every gate at once, round-robin over the gates; returns
        `first` (time of the first publish) once the broker has taken them all (PUBACK)."""
        first = time.monotonic()
        infos = [
            self._publish(self.names[g], batches[k][1])
            for k in range(max(len(b) for b in self.batches))
            for g, batches in enumerate(self.batches)
            if k < len(batches)
        ]
        for info in infos:
            info.wait_for_publish(CONNECT_TIMEOUT_S)
        return {"first": first, "published": time.monotonic()}

    def sync(self, timeout: float) -> dict[str, Any]:
        """Phase 2, as `GateSync` sends (module doc), until every gate's ack reaches its last
        seq, `timeout` s pass, or (without resends) no ack advances for STALL_S. Returns
        `seconds` (from the first publish to the last gate's ack reaching its last seq, or to
        the end), `drain_s` (of that, after the last publish), `acked_seq` (gate → its last
        ack), `batches` (published), `resends` and `complete` (every gate acknowledged to its
        last seq)."""
        n = self.fleet.events_per_gate
        next_batch = dict.fromkeys(self.names, 0)  # batches [0, next) are sent
        seen = dict.fromkeys(self.names, 0)  # the ack last acted on
        first = last_progress = last_publish = time.monotonic()
        progress = dict.fromkeys(self.names, first)
        batches = resends = 0
        while (now := time.monotonic()) < first + timeout:
            with self._lock:
                acked = dict(self._acked)
            if all(a >= n for a in acked.values()):
                break
            if not self.fleet.resend_after_s and now - last_progress > STALL_S:
                break  # a batch the collectors lost: gates without resends wait for ever
            for g, gate in enumerate(self.names):
                own = self.batches[g]
                if acked[gate] > seen[gate]:
                    seen[gate] = acked[gate]
                    progress[gate] = last_progress = now
                elif self._resend_due(acked[gate], now - progress[gate]):
                    # no ack progress: everything after the ack goes again
                    next_batch[gate] = next(
                        i for i, (end, _) in enumerate(own) if end > acked[gate]
                    )
                    progress[gate] = now
                    resends += 1
                k = next_batch[gate]
                while k < len(own) and own[k][0] - acked[gate] <= self.fleet.window:
                    self._publish(gate, own[k][1])
                    k += 1
                    batches += 1
                    last_publish = now
                next_batch[gate] = k
            self._wake.wait(0.05)
            self._wake.clear()
        with self._lock:
            complete = len(self._acked_at) == len(self.names)
            end = max(self._acked_at.values()) if complete else time.monotonic()
            return {
                "seconds": end - first,
                "drain_s": max(0.0, end - last_publish),
                "acked_seq": dict(self._acked),
                "batches": batches,
                "resends": resends,
                "complete": complete,
            }

    def _resend_due(self, acked: int, waited_s: float) -> bool:
        return (
            bool(self.fleet.resend_after_s)
            and acked < self.fleet.events_per_gate
            and (waited_s > self.fleet.resend_after_s)
        )


if __name__ == "__main__":
    # For the module's author; the user-facing entry point is `menwei bench collector`.
    print(
        json.dumps(run_collector_bench(int(sys.argv[1]) if len(sys.argv) > 1 else 5, 200), indent=2)
    )
