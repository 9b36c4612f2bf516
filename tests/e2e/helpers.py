"""Helpers for tests with real parts: bounded polling, an MQTT watcher, camera stages, gates.

Nothing here replaces our code: the watcher is a plain paho client, frames are
real PNG files rendered from real signed passes, gates run the real daemon
(in a thread or as `menwei gate run`), and progress is read from the real
SQLite files (read-only connections, so tests never write to them).
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import signal
import socket
import sqlite3
import subprocess
import sys
import threading
import time
import uuid as uuidlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import cv2
import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

from drivers.sim_scene import render_card_frame, render_empty_frame
from edge.config import load_config
from edge.provision import provision
from menwei.broker_setup import gate_credentials
from protocol.broker import parse_broker
from protocol.broker_tls import TlsFiles, client_context
from protocol.events import Event
from tests.e2e.simtime import SimTime

REPO = Path(__file__).resolve().parents[2]


class Timeout(AssertionError):
    """A condition did not hold within its deadline."""


def wait_until(
    predicate: Callable[[], object],
    timeout: float,
    message: str | Callable[[], str],
    interval: float = 0.05,
) -> Any:
    """Poll `predicate` until it returns something truthy (returned) or fail after `timeout`
    seconds with `message` (a callable is evaluated at failure, to show the state then)."""
    end = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() >= end:
            text = message() if callable(message) else message
            raise Timeout(f"timed out after {timeout:.0f}s: {text}")
        time.sleep(interval)


# --- MQTT -----------------------------------------------------------------------------------


def use_tls(client: mqtt.Client, url: str, tls: TlsFiles | None) -> None:
    """An mqtts:// broker: `tls`, or a client certificate of the session's CA."""
    if parse_broker(url).tls:
        from tests.e2e.session_ca import client_tls

        client.tls_set_context(client_context(tls or client_tls()))


def mqtt_client(
    url: str,
    client_id: str | None = None,
    *,
    username: str | None = None,
    password: str | None = None,
) -> mqtt.Client:
    b = parse_broker(url)
    c = mqtt.Client(
        CallbackAPIVersion.VERSION2,
        client_id=client_id or f"test-{uuidlib.uuid4().hex[:8]}",
        protocol=mqtt.MQTTv5,
    )
    if username is not None:
        c.username_pw_set(username, password)
    use_tls(c, url, None)
    c.connect(b.host, b.port, keepalive=30)
    c.loop_start()
    return c


def publish(client: mqtt.Client, topic: str, payload: bytes, retain: bool = False) -> None:
    info = client.publish(topic, payload, qos=1, retain=retain)
    info.wait_for_publish(timeout=10)
    assert info.is_published(), f"publish to {topic} was not acknowledged by the broker"


@dataclass(frozen=True)
class Message:
    topic: str
    payload: bytes
    retain: bool


class MqttRefused(AssertionError):
    """The broker refused a connection; `reason` is the CONNACK reason code."""

    def __init__(self, reason: int, message: str) -> None:
        super().__init__(f"{message} (reason code {reason:#x})")
        self.reason = reason


