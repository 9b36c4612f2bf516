"""`menwei gate doctor`: check each configured device and say how to fix what fails.

Each check opens the real backend the config names (or its simulated peer),
does one real operation (a frame, an I2C read with PEC, a GPIO setup) and
returns one line: pass or fail, what was seen, and the fix an installer needs.
"""

from __future__ import annotations

import errno
import socket
import ssl
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path

from drivers.camera import open_source
from drivers.errors import DriverError, PecError
from drivers.gpio import FakePins, Pins, RPiGPIOPins
from drivers.mlx90614 import MLX90614, SMBusLike, open_smbus
from drivers.sim_i2c import SimulatedMLX90614Bus
from edge.clock import UNTRUSTED_EFFECT, GateClock
from edge.config import GateConfig
from edge.guards import guards_path
from edge.provision import load_knowledge
from edge.storage_fault import (
    ADVICE,
    MIN_FREE_BYTES,
    RECOVERY_STEPS_EN,
    StorageFault,
    filesystem_fault,
    free_bytes,
    inspect_database,
    orphan_logs,
)
from edge.store import GateStore
from protocol.broker import parse_broker
from protocol.broker_tls import BrokerTlsError, certificate_info, client_context, tls_failure
from protocol.errors import ProtocolError
from protocol.files import exposed


@dataclass(frozen=True)
class Check:
    device: str
    ok: bool
    detail: str
    fix: str = ""
    effect: str = ""
    """What the failure does to the gate's decisions, when that is not obvious."""

    def line(self) -> str:
        lines = [f"{'PASS' if self.ok else 'FAIL'} {self.device:12s} {self.detail}"]
        if not self.ok:
            lines += [
                f"     {k}: {v}" for k, v in (("effect", self.effect), ("fix", self.fix)) if v
            ]
        return "\n".join(lines)

    def to_json(self) -> dict[str, object]:
        return asdict(self)


I2C_FIXES = {
    errno.ENOENT: "I2C is not enabled: `sudo raspi-config nonint do_i2c 0` or add "
    "`dtparam=i2c_arm=on,i2c_arm_baudrate=100000` to /boot/firmware/config.txt, then reboot",
    errno.EACCES: "no permission on /dev/i2c-*: `sudo usermod -aG i2c menwei`, then log in again",
    errno.ENXIO: "no device answers at that address: check wiring (SDA pin 3, SCL pin 5, 3V3, "
    "GND) and the address with `i2cdetect -y 1` (MLX90614 default 0x5A)",
    errno.EREMOTEIO: "the sensor does not acknowledge: check wiring and power, "
    "and `i2cdetect -y 1`",
    errno.EIO: "bus error: keep the cable short, check pull-ups and the 100 kHz bus speed",
}


def check_thermometer(
    config: GateConfig, bus_factory: Callable[[], SMBusLike] | None = None
) -> Check:
    t = config.thermometer
    if t.backend == "none":
        return Check("thermometer", True, "none configured: every entry goes to the guard")
    try:
        if bus_factory is not None:
            bus = bus_factory()
        elif t.backend == "simulated":
            bus = SimulatedMLX90614Bus(t.address)
        else:
            bus = open_smbus(t.i2c_bus)
    except OSError as exc:
        return Check(
            "thermometer",
            False,
            f"cannot open I2C bus {t.i2c_bus}: {exc}",
            I2C_FIXES.get(exc.errno or 0, "see docs/hardware.md"),
        )
    sensor = MLX90614(bus, t.address, check_pec=t.check_pec, owns_bus=True)
    try:
        reading = sensor.read()
        emissivity = sensor.read_emissivity()
    except PecError as exc:
        return Check(
            "thermometer",
            False,
            f"PEC mismatch: {exc}",
            "check wiring and bus speed (100 kHz); if this part never sends a valid "
            "PEC, set [thermometer] check_pec = false",
        )
    except OSError as exc:
        return Check(
            "thermometer",
            False,
            f"read failed at {t.address:#04x}: {exc}",
            I2C_FIXES.get(exc.errno or 0, "see docs/hardware.md"),
        )
    finally:
        sensor.close()
    pec = "PEC checked" if t.check_pec else "PEC NOT checked"
    return Check(
        "thermometer",
        True,
        f"MLX90614 at {t.address:#04x}: object "
        f"{reading.object_c:.2f} °C, ambient {reading.ambient_c:.2f} °C, "
        f"emissivity {emissivity:.2f}, {pec}",
    )


