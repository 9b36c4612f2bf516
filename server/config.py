"""The server directory's configuration (`server.toml`): strict, with documented defaults."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Literal
from urllib.parse import urlsplit
from zoneinfo import ZoneInfo

from protocol.broker import parse_broker
from protocol.broker_tls import TlsFiles, check_tls_keys
from protocol.errors import ProtocolError
from protocol.files import read_bounded
from protocol.passes import check_slug
from protocol.policy import Policy, check_timezone
from protocol.schema import Range, SchemaError, from_mapping, parse_toml

CONFIG_NAME = "server.toml"


class ServerConfigError(ProtocolError):
    """server.toml cannot be used; the message says where and why."""


@dataclass(frozen=True)
class ServerSection:
    site: str
    """Site slug: printed into every pass (as a tag) and every topic."""
    timezone: str = "Asia/Shanghai"
    """Local time of the site: dates typed on the command line are read in it."""
    pass_days: Annotated[int, Range(1, 3660, "days")] = 30
    """Validity of a new pass when --valid-until is not given."""
    freshness_interval_s: Annotated[float, Range(5, 21600, "s")] = 300.0
    """Seconds between freshness statements (the signed word that the gates' documents are
    current; also issued whenever a document changes). A gate's data age is the time since
    the last one it received, so keep it well below the policy's max_data_age_h."""

    def __post_init__(self) -> None:
        check_slug(self.site, "site")
        check_timezone(self.timezone)


BROKER_DIR = "broker"
"""The broker folder inside a server directory (`menwei broker setup DIR/broker`): the site CA,
the broker's and the collectors' keys; `gate init --server` finds the CA there."""


@dataclass(frozen=True)
class MqttSection:
    broker: str = "mqtt://127.0.0.1:1883"
    username: str | None = None
    password: str | None = None
    ca_file: str | None = None
    """The site CA's certificate (`broker/ca.pem`, relative to the server directory): the
    broker's certificate must be signed by it (mqtts://; unset: the system's CAs)."""
    cert_file: str | None = None
    """The collector's certificate (`broker/collector.pem`): its name is its broker identity."""
    key_file: str | None = None
    """Its private key (`broker/collector.key`, mode 0600)."""
    shared_group: str | None = None
    """Set to share the event stream between several collectors (MQTT v5 $share)."""

    def __post_init__(self) -> None:
        parse_broker(self.broker)
        check_tls_keys(self.broker, self.ca_file, self.cert_file, self.key_file)
        if self.shared_group is not None:
            check_share_name(self.shared_group)

    def tls_files(self, directory: Path) -> TlsFiles:
        """The TLS files, relative to the server directory."""
        return TlsFiles.of(directory, self.ca_file, self.cert_file, self.key_file)


_SHARE_NAME = re.compile(r"[A-Za-z0-9._-]{1,64}")


def check_share_name(name: str) -> str:
    """An MQTT v5 share name (`$share/NAME/...`) that Menwei accepts: 1-64 of A-Z a-z 0-9 . _ -
    (MQTT forbids '/', '+' and '#' in it). Raises ServerConfigError."""
    if not _SHARE_NAME.fullmatch(name):
        raise ServerConfigError(f"shared_group {name!r} must be 1-64 of A-Z a-z 0-9 . _ -")
    return name