class MqttWatcher:
    """Subscribes (QoS 1) to topic filters and records every message it receives.

    With `username`/`password` (or, over TLS, `tls`: its certificate; default a watcher's of
    the session CA) it is an authenticated client of a broker with an ACL (see
    tests/e2e/shipped_broker.py): `publish` then reports the broker's verdict,
    `will` sets a Last Will (retained, QoS 1), `kill` drops the connection as a crash would.
    With `session_expiry_s` it connects as the gates and the collector do: clean_start=False
    and a persistent session the broker keeps that long after a disconnection
    (`session_present` says whether the broker still had one). `disconnects` counts the
    connections lost (paho reconnects by itself). Raises MqttRefused when the broker refuses
    the connection, Timeout when it does not answer or the subscriptions do not complete."""

    def __init__(
        self,
        url: str,
        *filters: str,
        username: str | None = None,
        password: str | None = None,
        will: tuple[str, bytes] | None = None,
        client_id: str | None = None,
        session_expiry_s: int | None = None,
        tls: TlsFiles | None = None,
    ) -> None:
        self._lock = threading.Lock()
        self.messages: list[Message] = []
        self._filters = filters
        self._subscribed = threading.Event()
        self._acks: dict[int, int] = {}  # mid -> PUBACK reason code
        self.connect_reason: int | None = None
        self.session_present: bool | None = None
        self._killed = False
        self.disconnected = threading.Event()
        self.disconnects = 0
        b = parse_broker(url)
        self.client = mqtt.Client(
            CallbackAPIVersion.VERSION2,
            client_id=client_id or f"test-watch-{uuidlib.uuid4().hex[:8]}",
            protocol=mqtt.MQTTv5,
        )
        if username is not None:
            self.client.username_pw_set(username, password)
        use_tls(self.client, url, tls)
        if will is not None:
            self.client.will_set(will[0], will[1], qos=1, retain=True)
        self.client.on_connect = self._on_connect
        self.client.on_subscribe = lambda *a: self._subscribed.set()
        self.client.on_message = self._on_message
        self.client.on_publish = self._on_publish
        self.client.on_disconnect = self._on_disconnect
        if session_expiry_s is None:
            self.client.connect(b.host, b.port, keepalive=30)
        else:
            props = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
            props.SessionExpiryInterval = session_expiry_s
            self.client.connect(b.host, b.port, keepalive=30, clean_start=False, properties=props)
        self.client.loop_start()
        who = f"watcher {username or '(anonymous)'}"
        wait_until(lambda: self.connect_reason is not None, 10, f"{who}: no CONNACK")
        if self.connect_reason != 0:
            self.client.loop_stop()
            raise MqttRefused(self.connect_reason or 0, f"{who}: connection refused")
        if not filters:
            self._subscribed.set()
        wait_until(self._subscribed.is_set, 10, f"{who} did not subscribe to {filters}")

    def _on_connect(
        self, client: mqtt.Client, _u: object, flags: Any, rc: ReasonCode, _p: object
    ) -> None:
        self.connect_reason = rc.value
        self.session_present = bool(flags.session_present)
        if not rc.is_failure and self._filters:
            client.subscribe([(f, 1) for f in self._filters])

    def _on_disconnect(self, *_a: object) -> None:
        with self._lock:
            self.disconnects += 1
        self.disconnected.set()

    def _on_publish(
        self, _c: mqtt.Client, _u: object, mid: int, rc: ReasonCode, _p: object
    ) -> None:
        with self._lock:
            self._acks[mid] = rc.value

    def publish(
        self, topic: str, payload: bytes, retain: bool = False, timeout: float = 10
    ) -> int | None:
        """Publish at QoS 1 and wait for the broker's verdict: the PUBACK reason code (0
        accepted, 0x87 not authorized, ...), or None when the broker closed the connection
        without one. Mosquitto 2.0 closes the connection after a refusal: use a new watcher
        for the next attempt."""
        info = self.client.publish(topic, payload, qos=1, retain=retain)

        def verdict() -> bool:
            with self._lock:
                return info.mid in self._acks or self.disconnected.is_set()

        wait_until(verdict, timeout, f"no PUBACK and no disconnection after publishing {topic}")
        with self._lock:
            return self._acks.get(info.mid)

    def kill(self) -> None:
        """Stop the network loop and shut the socket without DISCONNECT, as a crash or a
        pulled cable would: the broker publishes this client's Last Will."""
        self._killed = True
        self.client.loop_stop()
        sock = self.client.socket()
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
            sock.close()

    def _on_message(self, _c: mqtt.Client, _u: object, msg: mqtt.MQTTMessage) -> None:
        with self._lock:
            self.messages.append(Message(msg.topic, bytes(msg.payload), bool(msg.retain)))

    def on(self, topic: str) -> list[Message]:
        with self._lock:
            return [m for m in self.messages if m.topic == topic]

    def last(self, topic: str) -> Message | None:
        got = self.on(topic)
        return got[-1] if got else None

    def wait_for(
        self, topic: str, predicate: Callable[[Message], bool], timeout: float, what: str
    ) -> Message:
        def find() -> Message | None:
            return next((m for m in reversed(self.on(topic)) if predicate(m)), None)

        def state() -> str:
            last = self.last(topic)
            seen = last.payload[:300].decode("utf-8", "replace") if last else "nothing"
            return f"{what} on {topic}; last message: {seen}"

        return wait_until(find, timeout, state)  # type: ignore[no-any-return]

    def close(self) -> None:
        if not self._killed:
            self.client.disconnect()
        self.client.loop_stop()

    def __enter__(self) -> MqttWatcher:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def json_of(m: Message) -> dict[str, Any]:
    return dict(json.loads(m.payload))