def check_gpio(config: GateConfig, pins_factory: Callable[[], Pins] | None = None) -> Check:
    g = config.gpio
    try:
        pins = (
            pins_factory()
            if pins_factory
            else FakePins()
            if g.backend == "simulated"
            else RPiGPIOPins()
        )
        try:
            for pin in (g.relay_pin, g.green_pin, g.red_pin, g.buzzer_pin):
                # The relay's idle level: not energised (locked), whatever its polarity.
                pins.setup_output(pin, g.relay_active_low if pin == g.relay_pin else False)
            for maybe in (g.exit_button_pin, g.door_pin):
                if maybe is not None:
                    pins.setup_input(maybe, True)
                    pins.read(maybe)
        finally:
            pins.close()
    except (DriverError, OSError, ValueError) as exc:
        return Check(
            "gpio",
            False,
            f"{g.backend} backend: {exc}",
            "on a Pi 5 install rpi-lgpio (pip install 'menwei[pi]'); add the user to "
            "group gpio (`sudo usermod -aG gpio menwei`); check pin numbers (BCM) in "
            "[gpio]",
        )
    return Check(
        "gpio",
        True,
        f"{g.backend} backend: relay {g.relay_pin}, LEDs {g.green_pin}/"
        f"{g.red_pin}, buzzer {g.buzzer_pin}, inputs {g.exit_button_pin}/{g.door_pin}",
    )


def check_camera(config: GateConfig, timeout_s: float = 5.0) -> Check:
    c = config.camera
    spec = c.source
    kind, _, rest = spec.partition(":")
    if kind in ("folder", "watch", "video"):
        spec = f"{kind}:{config.resolve(rest)}"
    try:
        source = open_source(spec, width=c.width, height=c.height, fps=c.fps)
    except (OSError, ValueError) as exc:
        return Check(
            "camera",
            False,
            f"{c.source}: {exc}",
            "check the cable and `v4l2-ctl --list-devices`; add the user to group "
            "video; for a Pi camera module use its V4L2 device (libcamera) or a gst: "
            "pipeline with libcamerasrc",
        )
    try:
        if kind == "watch":
            return Check("camera", True, f"{c.source}: simulation stage folder ready")
        end = time.monotonic() + timeout_s
        while time.monotonic() < end:
            frame = source.read(0.5)
            if frame is not None:
                h, w = frame.image.shape[:2]
                return Check("camera", True, f"{c.source}: frame {w}x{h}")
            if source.at_eof:
                break
    except OSError as exc:
        return Check("camera", False, f"{c.source}: {exc}", "reconnect the camera; see dmesg")
    finally:
        source.close()
    return Check(
        "camera",
        False,
        f"{c.source}: no frame in {timeout_s:.0f} s",
        "the device opens but delivers nothing: another process may hold it, or the "
        "format/resolution is unsupported (`v4l2-ctl --list-formats-ext`)",
    )


DOCTOR_MIN_FREE_BYTES = 64 << 20
"""Below this much free on the data partition the doctor warns (a full one stops the gate)."""


