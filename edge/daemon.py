"""The gate loop: camera → QR → decision core → store → relay/indicator, with MQTT sync beside.

Order for every decision (DESIGN.md principle 3): decide (pure), write the
event, its outbox entry and the new state in one transaction, and only then
move the relay. The loop never blocks on the network; sync runs on its own
thread from the outbox.
"""

from __future__ import annotations

import logging
import queue
import sys
import threading
import time
from collections import Counter, deque
from collections.abc import Callable
from dataclasses import asdict, replace
from datetime import datetime, timedelta
from typing import Any, TextIO

from drivers.camera import Frame
from drivers.inputs import DoorContact, ExitButton
from drivers.outputs import IndicatorKind
from drivers.qr import ScanDebouncer, pick_single_pass
from edge.clock import GateClock
from edge.config import GateConfig
from edge.decision import (
    Decision,
    Direction,
    Now,
    Scan,
    Temperature,
    advance,
    decide,
    outside_now,
    record_passage,
    state_from_json,
    state_to_json,
)
from edge.door import DoorEvent, DoorWatch
from edge.hardware import GateHardware, build_hardware
from edge.provision import (
    accept_document,
    apply_document,
    document_keys,
    load_knowledge,
)
from edge.recording import console_line, decision_event, decision_json, simple_event
from edge.store import EpochMove, GateStore
from edge.sync import GateSync, SyncSettings
from edge.watchdog import SystemdNotifier
from protocol.broker import parse_broker
from protocol.documents import decode_document
from protocol.errors import ProtocolError
from protocol.events import Event, Passage
from protocol.passes import PREFIX
from protocol.reasons import message

log = logging.getLogger("menwei.gate")