# --- events for the collector -----------------------------------------------------------------


def make_event(site: str, gate: str, seq: int, **kw: Any) -> Event:
    fields: dict[str, Any] = {
        "site": site,
        "gate": gate,
        "seq": seq,
        "uuid": str(uuidlib.uuid4()),
        "at": "2026-03-01T08:00:00+08:00",
        "clock_trusted": True,
        "kind": "decision",
        "decision": "allow",
        "reason": "ok",
        "direction": "out",
        "temperature_c": None,
        "pass_id": 1,
        "household": "1-1-101",
        "role": "resident",
        "versions": {"config": 1, "register": 1},
    }
    fields.update(kw)
    return Event(**fields)


# --- camera stages ----------------------------------------------------------------------------


class Stage:
    """Drops camera frames into a simulated gate's watch folder, as the camera would see them:
    sidecar first, then the image written under a temporary name and renamed (atomic)."""

    def __init__(self, stage: Path) -> None:
        self.dir = stage
        self.counter = 0
        self._png: dict[str, bytes] = {}

    def _render(self, qr: str | None) -> bytes:
        key = qr or ""
        if key not in self._png:
            image = render_card_frame(qr, module_px=4.5) if qr else render_empty_frame()
            ok, png = cv2.imencode(".png", image)
            assert ok, "PNG encoding failed"
            self._png[key] = png.tobytes()
        return self._png[key]

    def drop(self, qr: str | None, meta: dict[str, object] | None = None) -> Path:
        self.counter += 1
        name = f"{self.counter:06d}"
        if meta:
            (self.dir / f"{name}.json").write_text(json.dumps(meta), encoding="utf-8")
        tmp = self.dir / f".{name}.png.part"
        tmp.write_bytes(self._render(qr))
        final = self.dir / f"{name}.png"
        os.replace(tmp, final)
        return final

    def pending(self) -> int:
        return sum(1 for p in self.dir.iterdir() if p.suffix == ".png")

    def empty(self) -> bool:
        return self.pending() == 0


# --- gates ------------------------------------------------------------------------------------


def provision_gate(
    root: Path,
    server_dir: Path,
    gate: str,
    direction: Literal["in", "out", "both"],
    broker_url: str,
    **mqtt_settings: float | str,
) -> Path:
    """A simulated gate; extra [mqtt] keys (keepalive_s, resend_after_s, username, ...) go in
    gate.toml (strings as TOML strings). An mqtts:// broker: its certificate issued from the
    server directory's broker CA, as `menwei gate init` does."""
    d = root / gate
    credentials = None
    if parse_broker(broker_url).tls:
        credentials = gate_credentials(server_dir, gate)
        assert credentials is not None, f"{server_dir} has no broker CA (use_session_ca)"
    provision(
        d, server_dir, gate, direction, simulated=True, broker=broker_url, credentials=credentials
    )
    if mqtt_settings:
        toml = d / "gate.toml"
        extra = "".join(
            f"{k} = {json.dumps(v) if isinstance(v, str) else v}\n"
            for k, v in mqtt_settings.items()
        )
        text = toml.read_text(encoding="utf-8")
        head = f'[mqtt]\nbroker = "{broker_url}"\n'
        assert head in text, "gate.toml layout changed: cannot add [mqtt] settings"
        text = text.replace(head, head + extra)
        toml.write_text(text, encoding="utf-8")
        load_config(toml)  # still valid
    return d


def _ro(db: Path) -> sqlite3.Connection:
    return sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=10)


@dataclass(frozen=True)
class GateProgress:
    last_seq: int
    acked_seq: int
    backlog: int