def check_database(config: GateConfig) -> Check:
    """The whole database read (`PRAGMA integrity_check`) and the data partition's room."""
    path = config.db_path
    if not path.exists():
        left = orphan_logs(path)
        return Check(
            "database",
            False,
            f"{path}: no database" + (f", but {', '.join(left)} beside its name" if left else ""),
            ADVICE["missing"].fix.en
            if left
            else "provision the gate: `menwei gate init GATE_DIR --server SERVER_DIR --gate SLUG`",
        )
    fault = inspect_database(path, full=True)
    if fault is not None and not fault.transient:
        return Check(
            "database",
            False,
            f"{path}: damaged: {fault.error}",
            RECOVERY_STEPS_EN,
            "every scan is refused (storage_fault) until the database is restored or recovered",
        )
    room = filesystem_fault(config.data_dir)
    free = free_bytes(config.data_dir)
    effect = "every scan is refused (storage_fault) until it clears; the gate resumes by itself"
    if fault is not None and fault.kind == "permission":
        return Check("database", False, f"{path}: {fault.error}", fault.advice.fix.en, effect)
    if fault is not None or room == "readonly":
        what = fault.error if fault is not None else "the file system is mounted read-only"
        return Check(
            "database",
            False,
            f"{path}: {what}",
            "check the SD card (dmesg, mount); remount read-write or replace it",
            effect,
        )
    free_text = "unknown" if free is None else f"{free / (1 << 20):.1f} MiB"
    detail = f"{path}: integrity ok, {path.stat().st_size / (1 << 20):.1f} MiB; {free_text} free"
    if free is not None and free < max(DOCTOR_MIN_FREE_BYTES, MIN_FREE_BYTES):
        return Check(
            "database",
            False,
            f"{detail}, below {DOCTOR_MIN_FREE_BYTES >> 20} MiB",
            f"free space on the data partition (df -h {config.data_dir}); lower [storage] "
            "retention_days; see docs/hardware.md (SD cards)",
            "a full partition stops the gate: " + effect,
        )
    return Check("database", True, detail)


def check_provisioning(config: GateConfig) -> Check:
    try:
        with GateStore(config.db_path) as store:
            know = load_knowledge(config, store)
    except StorageFault as exc:
        return Check("provisioning", False, str(exc.error), "see the database check above")
    except (ProtocolError, OSError) as exc:
        return Check("provisioning", False, str(exc), "run `menwei gate init` from the server")
    if know.config_version == 0 or know.register_version == 0:
        return Check(
            "provisioning",
            False,
            "no config or register document",
            "run `menwei gate init GATE_DIR --server SERVER_DIR --gate SLUG` again",
        )
    held = f"site {know.site}, keys {sorted(know.trust_keys)}, versions {know.versions()}"
    age = know.data_age_hours(datetime.now(UTC))
    limit = know.policy.max_data_age_h
    as_of = know.fresh_as_of()
    local = None if as_of is None else as_of.astimezone(know.policy.tz)
    proof = "" if local is None else f", proven current {age:g} h ago ({local:%Y-%m-%d %H:%M})"
    if age is not None and age > limit:
        return Check(
            "provisioning",
            False,
            f"{held}{proof}: older than max_data_age_h = {limit:g} h",
            "the collector re-affirms the documents every freshness_interval_s: check that"
            " `menwei server run` is running, that this gate reaches the broker and may read"
            f" menwei/{know.site}/freshness (ACL); a gate without a network: `menwei gate init`"
            " again from a fresh copy of the server's bundle/",
            "every passage needs the guard (请门卫人工核验, rule data_age) until a freshness"
            " statement arrives",
        )
    return Check("provisioning", True, held + proof)


def broker_credentials(config: GateConfig, now: datetime | None = None) -> dict[str, object]:
    """The gate's broker link as configured: its URL and, for mqtts://, the identity and end
    of validity of its certificate. Raises BrokerTlsError (one line, with the fix) when a TLS
    file is missing or unreadable, the key is not the certificate's, the certificate is
    another gate's or has expired."""
    b = parse_broker(config.mqtt.broker)
    out: dict[str, object] = {"broker": str(b)}
    if not b.tls:
        return out
    files = config.tls_files
    client_context(files)
    if files.cert_file is None:
        return out
    info = certificate_info(files.cert_file)
    if info.name != config.gate.id:
        raise BrokerTlsError(
            f"[mqtt] cert_file {files.cert_file} is the certificate of {info.name!r}, and this "
            f"gate is {config.gate.id!r}: the broker would refuse its events (issue its own: "
            f"`menwei broker add-gate SERVER_DIR/broker {config.gate.id} --out PATH`)"
        )
    until = info.not_after.astimezone()
    if (now or datetime.now(UTC)) >= info.not_after:
        raise BrokerTlsError(
            f"[mqtt] cert_file {files.cert_file} expired on {until:%Y-%m-%d %H:%M}: the broker "
            "refuses it (issue a new one: `menwei broker add-gate SERVER_DIR/broker "
            f"{config.gate.id} --out PATH`, or `menwei gate init` again on the server)"
        )
    return out | {"identity": info.name, "certificate_until": until.isoformat(timespec="minutes")}


