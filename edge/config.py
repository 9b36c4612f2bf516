"""The gate's configuration file (`gate.toml`): one strict model, documented defaults.

Unknown keys and wrong types are errors that name the table and key
(`menwei gate check-config` prints them). Paths are relative to the file.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Literal

from drivers.systemclock import NTP_PHASE_LIMIT_US
from protocol.errors import ProtocolError
from protocol.passes import check_slug
from protocol.schema import SchemaError, from_mapping, parse_toml

MAX_ERROR_LIMIT_MS = NTP_PHASE_LIMIT_US // 1000


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
    keepalive_s: int = 30
    batch_size: int = 50
    """Events per published batch (the collector accepts at most 500)."""
    window: int = 500
    """Events sent but not yet acknowledged, at most (bounds paho's in-memory queue)."""
    resend_after_s: float = 10.0
    """Send unacknowledged events again when no acknowledgement advanced for this long."""
    status_interval_s: float = 15.0

    def __post_init__(self) -> None:
        if not 1 <= self.batch_size <= 500:
            raise ValueError("batch_size must be 1..500")
        if self.window < self.batch_size:
            raise ValueError("window must be at least batch_size")
        if self.resend_after_s <= 0 or self.status_interval_s <= 0:
            raise ValueError("resend_after_s and status_interval_s must be positive")
        if self.keepalive_s < 0:
            raise ValueError("keepalive_s must be >= 0 (0: no keepalive)")


@dataclass(frozen=True)
class ClockSection:
    trust: Literal["kernel", "timesyncd", "assume", "never"] = "kernel"
    """How the gate knows its clock is right: the kernel's NTP state (adjtimex; chrony,
    ntpd or systemd-timesyncd synchronised it), `timesyncd` (the kernel, or else
    systemd-timesyncd's flag file: older configs), assume it is (a gate with an RTC,
    simulation, demo), or never (every genuine pass goes to the guard)."""
    max_error_ms: int = MAX_ERROR_LIMIT_MS
    """With the kernel: untrusted when its maximum error (set by the time daemon, growing
    0.5 ms a second between corrections) exceeds this. 16000 is the kernel's own limit."""

    def __post_init__(self) -> None:
        if not 1 <= self.max_error_ms <= MAX_ERROR_LIMIT_MS:
            raise ValueError(
                "max_error_ms must be 1..16000 (past 16 s the kernel itself marks the clock "
                "unsynchronised)"
            )


@dataclass(frozen=True)
class CameraSection:
    source: str = "device:0"
    """device:N, /dev/videoN, gst:PIPELINE, video:FILE, folder:DIR or watch:DIR (simulation)."""
    width: int = 640
    height: int = 480
    fps: int = 15
    scan_holdoff_s: float = 3.0
    """The same code seen again within this many seconds is the same scan."""
    video_pace: Literal["realtime", "fast"] = "realtime"
    """A `video:` source plays at its frame rate (else `fps`) as a camera delivers frames;
    `fast` plays it as fast as frames decode (benchmarks, replays)."""

    def __post_init__(self) -> None:
        if self.scan_holdoff_s < 0:
            raise ValueError("scan_holdoff_s must be >= 0")


@dataclass(frozen=True)
class ThermometerSection:
    backend: Literal["mlx90614", "simulated", "none"] = "mlx90614"
    i2c_bus: int = 1
    address: int = 0x5A
    check_pec: bool = True
    samples: int = 3
    """Consecutive readings that must agree before a temperature counts (1..20)."""
    tolerance_c: float = 0.3
    interval_s: float = 0.1
    """Seconds between readings (0.02..1): with `samples`, the settle takes at least
    (samples - 1) x interval_s; fewer, closer samples answer sooner and check less."""
    timeout_s: float = 3.0
    offset_c: float = 2.0
    """Skin (forehead) to body estimate at 25 °C ambient; `menwei gate calibrate` sets it."""
    offset_per_ambient_c: float = 0.1
    """Added to the offset per °C the ambient is below 25 °C (cold air cools the skin more)."""
    recheck_delay_s: float = 2.0
    """After a first high reading, wait this long, then measure again."""

    def __post_init__(self) -> None:
        if self.recheck_delay_s < 0:
            raise ValueError("recheck_delay_s must be >= 0")
        if not 0.02 <= self.interval_s <= 1.0:
            raise ValueError(f"interval_s must be 0.02..1 s, got {self.interval_s!r}")


@dataclass(frozen=True)
class GpioSection:
    backend: Literal["rpi", "simulated"] = "rpi"
    relay_pin: int = 17
    relay_active_low: bool = False
    relay_pulse_s: float = 3.0
    fail_secure: bool = True
    """On exit or crash: fail-secure keeps the gate locked; fail-safe releases it."""
    green_pin: int = 22
    red_pin: int = 27
    buzzer_pin: int = 23
    exit_button_pin: int | None = 24
    door_pin: int | None = 25
    door_alert_s: float = 30.0
    """A door held open longer than this raises an alert."""

    def __post_init__(self) -> None:
        # The relay refuses a pulse of 0 s: found only after an allow was logged, it would
        # stop the gate loop.
        if self.relay_pulse_s <= 0 or self.door_alert_s <= 0:
            raise ValueError("relay_pulse_s and door_alert_s must be positive")


@dataclass(frozen=True)
class StorageSection:
    retention_days: int = 90
    """Acknowledged events older than this are deleted from the gate (the collector keeps
    them); unacknowledged events are never deleted. Bounds the SD card's use over months."""
    purge_interval_h: float = 6.0

    def __post_init__(self) -> None:
        if not 1 <= self.retention_days <= 3650:
            raise ValueError("retention_days must be 1..3650")
        if self.purge_interval_h <= 0:
            raise ValueError("purge_interval_h must be positive")


@dataclass(frozen=True)
class GuardSection:
    http: str | None = None
    """HOST:PORT of the guard screen (kiosk browser on the gate's display), e.g.
    "127.0.0.1:8000"; none when unset. Bind to localhost: overrides open the gate."""
    override_pulse_s: float = 5.0
    """How long a guard override releases the gate."""

    def __post_init__(self) -> None:
        if self.http is not None:
            host, sep, port = self.http.rpartition(":")
            if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
                raise ValueError(f"http {self.http!r} must be HOST:PORT")
        if self.override_pulse_s <= 0:
            raise ValueError("override_pulse_s must be positive")


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

    @property
    def data_dir(self) -> Path:
        return (self.path.parent / self.gate.data_dir).resolve()

    @property
    def db_path(self) -> Path:
        return self.data_dir / "gate.db"

    def resolve(self, relative: str) -> Path:
        return (self.path.parent / relative).resolve()


def load_config(path: Path) -> GateConfig:
    """Read and validate gate.toml. Raises ConfigError with a message naming table and key."""
    try:
        data = parse_toml(path.read_bytes(), str(path))
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read: {exc.strerror}") from None
    except SchemaError as exc:
        raise ConfigError(str(exc)) from None
    if "path" in data:
        raise ConfigError(f"{path}: unknown table [path]")
    try:
        config = from_mapping(GateConfig, data, str(path))
    except (SchemaError, ProtocolError) as exc:
        raise ConfigError(str(exc)) from None
    return replace(config, path=path.resolve())