def gate_progress(gate_dir: Path) -> GateProgress:
    """What the gate's own log says, read without opening it for writing."""
    db = gate_dir / "gate.db"
    if not db.exists():
        return GateProgress(0, 0, 0)
    with contextlib.closing(_ro(db)) as conn:
        try:
            # The log's position minus the current epoch's base: the seq of the newest event
            # (edge/store.py; the base moves when a gate that lost its history moves epoch).
            last = conn.execute(
                "SELECT COALESCE(MAX(seq), 0) - COALESCE((SELECT CAST(value AS INTEGER)"
                " FROM meta WHERE key = 'epoch_base'), 0) FROM events"
            ).fetchone()[0]
            backlog = conn.execute("SELECT COUNT(*) FROM outbox").fetchone()[0]
            row = conn.execute("SELECT value FROM meta WHERE key = 'acked_seq'").fetchone()
        except sqlite3.OperationalError:  # not migrated yet
            return GateProgress(0, 0, 0)
    return GateProgress(int(last), int(row[0]) if row else 0, int(backlog))


def gate_seqs(gate_dir: Path) -> list[int]:
    with contextlib.closing(_ro(gate_dir / "gate.db")) as conn:
        return [int(r[0]) for r in conn.execute("SELECT seq FROM events ORDER BY seq")]


def gate_document_versions(gate_dir: Path) -> dict[str, int]:
    """kind -> version of the signed documents (config, register, ...) the gate holds."""
    with contextlib.closing(_ro(gate_dir / "gate.db")) as conn:
        return {str(k): int(v) for k, v in conn.execute("SELECT kind, version FROM documents")}


def server_count(server_db: Path, gate: str | None = None) -> int:
    if not server_db.exists():
        return 0
    with contextlib.closing(_ro(server_db)) as conn:
        if gate is None:
            return int(conn.execute("SELECT COUNT(*) FROM events").fetchone()[0])
        return int(conn.execute("SELECT COUNT(*) FROM events WHERE gate = ?", [gate]).fetchone()[0])


class GateThread:
    """The real GateDaemon (simulated hardware) on a thread of this process."""

    def __init__(self, gate_dir: Path, broker_url: str, *, sim: SimTime | None = None) -> None:
        from edge.daemon import GateDaemon

        self.out = io.StringIO()
        config = load_config(gate_dir / "gate.toml")
        if sim is None:
            self.daemon = GateDaemon(config, broker=broker_url, out=self.out)
        else:
            self.daemon = GateDaemon(
                config, broker=broker_url, out=self.out, wall=sim.wall, monotonic=sim.monotonic
            )
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, name="gate-daemon", daemon=True)

    def _run(self) -> None:
        try:
            self.daemon.run()
        except BaseException as exc:  # reported by stop()
            self.error = exc

    def start(self) -> GateThread:
        self.thread.start()
        return self

    def stop(self) -> None:
        self.daemon.stop_event.set()
        self.thread.join(timeout=20)
        assert not self.thread.is_alive(), "gate daemon did not stop within 20s"
        if self.error is not None:
            raise AssertionError(f"gate daemon failed: {self.error!r}") from self.error

    def __enter__(self) -> GateThread:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


class Proc:
    """A `menwei ...` subprocess with its output in a file (shown when a test fails)."""

    def __init__(self, log: Path, *args: str) -> None:
        self.args = args
        self.log_path = log
        self._log = open(log, "ab")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "menwei.cli", *args],
            stdout=self._log,
            stderr=subprocess.STDOUT,
            cwd=REPO,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )

    def output(self) -> str:
        return self.log_path.read_text(encoding="utf-8", errors="replace")[-3000:]

    def alive(self) -> bool:
        return self.proc.poll() is None

    def kill(self) -> None:
        """SIGKILL: no cleanup of any kind runs in the process."""
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(timeout=10)

    def stop(self) -> int | None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._log.close()
        return self.proc.returncode


@contextlib.contextmanager
def menwei_process(log: Path, *args: str) -> Iterator[Proc]:
    p = Proc(log, *args)
    try:
        yield p
    finally:
        p.stop()
