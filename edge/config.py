"""The gate's configuration file (`gate.toml`): one strict model, documented defaults.

Unknown keys and wrong types are errors that name the table and key
(`menwei gate check-config` prints them). Paths are relative to the file.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Annotated, Literal

from drivers.systemclock import NTP_PHASE_LIMIT_US
from protocol.broker import parse_broker
from protocol.broker_tls import TlsFiles, check_tls_keys
from protocol.errors import ProtocolError
from protocol.files import read_bounded
from protocol.passes import check_slug
from protocol.schema import Range, SchemaError, from_mapping, parse_toml

MAX_ERROR_LIMIT_MS = NTP_PHASE_LIMIT_US // 1000
BCM_PIN = Range(0, 27)
"""GPIO numbers (BCM) of a Raspberry Pi's 40-pin header."""
I2C_PINS = {0: (0, 1), 1: (2, 3)}
"""The BCM pins (SDA, SCL) of the Pi's I2C buses 0 and 1: not free for outputs or inputs while
the thermometer is on that bus."""
OFFSET_C = Range(0, 6, "°C")
"""Skin to body offsets a forehead thermometer needs (about 2 °C indoors, more in the cold);
`menwei gate calibrate` refuses to fit one outside it."""


class ConfigError(ProtocolError):
    """gate.toml cannot be used; the message says where and why."""


@dataclass(frozen=True)
class GateSection:
    site: str
    """Site slug, as issued by the server (`menwei server init --site`)."""
    id: str
    """This gate's slug, unique within the site."""
    direction: Literal["in", "out", "both"] = "in"
    """Lane direction; `both` means the direction is chosen per scan (two cameras or a switch)."""
    data_dir: str = "."
    """Folder of gate.db and the provisioned documents, relative to gate.toml."""
    language: Literal["zh", "en"] = "zh"

    def __post_init__(self) -> None:
        check_slug(self.site, "site")
        check_slug(self.id, "gate id")


@dataclass(frozen=True)
class MqttSection:
    broker: str = "mqtt://127.0.0.1:1883"
    username: str | None = None
    password: str | None = None
    ca_file: str | None = None
    """The site CA's certificate (`ca.pem`, relative to gate.toml): the broker's certificate must
    be signed by it (mqtts://; unset: the system's CAs)."""
    cert_file: str | None = None
    """This gate's certificate (`gate.pem`): its name is the gate's identity on the broker."""
    key_file: str | None = None
    """Its private key (`gate.key`, mode 0600)."""
    keepalive_s: Annotated[int, Range(0, 3600, "s")] = 30
    batch_size: Annotated[int, Range(1, 500)] = 50
    """Events per published batch (the collector accepts at most 500)."""
    window: Annotated[int, Range(1, 100_000)] = 500
    """Events sent but not yet acknowledged, at most (bounds paho's in-memory queue)."""
    resend_after_s: Annotated[float, Range(1, 3600, "s")] = 10.0
    """Send unacknowledged events again when no acknowledgement advanced for this long."""
    status_interval_s: Annotated[float, Range(1, 3600, "s")] = 15.0

    def __post_init__(self) -> None:
        parse_broker(self.broker)
        check_tls_keys(self.broker, self.ca_file, self.cert_file, self.key_file)
        if self.window < self.batch_size:
            raise ValueError("window must be at least batch_size")


@dataclass(frozen=True)
class ClockSection:
    trust: Literal["kernel", "timesyncd", "assume", "never"] = "kernel"
    """How the gate knows its clock is right: the kernel's NTP state (adjtimex; chrony,
    ntpd or systemd-timesyncd synchronised it), `timesyncd` (the kernel, or else
    systemd-timesyncd's flag file: older configs), assume it is (a gate with an RTC,
    simulation, demo), or never (every genuine pass goes to the guard)."""
    max_error_ms: Annotated[int, Range(1, MAX_ERROR_LIMIT_MS, "ms")] = MAX_ERROR_LIMIT_MS
    """With the kernel: untrusted when its maximum error (set by the time daemon, growing
    0.5 ms a second between corrections) exceeds this. 16000 is the kernel's own limit: past
    16 s the kernel itself marks the clock unsynchronised."""


@dataclass(frozen=True)
class CameraSection:
    source: str = "device:0"
    """device:N, /dev/videoN, gst:PIPELINE, video:FILE, folder:DIR or watch:DIR (simulation)."""
    width: Annotated[int, Range(16, 8192, "px")] = 640
    height: Annotated[int, Range(16, 8192, "px")] = 480
    fps: Annotated[int, Range(1, 120)] = 15
    scan_holdoff_s: Annotated[float, Range(0, 60, "s")] = 3.0
    """The same code seen again within this many seconds is the same scan."""
    video_pace: Literal["realtime", "fast"] = "realtime"
    """A `video:` source plays at its frame rate (else `fps`) as a camera delivers frames;
    `fast` plays it as fast as frames decode (benchmarks, replays)."""


@dataclass(frozen=True)
class ThermometerSection:
    backend: Literal["mlx90614", "simulated", "none"] = "mlx90614"
    i2c_bus: Annotated[int, Range(0, 255)] = 1
    address: Annotated[int, Range(0x03, 0x77)] = 0x5A
    """7-bit I2C address (0x03..0x77, the range i2cdetect scans)."""
    check_pec: bool = True
    samples: Annotated[int, Range(1, 20)] = 3
    """Consecutive readings that must agree before a temperature counts."""
    tolerance_c: Annotated[float, Range(0.05, 2, "°C")] = 0.3
    interval_s: Annotated[float, Range(0.02, 1, "s")] = 0.1
    """Seconds between readings: with `samples`, the settle takes at least
    (samples - 1) x interval_s; fewer, closer samples answer sooner and check less."""
    timeout_s: Annotated[float, Range(0.5, 30, "s")] = 3.0
    offset_c: Annotated[float, OFFSET_C] = 2.0
    """Skin (forehead) to body estimate at 25 °C ambient; `menwei gate calibrate` sets it."""
    offset_per_ambient_c: Annotated[float, Range(0, 0.5, "°C")] = 0.1
    """Added to the offset per °C the ambient is below 25 °C (cold air cools the skin more)."""
    recheck_delay_s: Annotated[float, Range(0, 60, "s")] = 2.0
    """After a first high reading, wait this long, then measure again."""