class GateDaemon:
    def __init__(
        self,
        config: GateConfig,
        *,
        broker: str | None = None,
        hardware: GateHardware | None = None,
        out: TextIO = sys.stdout,
        wall: Callable[[], float] = time.time,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        """`wall` and `monotonic` are the system clocks (seconds) the gate's clock reads;
        tests of site life pass simulated ones that run days ahead."""
        self.config = config
        self.out = out
        self.store = GateStore(config.db_path)
        self.anchor = document_keys(config, self.store)
        # Documents refused for their signing key: perhaps the next config introduces it.
        self._held: dict[str, bytes] = {}
        self.know = load_knowledge(config, self.store)
        self._know_lock = threading.Lock()
        self._state_lock = threading.Lock()  # the loop and relayed passages both advance it
        self.clock = GateClock.configured(
            config.clock, self.store.clock_floor(), wall=wall, monotonic=monotonic
        )
        self._floor_from_documents()
        self.state = state_from_json(self.store.state())
        self.hw = hardware if hardware is not None else build_hardware(config)
        self.debouncer = ScanDebouncer(config.camera.scan_holdoff_s, monotonic)
        self.stop_event = threading.Event()
        self._inputs: queue.Queue[tuple[str, Any]] = queue.Queue()
        self.recent: deque[dict[str, Any]] = deque(maxlen=10)  # for the guard's screen
        self.measuring: dict[str, Any] | None = None  # whose temperature is being taken
        self._last_shown = 0.0
        self._camera_state = "recovering"
        self.doors = DoorWatch(config.gpio.relay_pulse_s, config.gpio.door_alert_s)
        self.decisions: Counter[tuple[str, str, str]] = Counter()  # (reason, decision, direction)
        self.systemd = SystemdNotifier()
        self._next_purge = 0.0  # purge once at start, then every purge_interval_h
        self.guard_server: Any = None
        g = config.gpio
        self.exit_button = (
            ExitButton(self.hw.pins, g.exit_button_pin, lambda: self._inputs.put(("exit", True)))
            if g.exit_button_pin is not None
            else None
        )
        self.door = (
            DoorContact(
                self.hw.pins, g.door_pin, lambda is_open: self._inputs.put(("door", is_open))
            )
            if g.door_pin is not None
            else None
        )
        url = broker or config.mqtt.broker
        self.sync: GateSync | None = None
        if url != "none":
            m = config.mqtt
            self.sync = GateSync(
                SyncSettings(
                    config.gate.site,
                    config.gate.id,
                    parse_broker(url),
                    m.username,
                    m.password,
                    m.keepalive_s,
                    m.batch_size,
                    m.window,
                    m.resend_after_s,
                    m.status_interval_s,
                ),
                self.store,
                on_document=self.on_document,
                on_passage=self.on_passage,
                on_history_lost=self.on_history_lost,
                status=self.status,
            )

    # --- lifecycle -------------------------------------------------------------------------

    def run(self, *, until_eof: bool = False) -> None:
        if self.sync is not None:
            self.sync.start()
        if self.config.guard.http:
            from edge.guard_page import GuardServer, create_app
            from edge.metrics import gate_registry

            host, _, port = self.config.guard.http.rpartition(":")
            app = create_app(self.guard_state, self.request_override, gate_registry(self))
            self.guard_server = GuardServer(app, host, int(port))
            self.guard_server.start()
        self.hw.indicator.show("idle")
        self.systemd.ready()
        try:
            while not self.stop_event.is_set():
                self.systemd.alive()
                self._maybe_purge()
                self._log_clock_jumps()
                self._handle_inputs()
                frame = self.hw.camera.read(0.2)
                self._watch_camera()
                if frame is None:
                    if until_eof and self.hw.camera.at_eof:
                        break
                    continue
                self.handle_frame(frame)
            if until_eof and self.sync is not None:
                self._drain(timeout_s=10.0)
        finally:
            self.close()

    def _log_clock_jumps(self) -> None:
        """Time is a security input: every jump of the wall clock is in the log."""
        for jump in self.clock.take_jumps():
            log.warning("wall clock jumped %+.1f s", jump.seconds)
            self.record(
                "device",
                "clock_jump",
                detail={
                    "from": jump.from_utc.isoformat(),
                    "to": jump.to_utc.isoformat(),
                    "seconds": round(jump.seconds, 3),
                },
            )

    def _maybe_purge(self) -> int:
        """Retention: drop acknowledged events older than [storage] retention_days."""
        if time.monotonic() < self._next_purge:
            return 0
        storage = self.config.storage
        self._next_purge = time.monotonic() + storage.purge_interval_h * 3600
        before = self.clock.now().utc - timedelta(days=storage.retention_days)
        deleted = self.store.purge(before.isoformat(timespec="milliseconds"))
        if deleted:
            log.info("retention: deleted %d acknowledged events before %s", deleted, before)
        return deleted

    def _drain(self, timeout_s: float) -> None:
        """Give sync a moment to empty the outbox before a finite run exits."""
        end = time.monotonic() + timeout_s
        while self.store.backlog() and time.monotonic() < end:
            time.sleep(0.1)

    def close(self) -> None:
        self.systemd.stopping()
        self.hw.close()  # outputs to their safe state first
        if self.guard_server is not None:
            self.guard_server.close()
        for part in (self.exit_button, self.door):
            if part is not None:
                part.close()
        if self.sync is not None:
            self.sync.close()
        self.store.save_clock_floor(self.clock.floor)
        self.store.close()

    # --- frames and scans ----------------------------------------------------------------------

    def handle_frame(self, frame: Frame) -> None:
        texts = self.hw.decoder.decode(frame.image)
        if not self.debouncer.update(texts):
            return
        direction = self._direction(frame)
        pick = pick_single_pass(texts, lambda t: t.startswith(PREFIX))
        if pick == "multiple":
            now = self.clock.now()
            self.commit(Decision("deny", "multiple_codes", "scan", direction), now, {})
            return
        qr = pick if pick is not None else texts[0]
        self.handle_scan(Scan(qr, direction), frame.meta or {})

    def _direction(self, frame: Frame) -> Direction:
        configured = self.config.gate.direction
        if configured != "both":
            return configured
        asked = (frame.meta or {}).get("direction")
        return "out" if asked == "out" else "in"

    def handle_scan(self, scan: Scan, meta: dict[str, object]) -> Decision:
        now = self.clock.now()
        decision = decide(scan, None, self.state, self.know, now)
        if decision.outcome != "pending":
            return self.commit(decision, now, {}, scan.qr)
        p = decision.pass_
        entry = self.know.register.passes.get(p.pass_id) if p is not None else None
        self.measuring = {
            "name": entry.display_name if entry else None,
            "room": entry.room if entry else None,
        }  # the guard screen says so
        try:
            temperature, detail = self.measure(meta.get("forehead_c"))
        finally:
            self.measuring = None
        decision = self.commit(
            decide(scan, temperature, self.state, self.know, now), now, detail, scan.qr
        )
        if decision.reason == "fever_recheck":
            time.sleep(self.config.thermometer.recheck_delay_s)
            temperature, detail = self.measure(
                meta.get("recheck_forehead_c", meta.get("forehead_c"))
            )
            now = self.clock.now()
            decision = self.commit(
                decide(scan, temperature, self.state, self.know, now), now, detail, scan.qr
            )
        return decision

    def measure(self, simulated_forehead: object = None) -> tuple[Temperature, dict[str, Any]]:
        if self.hw.sim_bus is not None and isinstance(simulated_forehead, int | float):
            self.hw.sim_bus.object_c = float(simulated_forehead)  # the simulated person steps up
        if self.hw.screener is None:
            return Temperature(None, "no thermometer configured"), {}
        s = self.hw.screener.measure()
        detail = {
            "skin_c": s.skin_c,
            "ambient_c": s.ambient_c,
            "samples": s.samples_taken,
            "screening_error": s.error,
        }
        return Temperature(s.body_c, s.error), detail

    # --- commit: log first, then act ---------------------------------------------------------

    def commit(
        self, decision: Decision, now: Now, detail: dict[str, Any], qr: str | None = None
    ) -> Decision:
        site, gate = self.config.gate.site, self.config.gate.id
        event = decision_event(
            decision, site=site, gate=gate, now=now, know=self.know, detail=detail, qr=qr
        )
        with self._state_lock:
            state = advance(self.state, decision, now, policy=self.know.policy, uuid=event.uuid)
            self.store.append(
                lambda seq: _with_seq(event, seq),
                state=state_to_json(state),
                clock_floor=self.clock.floor,
            )
            self.state = state
        self.decisions[(decision.reason, decision.decision, decision.direction)] += 1
        if decision.outcome == "allow":
            self.hw.relay.pulse(self.config.gpio.relay_pulse_s)
            p = decision.pass_
            self.doors.granted(
                p.pass_id if p else None, p.household if p else None, decision.direction
            )
        self.hw.indicator.show(_indicator_kind(decision))
        self._show(decision_json(decision), now, decision.pass_.pass_id if decision.pass_ else None)
        if decision.alert is not None:
            p = decision.pass_
            self.record(
                "alert",
                decision.alert,
                direction=decision.direction,
                pass_id=p.pass_id if p else None,
                household=p.household if p else None,
                temperature_c=decision.temperature_c,
                detail={"priority": "high", "decision_reason": decision.reason},
            )
        print(
            console_line(decision, self.know, self.config.gate.language), file=self.out, flush=True
        )
        if self.sync is not None:
            self.sync.notify()
        return decision

    def record(self, kind: str, reason: str, **kw: Any) -> Event:
        """Log a non-decision event (exit button, passage, alert, device) with its outbox entry."""
        now = self.clock.now()
        site, gate = self.config.gate.site, self.config.gate.id

        def build(seq: int) -> Event:
            return _with_seq(
                simple_event(kind, reason, site=site, gate=gate, now=now, know=self.know, **kw), seq
            )

        event = self.store.append(build, state=None, clock_floor=self.clock.floor)
        if self.sync is not None:
            self.sync.notify()
        return event

    # --- inputs and devices ------------------------------------------------------------------

    def _handle_inputs(self) -> None:
        while True:
            try:
                what, value = self._inputs.get_nowait()
            except queue.Empty:
                break
            if what == "exit":
                self.record("exit_request", "exit_request", decision="allow", direction="out")
                self.decisions[("exit_request", "allow", "out")] += 1
                self.hw.relay.pulse(self.config.gpio.relay_pulse_s)
                self.hw.indicator.show("allow")
                self.doors.granted(None, None, "out")
            elif what == "override":
                guard, reason, direction = value
                event = self.record(
                    "override",
                    "guard_override",
                    decision="allow",
                    direction=direction,
                    detail={"guard": guard, "reason": reason},
                )
                self.decisions[("guard_override", "allow", direction)] += 1
                self.hw.relay.pulse(self.config.guard.override_pulse_s)
                self.hw.indicator.show("allow")
                self.doors.granted(None, None, direction)
                shown = {
                    "decision": "allow",
                    "reason": "guard_override",
                    "direction": direction,
                    "message": message("guard_override").as_dict(),
                    "guard_required": False,
                    "temperature_c": None,
                }
                self._show(shown, self.clock.now(), None)
                log.info("guard override by %s (%s): event %d", guard, reason, event.seq)
            elif what == "door":
                self._record_door(self.doors.changed(value))
        self._record_door(self.doors.check_held())

    def _record_door(self, door: DoorEvent | None) -> None:
        if door is None:
            return
        g = door.grant
        self.record(
            door.kind,
            door.reason,
            direction=g.direction if g else None,
            pass_id=g.pass_id if g else None,
            household=g.household if g else None,
            detail={"priority": door.priority} if door.priority else None,
        )

    def _watch_camera(self) -> None:
        state = self.hw.camera.state
        if state == self._camera_state:
            return
        previous, self._camera_state = self._camera_state, state
        if state == "lost":
            self.hw.indicator.show("fault")
            self.record("device", "camera_lost", detail={"error": self.hw.camera.last_error})
            print(f"[FAULT] camera lost: {self.hw.camera.last_error}", file=self.out, flush=True)
        elif state == "ok" and previous == "lost":
            self.hw.indicator.show("idle")
            self.record("device", "camera_ok")

    # --- documents and status (called from the sync thread) ------------------------------------

    def on_document(self, kind: str, raw: bytes) -> None:
        try:
            with self._know_lock:
                keys = {**self.anchor, **self.know.trust_keys}
                doc = decode_document(raw, kind=kind, site=self.know.site, trust_keys=keys)
                # Applied before it is stored: a stored document the gate cannot apply would
                # stop it from starting again (load_knowledge) and block a corrected one.
                arrived = self.clock.now().utc
                know = apply_document(self.know, kind, raw, self.anchor, arrived)
                if accept_document(self.store, doc, raw, arrived):
                    self.know = know
                    # Statements come every few minutes: not worth a line in the journal each.
                    level = logging.DEBUG if kind == "freshness" else logging.INFO
                    log.log(level, "applied %s version %d", kind, doc.version)
                    self._floor_from_documents()
        except ProtocolError as exc:
            log.warning("refused %s document: %s", kind, exc)
            if kind != "config":
                self._held[kind] = raw  # perhaps signed by a key the next config brings
            return
        self._held.pop(kind, None)
        if kind == "config":
            for held_kind in ("register", "freshness"):
                held = self._held.pop(held_kind, None)
                if held is not None:
                    self.on_document(held_kind, held)

    def _floor_from_documents(self) -> None:
        """Signed documents prove the time is at least when they were issued (less a margin):
        the clock floor rises to that, persisted, and a clock behind it is not trusted."""
        newest = self.know.newest_issued_at()
        if newest is None:
            return
        ahead = self.clock.raise_floor(newest)
        self.store.save_clock_floor(self.clock.floor)
        if ahead > 0:
            log.warning(
                "the clock is %.0f s behind a signed document issued at %s: time-dependent"
                " decisions need the guard until it is right (check the time daemon, or the"
                " server's clock if it runs ahead; `menwei gate clock`)",
                ahead,
                newest.isoformat(timespec="seconds"),
            )

    def on_passage(self, raw: bytes) -> None:
        """A passage accepted by another gate of the site: count it here too."""
        try:
            passage = Passage.decode(raw)
        except ProtocolError as exc:
            log.warning("ignored bad passage: %s", exc)
            return
        if passage.site != self.config.gate.site or passage.gate == self.config.gate.id:
            return
        with self._state_lock:
            self.state = record_passage(
                self.state,
                self.know.policy,
                pass_id=passage.pass_id,
                household=passage.household,
                role=passage.role,
                direction=passage.direction,
                at=datetime.fromisoformat(passage.at),
                uuid=passage.uuid,
            )
            self.store.save_state(state_to_json(self.state))

    def on_history_lost(self, collector_seq: int) -> EpochMove:
        """The collector holds events of this gate's epoch that its database lost (see
        GateSync): move to a new epoch and log a high-priority `gate_history_lost` alert
        with the move, in one transaction (GateStore.start_new_epoch)."""
        now = self.clock.now()
        site, gate = self.config.gate.site, self.config.gate.id

        def alert(move: EpochMove, seq: int) -> Event:
            detail = {"priority": "high", **move.detail()}
            return _with_seq(
                simple_event(
                    "alert",
                    "gate_history_lost",
                    site=site,
                    gate=gate,
                    now=now,
                    know=self.know,
                    detail=detail,
                ),
                seq,
            )

        move, _event = self.store.start_new_epoch(collector_seq, alert)
        print(
            f"[FAULT] {message('gate_history_lost').zh} / {message('gate_history_lost').en}:"
            f" epoch {move.lost_epoch} -> {move.epoch}",
            file=self.out,
            flush=True,
        )
        return move

    # --- the guard's screen ----------------------------------------------------------------

    def request_override(self, guard: str, reason: str, direction: str) -> None:
        """From the guard page (its own thread): the loop opens the gate and logs it."""
        self._inputs.put(("override", (guard, reason, direction)))

    def _show(self, shown: dict[str, Any], now: Now, pass_id: int | None) -> None:
        entry = self.know.register.passes.get(pass_id) if pass_id is not None else None
        local = now.utc.astimezone(self.know.policy.tz)
        self.recent.appendleft(
            {
                **shown,
                "name": entry.display_name if entry else None,
                "room": entry.room if entry else None,
                "time": local.strftime("%H:%M:%S"),
            }
        )
        self._last_shown = time.monotonic()

    def guard_state(self) -> dict[str, Any]:
        now = self.clock.now()
        age = self.know.data_age_hours(now.utc)
        stats = getattr(self.hw.thermometer, "stats", None)
        return {
            "gate": f"{self.config.gate.site}/{self.config.gate.id}",
            "last": self.recent[0] if self.recent else None,
            "measuring": self.measuring,
            "last_age_s": time.monotonic() - self._last_shown,
            "recent": list(self.recent),
            "health": {
                "online": bool(self.sync and self.sync.connected),
                "backlog": self.store.backlog(),
                "camera": self.hw.camera.state,
                "thermometer_ok": self.hw.thermometer is not None
                and (stats is None or stats.failures == 0 or stats.reads > stats.failures),
                "clock_trusted": now.trusted,
                "data_age_h": age,
                "data_stale": age is None or age > self.know.policy.max_data_age_h,
            },
        }

    def totals(self) -> dict[str, int]:
        """Since start: pass decisions, and how many allowed or denied (openings included)."""
        allowed = sum(n for (_, d, _), n in self.decisions.items() if d == "allow")
        total = sum(self.decisions.values())
        return {"decisions": total, "allowed": allowed, "denied": total - allowed}

    def status(self) -> dict[str, Any]:
        now = self.clock.now()
        thermometer = self.hw.thermometer
        stats = getattr(thermometer, "stats", None)
        return {
            "gate": self.config.gate.id,
            "site": self.config.gate.site,
            "at": now.utc.isoformat(timespec="seconds"),
            "direction": self.config.gate.direction,
            "backlog": self.store.backlog(),
            "last_seq": self.store.last_seq(),
            "acked_seq": self.store.acked_seq(),
            "versions": self.know.versions(),
            "data_age_h": self.know.data_age_hours(now.utc),
            "data_as_of": _iso(self.know.fresh_as_of()),
            "max_data_age_h": self.know.policy.max_data_age_h,
            "freshness": None
            if self.know.statement is None
            else {
                "serial": self.know.statement.serial,
                "issued_at": _iso(self.know.statement.issued_at),
            },
            "clock": {"trusted": now.trusted, "jumps": self.clock.jump_count},
            "camera": {"state": self.hw.camera.state, "error": self.hw.camera.last_error},
            "thermometer": asdict(stats) if stats is not None else None,
            "counts": self.totals(),
            "outside": len(outside_now(self.state, self.know.policy, now)),
        }


def _iso(t: datetime | None) -> str | None:
    return None if t is None else t.isoformat(timespec="seconds")


def _with_seq(event: Event, seq: int) -> Event:
    return replace(event, seq=seq)


def _indicator_kind(decision: Decision) -> IndicatorKind:
    if decision.outcome == "allow":
        return "allow"
    return "recheck" if decision.reason == "fever_recheck" else "deny"