@dataclass(frozen=True)
class AlertsSection:
    gate_offline_after_min: Annotated[float, Range(0.1, 1440, "min")] = 5.0
    """A gate not heard from for this long is offline (its Last Will counts at once)."""
    webhook_url: str | None = None
    """Where alerts are pushed (http or https); unset: no webhook."""
    webhook_format: Literal["json", "wecom", "dingtalk"] = "json"
    """Plain JSON, or the text message of a WeCom or DingTalk group robot."""
    webhook_kinds: tuple[str, ...] = ("fever",)
    """Alert kinds pushed; "high" stands for every high-priority alert."""
    webhook_secret: str | None = None
    """DingTalk signing secret (SEC...): adds timestamp and sign to the URL."""
    webhook_timeout_s: Annotated[float, Range(0.1, 60, "s")] = 5.0
    """Per attempt; three attempts with backoff, on the sender's own thread."""
    webhook_queue: Annotated[int, Range(1, 10000)] = 100
    """Alerts waiting to be sent, at most; more are dropped and counted."""

    def __post_init__(self) -> None:
        if self.webhook_url is not None:
            url = urlsplit(self.webhook_url)
            if url.scheme not in ("http", "https") or not url.hostname:
                raise ValueError("webhook_url must be http://HOST/... or https://HOST/...")
        if not self.webhook_kinds or any(not k.strip() for k in self.webhook_kinds):
            raise ValueError("webhook_kinds must name at least one alert kind")
        if self.webhook_secret is not None and self.webhook_format != "dingtalk":
            raise ValueError('webhook_secret is only used with webhook_format = "dingtalk"')


@dataclass(frozen=True)
class PrivacySection:
    visitor_retention_days: Annotated[int, Range(1, 3650, "days")] = 30
    """Visitors' names and phones are erased this many days after their pass expired (the
    collector does it daily; `menwei visitor purge` does it by hand)."""


@dataclass(frozen=True)
class StoreSection:
    url: str | None = None
    """Where the collector keeps events, passes and alerts: unset is the SQLite file
    `server.db` in the server directory; `postgresql://USER@HOST:PORT/DATABASE` a PostgreSQL
    database (docs/scaling.md). Put a password in the service user's ~/.pgpass, not here."""

    def __post_init__(self) -> None:
        if self.url is not None:
            from server.storage.engine import StoreError, normalise_url

            try:
                normalise_url(self.url)
            except StoreError as exc:
                raise ValueError(str(exc)) from None


@dataclass(frozen=True)
class WebSection:
    trusted_proxies: tuple[str, ...] = ()
    """Addresses or networks (CIDR) of reverse proxies in front of the dashboard: only a
    request from one of them has its X-Forwarded-For / X-Forwarded-Proto believed (the
    client is the right-most address in X-Forwarded-For that is not a trusted proxy).
    Empty: the socket peer is the client, whatever the headers say."""
    require_totp_for_admins: bool = False
    """Admins must log in with a TOTP code too; one without TOTP enrols at the next login."""
    password_checks_at_once: Annotated[int, Range(1, 16)] = 2
    """Passwords hashed at once (Argon2id, 64 MiB each); a login beyond them is answered
    503 "busy" without hashing."""

    def __post_init__(self) -> None:
        from server.web.proxies import parse_networks

        parse_networks(self.trusted_proxies)


@dataclass(frozen=True)
class ServerConfig:
    server: ServerSection
    store: StoreSection = field(default_factory=StoreSection)
    mqtt: MqttSection = field(default_factory=MqttSection)
    policy: Policy = field(default_factory=Policy)
    alerts: AlertsSection = field(default_factory=AlertsSection)
    privacy: PrivacySection = field(default_factory=PrivacySection)
    web: WebSection = field(default_factory=WebSection)

    def __post_init__(self) -> None:
        if self.server.freshness_interval_s * 2 > self.policy.max_data_age_h * 3600:
            raise ValueError(
                f"[server] freshness_interval_s = {self.server.freshness_interval_s:g} must be"
                f" at most half of [policy] max_data_age_h ({self.policy.max_data_age_h:g} h),"
                " or connected gates would find their data too old between statements"
            )

    @property
    def tz(self) -> ZoneInfo:
        return ZoneInfo(self.server.timezone)


def load_server_config(directory: Path) -> ServerConfig:
    path = directory / CONFIG_NAME
    try:
        raw = read_bounded(path, "config")
    except OSError as exc:
        raise ServerConfigError(f"{path}: cannot read: {exc.strerror}") from None
    except ProtocolError as exc:  # not a regular file, too large
        raise ServerConfigError(str(exc)) from None
    try:
        return from_mapping(ServerConfig, parse_toml(raw, str(path)), str(path))
    except (SchemaError, ProtocolError) as exc:
        raise ServerConfigError(str(exc)) from None