@dataclass(frozen=True)
class GpioSection:
    backend: Literal["rpi", "simulated"] = "rpi"
    relay_pin: Annotated[int, BCM_PIN] = 17
    relay_active_low: bool = False
    relay_pulse_s: Annotated[float, Range(0.01, 60, "s")] = 3.0
    """How long an allow releases the lock. The relay refuses a pulse of 0 s: found only after
    an allow was logged, it would stop the gate loop."""
    fail_secure: bool = True
    """On exit or crash: fail-secure keeps the gate locked; fail-safe releases it."""
    green_pin: Annotated[int, BCM_PIN] = 22
    red_pin: Annotated[int, BCM_PIN] = 27
    buzzer_pin: Annotated[int, BCM_PIN] = 23
    exit_button_pin: Annotated[int, BCM_PIN] | None = 24
    door_pin: Annotated[int, BCM_PIN] | None = 25
    door_alert_s: Annotated[float, Range(1, 3600, "s")] = 30.0
    """A door held open longer than this raises an alert."""

    def pins(self) -> dict[str, int]:
        """Every configured pin by its key (outputs, then the inputs that are set)."""
        named = {
            "relay_pin": self.relay_pin,
            "green_pin": self.green_pin,
            "red_pin": self.red_pin,
            "buzzer_pin": self.buzzer_pin,
            "exit_button_pin": self.exit_button_pin,
            "door_pin": self.door_pin,
        }
        return {key: pin for key, pin in named.items() if pin is not None}

    def __post_init__(self) -> None:
        # Two functions on one pin: an indicator LED that also pulses the lock, an input
        # that a relay drives.
        seen: dict[int, str] = {}
        for key, pin in self.pins().items():
            if pin in seen:
                raise ValueError(
                    f"{seen[pin]} and {key} are both BCM {pin}: every output and input needs"
                    " its own pin"
                )
            seen[pin] = key


@dataclass(frozen=True)
class StorageSection:
    retention_days: Annotated[int, Range(1, 3650, "days")] = 90
    """Acknowledged events older than this are deleted from the gate (the collector keeps
    them); unacknowledged events are never deleted. Bounds the SD card's use over months."""
    purge_interval_h: Annotated[float, Range(0.1, 168, "h")] = 6.0


@dataclass(frozen=True)
class GuardSection:
    http: str | None = None
    """HOST:PORT of the guard screen (kiosk browser on the gate's display), e.g.
    "127.0.0.1:8000"; none when unset. Bind to localhost: overrides open the gate."""
    override_pulse_s: Annotated[float, Range(0.5, 60, "s")] = 5.0
    """How long a guard override releases the gate."""

    def __post_init__(self) -> None:
        if self.http is not None:
            host, sep, port = self.http.rpartition(":")
            if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
                raise ValueError(f"http {self.http!r} must be HOST:PORT (port 1..65535)")


@dataclass(frozen=True)
class GateConfig:
    gate: GateSection
    mqtt: MqttSection = field(default_factory=MqttSection)
    clock: ClockSection = field(default_factory=ClockSection)
    camera: CameraSection = field(default_factory=CameraSection)
    thermometer: ThermometerSection = field(default_factory=ThermometerSection)
    gpio: GpioSection = field(default_factory=GpioSection)
    guard: GuardSection = field(default_factory=GuardSection)
    storage: StorageSection = field(default_factory=StorageSection)
    path: Path = Path("gate.toml")

    def __post_init__(self) -> None:
        t = self.thermometer
        if t.backend == "mlx90614" and t.i2c_bus in I2C_PINS:
            i2c = I2C_PINS[t.i2c_bus]
            taken = [key for key, pin in self.gpio.pins().items() if pin in i2c]
            if taken:
                raise ValueError(
                    f"[gpio] {', '.join(taken)} on BCM {i2c[0]} or {i2c[1]}: those are the SDA"
                    f" and SCL of I2C bus {t.i2c_bus}, the thermometer's ([thermometer] i2c_bus)"
                )

    @property
    def data_dir(self) -> Path:
        return (self.path.parent / self.gate.data_dir).resolve()

    @property
    def db_path(self) -> Path:
        return self.data_dir / "gate.db"

    def resolve(self, relative: str) -> Path:
        return (self.path.parent / relative).resolve()

    @property
    def tls_files(self) -> TlsFiles:
        m = self.mqtt
        return TlsFiles.of(self.path.parent, m.ca_file, m.cert_file, m.key_file)


def load_config(path: Path) -> GateConfig:
    """Read and validate gate.toml. Raises ConfigError with a message naming table and key."""
    try:
        data = parse_toml(read_bounded(path, "config"), str(path))
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read: {exc.strerror}") from None
    except ProtocolError as exc:  # not TOML, not a regular file, too large
        raise ConfigError(str(exc)) from None
    if "path" in data:
        raise ConfigError(f"{path}: unknown table [path]")
    try:
        config = from_mapping(GateConfig, data, str(path))
    except (SchemaError, ProtocolError) as exc:
        raise ConfigError(str(exc)) from None
    return replace(config, path=path.resolve())