TLS_READ_S = 1.0
"""After the handshake, how long `check_broker` waits for the broker's verdict on this
gate's certificate (TLS 1.3 sends it as the first bytes after the handshake; a broker that
accepted it waits for the MQTT CONNECT, which the doctor does not send: it would take over the
running gate's session)."""


def check_broker(config: GateConfig, url: str | None = None) -> Check:
    """TCP to the broker; for mqtts://, the TLS handshake with the gate's own files too (the
    broker's certificate and name, and the broker's verdict on the gate's certificate)."""
    shown = url or config.mqtt.broker
    effect = "the gate still decides and logs offline; its events wait in the outbox"
    try:
        b = parse_broker(shown)
        context = None
        if b.tls:
            broker_credentials(config)
            context = client_context(config.tls_files)
        with socket.create_connection((b.host, b.port), timeout=2.0) as sock:
            if context is None:
                return Check("broker", True, f"{b} reachable")
            with context.wrap_socket(sock, server_hostname=b.host) as tls:
                tls.settimeout(TLS_READ_S)
                try:
                    closed = tls.recv(1) == b""
                except TimeoutError:
                    closed = False
                if closed:
                    raise ssl.SSLEOFError("EOF occurred in violation of protocol")
                return Check(
                    "broker", True, f"{b} reachable, TLS {tls.version()}, certificate accepted"
                )
    except (OSError, ProtocolError) as exc:
        line = tls_failure(exc, b.host) if isinstance(exc, ssl.SSLError) else None
        return Check(
            "broker",
            False,
            f"{shown}: {line or exc}",
            "see docs/security.md (the broker)" if line else "check the network and [mqtt] broker",
            effect,
        )


def check_clock(config: GateConfig, clock: GateClock | None = None) -> Check:
    """Is the wall clock trusted, on what evidence; if not, what that does and the fix."""
    trust = (clock or GateClock.configured(config.clock)).assess()
    if trust.synchronised:
        return Check("clock", True, trust.detail())
    return Check("clock", False, trust.detail(), trust.fix(), UNTRUSTED_EFFECT)


def private_files(config: GateConfig) -> dict[Path, str]:
    """The gate's files that must be its service user's alone, and what each holds."""
    db = config.db_path
    held = "decisions, households, passes and the register"
    found = {
        config.path: "the broker password ([mqtt] password)",
        db: held,
        db.with_name(db.name + "-wal"): held,
        db.with_name(db.name + "-shm"): held,
        guards_path(config.data_dir): "the guards' PIN hashes",
    }
    key_file = config.tls_files.key_file
    if key_file is not None:
        found.setdefault(key_file, "the gate's TLS key ([mqtt] key_file): its broker identity")
    return found


def check_files(config: GateConfig) -> Check:
    """gate.toml, gate.db (and its -wal, -shm), guards.json and the TLS key must not be
    readable by other local users."""
    found = exposed(private_files(config))
    if found is None:
        return Check("files", True, "secrets and personal data are readable by their owner only")
    return Check("files", False, *found)


def run_doctor(config: GateConfig, broker: str | None = None) -> list[Check]:
    return [
        check_files(config),
        check_database(config),
        check_provisioning(config),
        check_camera(config),
        check_thermometer(config),
        check_gpio(config),
        check_clock(config),
        check_broker(config, broker),
    ]
