"""The gate loop: camera → QR → decision core → store → relay/indicator, with MQTT sync beside.

Order for every decision (DESIGN.md principle 3): decide (pure), write the
event, its outbox entry and the new state in one transaction, and only then
move the relay. The loop never blocks on the network; sync runs on its own
thread from the outbox.

A decision that cannot be logged is not taken: while the store has a fault (a
full, read-only or failing card, a damaged database) every scan is refused with
`storage_fault`, the relay stays shut, the guard screen, the LEDs and the
retained status say so, one log line says what to do, and the loop retries
(every STORAGE_RETRY_S, and at each scan) until the store works again. The exit
button still opens (nobody is locked in by a full card); a guard override, which
cannot be recorded, is refused (the mechanical key remains). An override needs an
enrolled guard's PIN (edge/guards.py); the exit button needs nothing.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
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
from drivers.screening import Measurement
from edge.clock import DOCUMENT_FLOOR_MARGIN_S, GateClock
from edge.config import GateConfig
from edge.decision import (
    Decision,
    Direction,
    GateState,
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
from edge.guards import (
    ATTEMPTS_PER_MINUTE,
    NO_GUARDS,
    WRONG_PER_GUARD,
    GuardCheck,
    OverrideRefused,
    guards_path,
)
from edge.hardware import GateHardware, build_hardware
from edge.knowledge import Knowledge
from edge.provision import load_knowledge, trust_anchor
from edge.recording import console_line, decision_event, decision_json, simple_event
from edge.recovery import hold_data_dir
from edge.storage_fault import OVERRIDE_REFUSED, StorageFault, free_bytes, iso_utc
from edge.store import EpochMove, GateStore
from edge.sync import GateSync, SyncSettings
from edge.trust import Received, receive, save_received
from edge.watchdog import SystemdNotifier
from protocol.broker import parse_broker
from protocol.documents import UntrustedDocument
from protocol.errors import ProtocolError, Superseded
from protocol.events import Event, decode_passages
from protocol.passes import PREFIX
from protocol.reasons import message
from protocol.register_documents import DELTA, AwaitingSnapshot

log = logging.getLogger("menwei.gate")

STORAGE_RETRY_S = 5.0
"""While a storage fault lasts, how often the loop tries the store again (seconds)."""
SCAN_RETRY_S = 1.0
"""A scan retries the store at once, but not more often than this (seconds)."""


REFUSALS_REMEMBERED = 256
"""Documents refused for trust that the gate remembers (by digest): the same retained forgery
delivered again at every reconnect raises its alert once."""

RELAYED_AHEAD_MAX_S = DOCUMENT_FLOOR_MARGIN_S
"""How far a relayed passage may be dated ahead of this gate's clock and still count (gate
clocks differ a little; the same margin as for signed documents, edge/clock.py)."""


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
        # Held while running: `menwei gate recover` never moves the database from under us.
        self._data_lock = hold_data_dir(config.data_dir)
        # A storage fault at start (a full card, a damaged file) leaves the gate up, refusing.
        # Never creates the database: a missing one (perhaps beside its WAL) is a fault.
        self.store = GateStore(config.db_path, verify=True, resilient=True, create=False)
        # Documents refused because the gate does not trust them (edge.trust): how many, the
        # last one, and the digests of those already alerted.
        self.refused_documents = 0
        self.last_refusal: dict[str, Any] | None = None
        self._refused_digests: deque[str] = deque(maxlen=REFUSALS_REMEMBERED)
        # A register delta whose snapshot has not come yet: applied when it comes.
        self._waiting_delta: bytes | None = None
        self.know, state, floor = self._read_store()
        self._know_lock = threading.Lock()
        self._state_lock = threading.Lock()  # the loop and relayed passages both advance it
        self.clock = GateClock.configured(config.clock, floor, wall=wall, monotonic=monotonic)
        self._floor_from_documents()
        self.state = state
        self._storage_seen = 0  # StorageHealth.changes already acted on
        self._storage_episode = 0
        self._next_storage_retry = 0.0
        self._next_file_check = 0.0  # the database file still the one opened (check_file)
        self._fault_denied = 0  # scans refused during the current storage fault
        self._fault_exits = 0  # exit-button openings that could not be logged
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
        # Who may override from the guard page: guards.json, read again when it changes.
        self.guards = GuardCheck(
            guards_path(config.data_dir),
            clock=monotonic,
            on_lockout=lambda guard, s: self._inputs.put(("guard_locked", (guard, s))),
        )
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
                    config.tls_files,
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
            from edge.listen import beyond_loopback
            from edge.metrics import gate_registry

            host, _, port = self.config.guard.http.rpartition(":")
            exposed = beyond_loopback(self.config.guard.http)
            if exposed is not None:
                log.warning("%s", exposed)
            if not self.guards.enrolled():
                log.warning("guard page: %s", self.guards.error or NO_GUARDS.message.en)
            app = create_app(
                self.guard_state, self.request_override, gate_registry(self), host=host
            )
            self.guard_server = GuardServer(app, host, int(port))
            self.guard_server.start()
        self.hw.indicator.show("idle")
        self.systemd.ready()
        try:
            while not self.stop_event.is_set():
                self.systemd.alive()
                self._watch_storage()
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
        try:
            deleted = self.store.purge(before.isoformat(timespec="milliseconds"))
        except StorageFault:
            return 0  # in `store.health`: shown and retried by _watch_storage
        if deleted:
            log.info("retention: deleted %d acknowledged events before %s", deleted, before)
        return deleted

    def _drain(self, timeout_s: float) -> None:
        """Give sync a moment to empty the outbox before a finite run exits."""
        end = time.monotonic() + timeout_s
        while self.store_figures()["backlog"] and time.monotonic() < end:
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
        with contextlib.suppress(StorageFault):  # a store at fault keeps the floor it has
            self.store.save_clock_floor(self.clock.floor)
        self.store.close()
        self._data_lock.close()

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
        # An entry needs a temperature: the thermometer starts settling (~0.2 s) while the
        # pass is verified, and stops if the pass is refused.
        early = self._start_settling(meta.get("forehead_c")) if self._settle_early(scan) else None
        decision = decide(scan, None, self.state, self.know, now)
        if decision.outcome != "pending":
            if early is not None:
                early.cancel()
            return self.commit(decision, now, {}, scan.qr)
        if self._storage_down():
            if early is not None:
                early.cancel()
            return self._refuse_for_storage(decision, now)  # before anyone measures in vain
        p = decision.pass_
        entry = self.know.register.passes.get(p.pass_id) if p is not None else None
        self.measuring = {
            "name": entry.display_name if entry else None,
            "room": entry.room if entry else None,
        }  # the guard screen says so
        try:
            temperature, detail = (
                self.measure(meta.get("forehead_c")) if early is None else self._measured(early)
            )
        finally:
            self.measuring = None
        # The signature was verified once, for the pending decision: not again.
        verified = decision.verified
        decision = self.commit(
            decide(scan, temperature, self.state, self.know, now, verified=verified),
            now,
            detail,
            scan.qr,
        )
        if decision.reason == "fever_recheck":
            time.sleep(self.config.thermometer.recheck_delay_s)
            temperature, detail = self.measure(
                meta.get("recheck_forehead_c", meta.get("forehead_c"))
            )
            now = self.clock.now()
            decision = self.commit(
                decide(scan, temperature, self.state, self.know, now, verified=verified),
                now,
                detail,
                scan.qr,
            )
        return decision

    def _settle_early(self, scan: Scan) -> bool:
        """Worth starting the thermometer on its own thread before the pass is verified: an
        entry with a pass's prefix, a settle to overlap (one reading is quicker taken on this
        thread than handed to another), and a store that can log the outcome."""
        return (
            scan.direction == "in"
            and scan.qr.startswith(PREFIX)
            and self.hw.screener is not None
            and self.hw.screener.samples > 1
            and self.store.health.fault is None
        )

    def measure(self, simulated_forehead: object = None) -> tuple[Temperature, dict[str, Any]]:
        """Take a temperature now, on this thread: the reading, or why there is none."""
        self._step_up(simulated_forehead)
        return self._measured(None)

    def _start_settling(self, simulated_forehead: object) -> Measurement | None:
        self._step_up(simulated_forehead)
        return None if self.hw.screener is None else self.hw.screener.start()

    def _step_up(self, simulated_forehead: object) -> None:
        if self.hw.sim_bus is not None and isinstance(simulated_forehead, int | float):
            self.hw.sim_bus.object_c = float(simulated_forehead)  # the simulated person steps up

    def _measured(self, early: Measurement | None) -> tuple[Temperature, dict[str, Any]]:
        """The outcome of `early`, or of a measurement taken now when it is None."""
        if self.hw.screener is None:
            return Temperature(None, "no thermometer configured"), {}
        s = early.result() if early is not None else self.hw.screener.measure()
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
        if self._storage_down():
            return self._refuse_for_storage(decision, now)
        site, gate = self.config.gate.site, self.config.gate.id
        event = decision_event(
            decision, site=site, gate=gate, now=now, know=self.know, detail=detail, qr=qr
        )
        try:
            with self._state_lock:
                state = advance(self.state, decision, now, policy=self.know.policy, uuid=event.uuid)
                self.store.append(
                    lambda seq: _with_seq(event, seq),
                    state=state_to_json(state),
                    clock_floor=self.clock.floor,
                )
                self.state = state
        except StorageFault:
            return self._refuse_for_storage(decision, now)  # not logged: not taken
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

    def record(self, kind: str, reason: str, **kw: Any) -> Event | None:
        """Log a non-decision event (exit button, passage, alert, device) with its outbox entry.
        Returns None when the store has a fault (shown and retried by _watch_storage)."""
        now = self.clock.now()
        site, gate = self.config.gate.site, self.config.gate.id

        def build(seq: int) -> Event:
            return _with_seq(
                simple_event(kind, reason, site=site, gate=gate, now=now, know=self.know, **kw), seq
            )

        try:
            event = self.store.append(build, state=None, clock_floor=self.clock.floor)
        except StorageFault:
            log.warning("not logged (storage fault): %s %s", kind, reason)
            return None
        if self.sync is not None:
            self.sync.notify()
        return event

    # --- storage faults ------------------------------------------------------------------------

    def _read_store(self) -> tuple[Knowledge, GateState, float]:
        """Knowledge, state and clock floor from the store; with the store unreadable (a
        fault at start), the provisioned trust root alone: every scan is then refused until
        the store opens, and this is read again."""
        try:
            know = load_knowledge(self.config, self.store)
            self._store_read = True
            return know, state_from_json(self.store.state()), self.store.clock_floor()
        except StorageFault:
            self._store_read = False
            site, root = trust_anchor(self.config)
            return Knowledge(site, dict(root.keys), root=root), state_from_json(None), 0.0

    def _storage_down(self) -> bool:
        """Is the store at fault even after trying it again (at most every SCAN_RETRY_S)?"""
        if self.store.health.fault is None:
            return False
        self._retry_storage(SCAN_RETRY_S)
        return self.store.health.fault is not None

    def _retry_storage(self, interval_s: float) -> None:
        now = time.monotonic()
        if now < self._next_storage_retry - STORAGE_RETRY_S + interval_s:
            return
        self._next_storage_retry = now + STORAGE_RETRY_S
        with contextlib.suppress(StorageFault):
            self.store.probe(self.clock.now().utc.isoformat(timespec="seconds"))

    def _refuse_for_storage(self, decision: Decision, now: Now) -> Decision:
        """The decision cannot be logged, so it is not taken: deny, relay shut, say why."""
        refused = Decision(
            "deny", "storage_fault", "storage", decision.direction, pass_=decision.pass_
        )
        self.decisions[(refused.reason, refused.decision, refused.direction)] += 1
        self._new_fault_episode()
        self._fault_denied += 1
        self.hw.indicator.show("fault")
        self._show(decision_json(refused), now, refused.pass_.pass_id if refused.pass_ else None)
        print(
            console_line(refused, self.know, self.config.gate.language), file=self.out, flush=True
        )
        return refused

    def _new_fault_episode(self) -> None:
        """Count refusals and unlogged openings per fault: start again when a new one began."""
        episode = self.store.health.episodes
        if episode != self._storage_episode:
            self._storage_episode = episode
            self._fault_denied = self._fault_exits = 0

    def _watch_storage(self) -> None:
        """Act once on each storage transition, whichever thread met it: one log line, the
        LEDs, the retained status at once; while a fault lasts, retry every STORAGE_RETRY_S;
        when it clears, log what happened meanwhile and decide again."""
        health = self.store.health
        if health.fault is not None:
            self._retry_storage(STORAGE_RETRY_S)
        elif time.monotonic() >= self._next_file_check:
            self._next_file_check = time.monotonic() + STORAGE_RETRY_S
            with contextlib.suppress(StorageFault):  # recorded in health: acted on below
                self.store.check_file()
        if health.changes == self._storage_seen:
            return
        self._storage_seen = health.changes
        fault = health.fault
        if fault is not None:
            self._new_fault_episode()
            then = (
                f"the gate retries every {STORAGE_RETRY_S:.0f} s and resumes by itself"
                if fault.transient
                else "the gate does not decide on this database"
            )
            log.error(
                "STORAGE FAULT (%s): %s — every scan is refused (storage_fault), the relay "
                "stays shut; %s. Fix: %s",
                fault.kind,
                f"{fault.path}: {fault.error}",
                then,
                fault.advice.fix.en,
            )
            self.hw.indicator.show("fault")
        else:
            self._storage_recovered()
        if self.sync is not None and self.sync.connected:
            self.sync.publish_status()  # the dashboard hears it now, not in status_interval_s

    def _storage_recovered(self) -> None:
        if not self._store_read:  # the store could not be read at start: now it can
            know, state, floor = self._read_store()
            with self._know_lock:
                self.know = know
            with self._state_lock:
                self.state = state
            self.clock.floor = max(self.clock.floor, floor)
            self._floor_from_documents()
        cleared = self.store.health.cleared_fault
        kind, error, since = (
            (cleared[0].kind, cleared[0].error, iso_utc(cleared[1])) if cleared else ("", "", "")
        )
        log.warning(
            "storage works again after a %s fault since %s: %d scans were refused, %d exit-button"
            " openings could not be logged; deciding again",
            kind,
            since,
            self._fault_denied,
            self._fault_exits,
        )
        self.record(
            "device",
            "storage_ok",
            detail={
                "fault": kind,
                "error": error,
                "since": since,
                "refused": self._fault_denied,
                "unlogged_exits": self._fault_exits,
            },
        )
        self.hw.indicator.show("idle")

    # --- inputs and devices ------------------------------------------------------------------

    def _handle_inputs(self) -> None:
        while True:
            try:
                what, value = self._inputs.get_nowait()
            except queue.Empty:
                break
            if what == "exit":
                # Egress is never refused: with the store at fault the opening is counted and
                # reported once the store works again (storage_ok).
                logged = self.record(
                    "exit_request", "exit_request", decision="allow", direction="out"
                )
                if logged is None:
                    self._new_fault_episode()
                    self._fault_exits += 1
                self.decisions[("exit_request", "allow", "out")] += 1
                self.hw.relay.pulse(self.config.gpio.relay_pulse_s)
                self.hw.indicator.show("allow" if logged is not None else "fault")
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
                if event is None:  # every override is recorded: one that cannot be is refused
                    log.warning("guard override by %s refused: it cannot be logged", guard)
                    self._refuse_for_storage(
                        Decision("deny", "storage_fault", "storage", direction), self.clock.now()
                    )
                    continue
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
            elif what == "guard_locked":
                self._guard_locked(*value)
            elif what == "door":
                self._record_door(self.doors.changed(value))
        self._record_door(self.doors.check_held())

    def _guard_locked(self, guard: str | None, seconds: float) -> None:
        """Someone is guessing PINs on the guard page: say so in the journal and raise an alert
        (the collector's alert from the event; the status names the locked guards)."""
        minutes = max(1, round(seconds / 60))
        if guard is None:
            log.warning(
                "guard page: more than %d override attempts in a minute: refusing all for a"
                " minute (someone may be guessing PINs)",
                ATTEMPTS_PER_MINUTE,
            )
        else:
            log.warning(
                "guard page: %d wrong PINs for guard %s: locked for %d minutes",
                WRONG_PER_GUARD,
                guard,
                minutes,
            )
        self.record(
            "alert",
            "guard_locked",
            detail={
                "priority": "high",
                "guard": guard,
                "cause": "rate" if guard is None else "wrong_pin",
                "minutes": minutes,
            },
        )

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
        """A signed document from the broker (the sync thread): checked against the gate's
        trust root, which its chain may move forward (edge.trust); applied when newer.
        Applied before it is stored: a stored document the gate cannot apply would stop it
        from starting again (load_knowledge) and block a corrected one. One the gate does
        not trust is refused, logged, counted in the status and raised as an
        `untrusted_document` alert. A register delta that came before its snapshot waits for
        it (one: the newest)."""
        with self._know_lock:
            arrived = self.clock.now().utc
            try:
                got = receive(self.know, kind, raw, arrived)
            except UntrustedDocument as exc:
                self._refuse_untrusted(kind, raw, exc)
                return
            except Superseded as exc:
                log.info("ignored %s document: %s", kind, exc)
                return
            except AwaitingSnapshot as exc:
                log.info("holding %s document: %s", kind, exc)
                self._waiting_delta = raw
                return
            except ProtocolError as exc:
                log.warning("refused %s document: %s", kind, exc)
                return
            if not got.changed:
                if got.know.behind(got.doc):
                    doc = got.doc
                    log.info(
                        "ignored %s document v%d (root %d): older than the one held",
                        kind,
                        doc.version,
                        doc.root,
                    )
                return
            # Verified, so decided with now; with the store at fault, stored when it is
            # delivered again.
            with contextlib.suppress(StorageFault):
                save_received(self.store, got, raw, arrived)
            self.know = got.know
            self._log_received(got)
            self._floor_from_documents()
        if kind == "register" and self._waiting_delta is not None:
            waiting, self._waiting_delta = self._waiting_delta, None
            self.on_document(DELTA, waiting)

    def _log_received(self, got: Received) -> None:
        root = got.know.trust_root()
        if got.advanced_from is not None:
            log.warning(
                "trust root %d -> %d (keys %s), from the chain of a %s document",
                got.advanced_from,
                root.version,
                sorted(root.keys),
                got.doc.kind,
            )
        for kind, held in sorted(got.withdrawn.items()):
            log.warning(
                "%s v%d (root %d) was signed by key %d, which trust root %d drops: it no longer"
                " applies%s",
                kind,
                held.version,
                held.root,
                held.key_id,
                root.version,
                "" if kind == "freshness" else "; the guard confirms passages until it is replaced",
            )
        if got.withdrawn:
            withdrawn = {k: h.to_json() for k, h in sorted(got.withdrawn.items())}
            detail = {"root": root.version, "withdrawn": withdrawn}
            self.record("alert", "document_withdrawn", detail=detail)
        if got.applied:
            # Statements come every few minutes: not worth a line in the journal each.
            level = logging.DEBUG if got.doc.kind == "freshness" else logging.INFO
            doc = got.doc
            log.log(level, "applied %s version %d (root %d)", doc.kind, doc.version, doc.root)

    def _refuse_untrusted(self, kind: str, raw: bytes, exc: UntrustedDocument) -> None:
        """Log, count and alert (once per distinct document) a document the gate does not
        trust: a retired or foreign key, a forged signature, a broken or forked chain."""
        claimed = _claimed(raw)
        refusal = {
            "kind": kind,
            "key_id": claimed.get("key_id"),
            "root": claimed.get("root", 0),
            "version": claimed.get("version"),
            "reason": str(exc)[:300],
            "at": self.clock.now().utc.isoformat(timespec="seconds"),
        }
        self.refused_documents += 1
        self.last_refusal = refusal
        log.warning(
            "refused untrusted %s document (key %s, root %s, version %s): %s",
            kind,
            refusal["key_id"],
            refusal["root"],
            refusal["version"],
            exc,
        )
        digest = hashlib.sha256(raw).hexdigest()
        if digest in self._refused_digests:
            return
        self._refused_digests.append(digest)
        trust_root = self.know.trust_root().version
        detail = {"priority": "high", **refusal, "trust_root": trust_root}
        self.record("alert", "untrusted_document", detail=detail)

    def _floor_from_documents(self) -> None:
        """Signed documents prove the time is at least when they were issued (less a margin):
        the clock floor rises to that, persisted (with the next decision when the store is
        faulted), and a clock behind it is not trusted."""
        newest = self.know.newest_issued_at()
        if newest is None:
            return
        ahead = self.clock.raise_floor(newest)
        with contextlib.suppress(StorageFault):
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
        """Passages accepted by other gates of the site (one relayed message: the batch form
        or, from older collectors, a single passage): count them here too, and save the
        state once. Bad passages are skipped with one warning per message."""
        try:
            passages, bad = decode_passages(raw)
        except ProtocolError as exc:
            log.warning("ignored bad passage message: %s", exc)
            return
        if bad:
            log.warning("ignored %d bad passages of a relayed message: %s", len(bad), bad[0])
        mine = [
            (p, datetime.fromisoformat(p.at))  # aware: decode_passages checked the offset
            for p in passages
            if p.site == self.config.gate.site and p.gate != self.config.gate.id
        ]
        # A passage dated ahead of this gate's clock is not counted: record_passage prunes by
        # the passage's time, so one dated 2099 (a gate's clock far off, or a compromised
        # gate's login) would empty every household's counters here.
        latest = self.clock.now().utc + timedelta(seconds=RELAYED_AHEAD_MAX_S)
        ahead = [p for p, at in mine if at > latest]
        if ahead:
            log.warning(
                "ignored %d relayed passages dated ahead of this gate's clock (e.g. %s at %s)",
                len(ahead),
                ahead[0].gate,
                ahead[0].at,
            )
        counted = [(p, at) for p, at in mine if at <= latest]
        if not counted:
            return
        with self._state_lock:
            for passage, at in counted:
                self.state = record_passage(
                    self.state,
                    self.know.policy,
                    pass_id=passage.pass_id,
                    household=passage.household,
                    role=passage.role,
                    direction=passage.direction,
                    at=at,
                    uuid=passage.uuid,
                )
            with contextlib.suppress(StorageFault):  # saved with the next decision instead
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

    def request_override(
        self, guard: str, pin: str, reason: str, direction: str
    ) -> OverrideRefused | None:
        """From the guard page (its own thread): when `pin` is the enrolled guard's PIN
        (edge/guards.py: limits, lockouts), the loop opens the gate and logs the override under
        the enrolled name. Returns why not otherwise; also while the store has a fault: an
        override is always recorded, so one that cannot be is not made (the mechanical key
        remains)."""
        if self.store.health.fault is not None:
            return STORAGE_REFUSED
        checked = self.guards.verify(guard, pin)
        if isinstance(checked, OverrideRefused):
            if checked.code == "wrong_pin":
                log.warning("guard page: wrong guard name or PIN (name given: %r)", guard[:32])
            elif checked.code == "guards_unreadable":
                log.error("guard page: override refused: %s", self.guards.error)
            return checked
        self._inputs.put(("override", (checked.name, reason, direction)))
        return None

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
        storage = self.store.health.to_json()
        fault = self.store.health.fault
        since = self.store.health.since
        if fault is not None:
            storage |= {
                "message": fault.advice.message.as_dict(),
                "fix": fault.advice.fix.as_dict(),
                "since_local": None
                if since is None
                else datetime.fromtimestamp(since, self.know.policy.tz).strftime("%H:%M:%S"),
            }
        return {
            "gate": f"{self.config.gate.site}/{self.config.gate.id}",
            "last": self.recent[0] if self.recent else None,
            "measuring": self.measuring,
            "last_age_s": time.monotonic() - self._last_shown,
            "recent": list(self.recent),
            "guards_enrolled": self.guards.enrolled(),  # none: the page says how to enrol
            "health": {
                "online": bool(self.sync and self.sync.connected),
                "backlog": self.store_figures()["backlog"],
                "storage": storage,
                "camera": self.hw.camera.state,
                "thermometer_ok": self.hw.thermometer is not None
                and (stats is None or stats.failures == 0 or stats.reads > stats.failures),
                "clock_trusted": now.trusted,
                "data_age_h": age,
                "data_stale": age is None or age > self.know.policy.max_data_age_h,
            },
        }

    def store_figures(self) -> dict[str, int | None]:
        """backlog, last_seq and acked_seq of the store (None each while it cannot be read)."""
        try:
            return {
                "backlog": self.store.backlog(),
                "last_seq": self.store.last_seq(),
                "acked_seq": self.store.acked_seq(),
            }
        except StorageFault:
            return {"backlog": None, "last_seq": None, "acked_seq": None}

    def data_free_bytes(self) -> int | None:
        """Bytes free on the data partition (None when the file system cannot be asked)."""
        return free_bytes(self.config.data_dir)

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
            **self.store_figures(),
            "storage": self.store.health.to_json(),
            "versions": self.know.versions(),
            "trust_root": self.know.trust_root().version,
            "refused_documents": {"count": self.refused_documents, "last": self.last_refusal},
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
            "guards": {
                "enrolled": self.guards.enrolled(),
                "locked": self.guards.locked_guards(),
                "lockouts": self.guards.lockouts,
            },
        }


STORAGE_REFUSED = OverrideRefused("storage_fault", OVERRIDE_REFUSED, 503)


def _claimed(raw: bytes) -> dict[str, Any]:
    """What a refused document says of itself (key id, root, version), for the log and the
    alert; {} when it does not say."""
    try:
        data = json.loads(raw)
    except (ValueError, RecursionError):
        return {}
    if not isinstance(data, dict):
        return {}
    return {
        k: v
        for k in ("key_id", "root", "version")
        if isinstance(v := data.get(k), int) and not isinstance(v, bool)
    }


def _iso(t: datetime | None) -> str | None:
    return None if t is None else t.isoformat(timespec="seconds")


def _with_seq(event: Event, seq: int) -> Event:
    return replace(event, seq=seq)


def _indicator_kind(decision: Decision) -> IndicatorKind:
    if decision.outcome == "allow":
        return "allow"
    if decision.reason == "storage_fault":
        return "fault"
    return "recheck" if decision.reason == "fever_recheck" else "deny"