def toml_string(text: str) -> str:
    """`text` as a TOML basic string: quoted, with '"', '\\' and control characters escaped
    (a password with a backslash or a quote in `server init --store` made server.toml
    unreadable, or silently another password: `\\b` is a backspace in TOML)."""
    out = []
    for ch in text:
        if ch in '"\\':
            out.append("\\" + ch)
        elif ord(ch) < 0x20 or ord(ch) == 0x7F:
            out.append(f"\\u{ord(ch):04x}")
        else:
            out.append(ch)
    return '"' + "".join(out) + '"'


def render_server_toml(site: str, store_url: str | None = None) -> str:
    p = Policy()
    store = (
        f"url = {toml_string(store_url)}"
        if store_url
        else '# url = "postgresql://menwei@db.example/menwei"'
    )
    return f"""# Menwei server configuration. Unknown keys are errors.
[server]
site = "{site}"              # site slug, in every pass and topic
timezone = "Asia/Shanghai"   # dates on the command line are read in this zone
pass_days = 30               # validity of a new pass without --valid-until
freshness_interval_s = 300   # signed "your documents are current" to gates this often

[store]                          # unset: server.db in this directory (SQLite)
{store}

[mqtt]
broker = "mqtt://127.0.0.1:1883"
# After `menwei broker setup DIR/broker` (TLS, a certificate per gate and collector):
# broker = "mqtts://localhost:8883"
# ca_file = "broker/ca.pem"
# cert_file = "broker/collector.pem"
# key_file = "broker/collector.key"
# Or, with the password setup of the broker:
# username = "collector"
# password = "..."
# shared_group = "collectors"   # several collectors share the event stream

[policy]                         # what every gate enforces; see docs/policy.md
fever_threshold_c = {p.fever_threshold_c}        # at or above: re-measure, then deny (fever)
fever_mode = "{p.fever_mode}"               # "soft": allow but alert and flag
fever_recheck_window_s = {p.fever_recheck_window_s}     # a second high reading within this confirms
household_max_out = {p.household_max_out}    # household members outside at once (0: no limit)
household_max_exits_per_day = {p.household_max_exits_per_day}  # exits per household a day (0: none)
day_starts_at = "{p.day_starts_at}"          # when daily counters reset
outing_windows = ["06:00-20:00"] # exits only inside these local-time windows
outing_scheme = "{p.outing_scheme}"           # or "odd_even": odd household ids on odd dates
outing_weekdays = []             # e.g. [1, 3, 5]; empty = every day
anti_passback = "{p.anti_passback}"            # "soft" or "off"
auto_return_at = "{p.auto_return_at}"         # everyone counts as inside again (missed scans)
timezone = "{p.timezone}"
max_data_age_h = {p.max_data_age_h}           # older register/policy: the guard confirms
passes_per_household_max = {p.passes_per_household_max}     # enforced when passes are issued

[privacy]
visitor_retention_days = 30      # visitors' names and phones erased this long after expiry

[alerts]                         # see docs/alerts.md
gate_offline_after_min = 5       # not heard from this long: gate offline (Last Will: at once)
# webhook_url = "https://qyapi.weixin.qq.com/cgi-bin/webhook/send?key=..."
webhook_format = "json"          # "wecom" or "dingtalk": their group robots' text message
webhook_kinds = ["fever"]        # alert kinds pushed; "high": every high-priority alert
# webhook_secret = "SEC..."      # DingTalk signing (加签) secret
webhook_timeout_s = 5.0          # per attempt; 3 attempts with backoff
webhook_queue = 100              # waiting alerts at most; more are dropped (counted)

[web]                            # the dashboard; see docs/security.md#dashboard-logins
trusted_proxies = []             # e.g. ["127.0.0.1"]: only these may set X-Forwarded-For
require_totp_for_admins = false  # admins log in with a TOTP code too
password_checks_at_once = 2      # Argon2id checks at once (64 MiB each); more: 503 busy
"""
