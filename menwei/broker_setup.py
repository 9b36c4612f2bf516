"""The site's broker, set up for TLS: the files `menwei broker ...` writes into a broker folder.

`setup(DIR)` makes the site CA (menwei/site_ca.py), the broker's certificate, the collector's
client certificate, the Mosquitto configuration (`MOSQUITTO_CONF`, shipped as
systemd/mosquitto-menwei.conf) and the site's ACL, and returns the commands that install them
under /etc/mosquitto. DIR is usually the server directory's `broker/` (`gate init --server`
then issues each gate's certificate there); its CA key never leaves it.

    DIR/ca.pem, ca.key        the site CA (the key: mode 0600, stays in DIR)
    DIR/crl.pem, issued.json  revoked certificates (the broker reads the CRL); what was issued
    DIR/broker.pem, .key      the broker's certificate: its host names, `--host`
    DIR/collector.pem, .key   the collector's client certificate (more: `add_client`)
    DIR/mosquitto-menwei.conf → /etc/mosquitto/conf.d/menwei.conf
    DIR/menwei.acl            → /etc/mosquitto/menwei.acl
"""

from __future__ import annotations

import os
import shlex
import socket
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edge.provision import (
    BROKER_URL_FILE,
    TLS_PORT,
    BrokerCredentials,
    write_credentials,
)
from menwei.site_ca import (
    BROKER_CERT,
    BROKER_KEY,
    CA_CERT,
    CA_KEY,
    CRL_FILE,
    CaError,
    SiteCA,
    certificate_hosts,
    write_private,
)
from protocol import topics
from server.config import BROKER_DIR, CONFIG_NAME, load_server_config

CONF_FILE = "mosquitto-menwei.conf"
ACL_FILE = "menwei.acl"
ETC = "/etc/mosquitto"
ETC_TLS = f"{ETC}/menwei"
"""Where the broker's copies of ca.pem, crl.pem, broker.pem and broker.key go."""

MOSQUITTO_CONF = f"""\
# Mosquitto 2.x settings for a Menwei site: TLS, and a client certificate for every gate and
# collector. Written by `menwei broker setup DIR` as DIR/{CONF_FILE} (the same text
# is shipped as systemd/mosquitto-menwei.conf) and installed as
# /etc/mosquitto/conf.d/menwei.conf, next to Debian's /etc/mosquitto/mosquitto.conf, which
# includes it (docs/configuration.md, "The site's broker"). tests/e2e/test_shipped_broker.py
# runs it with only its paths and the listener's port changed. The password setup (no TLS):
# systemd/mosquitto-menwei-passwords.conf.
# Debian's main file already sets pid_file, persistence_location and log_dest (a file in
# /var/log/mosquitto/): do not set them here. Setting persistence_location twice is a fatal
# "Duplicate persistence_location value" error, and Mosquitto would not start.
#
# Measured with Mosquitto 2.0 and paho-mqtt 2.x: the default max_queued_messages 1000
# silently dropped 18k of 20k acknowledged QoS 1 messages for a slow subscriber, and
# persistence is a snapshot every autosave_interval (30 min by default). Menwei does not
# rely on the broker for delivery (the gate's SQLite outbox and the collector's
# application-level ack do), but these settings keep resends rare.

per_listener_settings true

# A listener option (mosquitto.conf(5), "Listeners") applies to the `listener` line above
# it: above that line it would silently apply to Mosquitto's default listener, not this one.
# The settings after `use_username_as_clientid` are global.
listener {TLS_PORT} 0.0.0.0
# The site CA (`menwei broker setup`) signed the broker's certificate and every client's; a
# client without a certificate of this CA, or with a revoked one (crl.pem, `menwei broker
# revoke`), does not get past the TLS handshake. The broker's key must be readable by the
# mosquitto user (Mosquitto drops root before it reads it): root:mosquitto 0640.
cafile {ETC_TLS}/{CA_CERT}
certfile {ETC_TLS}/{BROKER_CERT}
keyfile {ETC_TLS}/{BROKER_KEY}
crlfile {ETC_TLS}/{CRL_FILE}
# The oldest TLS version accepted (Mosquitto 2.0: a minimum; clients use 1.3).
tls_version tlsv1.2
require_certificate true
# The username is the common name of the client's certificate: a gate's is its slug, a
# collector's `collector`, `collector-2`, ... Whatever username a client sends is ignored, so
# the ACL's rules follow the credential: gate east's certificate cannot publish as west.
use_identity_as_username true
allow_anonymous false
acl_file {ETC}/{ACL_FILE}
# The client id is the username. Mosquitto binds a client id to no user: without this, gate
# "east" connecting with the collector's (or another gate's) client id disconnected it, over
# and over, and with clean_start wiped its persistent session. Now each identity holds exactly
# one connection and one session; a second connection with the same certificate name replaces
# the first. So every process needs its own certificate (several collectors: collector,
# collector-2, ..., `menwei broker add-client`, each with its section in the ACL).
use_username_as_clientid true

# Send small packets at once. Measured with Mosquitto 2.0.11: with Nagle's algorithm on the
# broker's sockets a TLS 1.3 connection took ~57 ms instead of ~4 ms (its last handshake
# records and the CONNACK waited for the client's delayed ACK), and so does every ack.
set_tcp_nodelay true
# Queue for disconnected/slow persistent sessions: bounded by memory, not by a small count.
max_queued_messages 0
max_queued_bytes 268435456
max_inflight_messages 100
# Keep retained config/register/freshness/ack/status across broker restarts, and save often
# (in /var/lib/mosquitto/, Debian's persistence_location).
persistence true
autosave_interval 60
autosave_on_changes false
# The largest MQTT packet accepted: protocol/documents.py's MAX_DOCUMENT_BYTES (8 MiB, the
# largest signed document a gate accepts: the register) plus 64 KiB for the packet's header
# and topic (MQTT_HEADROOM_BYTES); tests/e2e/test_shipped_broker.py checks they agree. A larger
# packet makes Mosquitto close the sender's connection (log: "disconnected due to oversize
# packet"). Mosquitto announces this limit to MQTT v5 clients when they connect and the
# collector publishes no document over it (a `document_too_large` alert instead): with
# message_size_limit, which Mosquitto 2.0 replaces by this ("It is recommended to replace
# `message_size_limit` with `max_packet_size`") and does not announce, a register over 2 MiB
# dropped the collector at every publish and it reconnected forever. Gates' event batches stay
# far below (the collector refuses batches over 1 MiB). Applies to every listener.
max_packet_size 8454144
# Forget sessions of gates that were decommissioned.
persistent_client_expiration 30d

log_type error
log_type warning
log_type notice
"""


def render_acl(site: str, collectors: list[str]) -> str:
    """The site's ACL for identities from certificates: every gate's rules as `pattern` lines
    (%u is the certificate's name), then one `user` section per collector. Collectors read the
    document topics too: they replace a retained document they did not publish
    (server/document_watch.py)."""
    root = f"{topics.ROOT}/{site}"
    sections = "".join(
        f"user {name}\n"
        f"topic read {root}/+/events\n"
        f"topic read {root}/+/status\n"
        f"topic write {root}/+/ack\n"
        f"topic readwrite {root}/config\n"
        f"topic readwrite {root}/register\n"
        f"topic readwrite {root}/register/#\n"
        f"topic readwrite {root}/freshness\n"
        f"topic write {root}/passages\n\n"
        for name in collectors
    )
    return f"""\
# Mosquitto ACL for the Menwei site "{site}": written by `menwei broker setup` (again by
# `menwei broker add-client` and `revoke`) and installed as /etc/mosquitto/menwei.acl
# (docs/configuration.md, "The site's broker"). Do not edit: the next command rewrites it.
#
# A client's username is the common name of its certificate (use_identity_as_username): a
# gate's is its slug, a collector's `collector`, `collector-2`, ... (the CA issues no gate a
# collector's name).
# HOW MOSQUITTO READS THIS FILE (mosquitto.conf(5), acl_file): nothing is allowed that no line
# allows; `user NAME` starts NAME's section, and every `topic` line after it applies to NAME
# only; `pattern` lines apply to every client wherever they stand, %u being its username. So
# the gates' rules are `pattern` lines, above the collectors' sections. Mosquitto 2.0 logs
# "ACL pattern '...' does not contain '%c' or '%u'" for the site topics below when it starts:
# expected, that is how every gate reads them. Reading is checked per delivered message, not
# when subscribing; a publish the ACL denies is answered "not authorized" (MQTT v5 reason code
# 0x87) and the connection closed.

# --- Every gate ------------------------------------------------------------------------------
# Its own uplink: batches of events, and its status (retained; its Last Will says offline).
pattern write {root}/%u/events
pattern write {root}/%u/status
# Its own acknowledgements (retained). Nobody else's.
pattern read {root}/%u/ack
# What the server sends every gate: config, register (and its parts) and freshness
# (retained, signed), and the passages of the other gates (for the household counters).
pattern read {root}/config
pattern read {root}/register
pattern read {root}/register/#
pattern read {root}/freshness
pattern read {root}/passages

# --- The collectors ----------------------------------------------------------------------------
{sections}"""


@dataclass(frozen=True)
class BrokerFolder:
    """A broker folder made by `setup`: its CA and what it issued."""

    dir: Path

    @property
    def ca(self) -> SiteCA:
        return SiteCA.load(self.dir)

    def collectors(self, ca: SiteCA) -> list[str]:
        """Collector identities with a certificate not revoked, in the order issued."""
        names: list[str] = []
        for r in ca.issued():
            name = str(r["name"])
            if r["role"] == "collector" and r["revoked"] is None and name not in names:
                names.append(name)
        return names

    def write_acl(self, ca: SiteCA) -> Path:
        path = self.dir / ACL_FILE
        path.write_text(render_acl(ca.site, self.collectors(ca)), "utf-8")
        return path

    def broker_url(self) -> str:
        """mqtts://HOST:8883, HOST the first name of the broker's certificate."""
        try:
            hosts = certificate_hosts((self.dir / BROKER_CERT).read_bytes())
        except OSError as exc:
            raise CaError(f"{self.dir / BROKER_CERT}: {exc.strerror}") from None
        host = hosts[0] if hosts else "localhost"
        return f"mqtts://{f'[{host}]' if ':' in host else host}:{TLS_PORT}"

    def write_client(self, ca: SiteCA, name: str) -> list[Path]:
        """A collector's certificate and key as DIR/NAME.pem and DIR/NAME.key (refuses to
        overwrite a key: revoke the name first, or pick another)."""
        key = self.dir / f"{name}.key"
        if key.exists():
            raise CaError(f"{key} exists: a collector named {name!r} was made already")
        creds = ca.issue(name, "collector")
        cert = self.dir / f"{name}.pem"
        write_private(key, creds.key_pem)
        cert.write_bytes(creds.cert_pem)
        return [cert, key]


def default_hosts(given: list[str]) -> list[str]:
    """The broker certificate's names: those given (default: this machine's host name), then
    localhost and 127.0.0.1 (the collector on the broker's own machine), each once."""
    names = [*(given or [socket.gethostname()]), "localhost", "127.0.0.1"]
    return list(dict.fromkeys(names))


def site_of(directory: Path) -> str | None:
    """The site slug of the server directory `directory` is in (DIR/../server.toml)."""
    if not (directory.parent / CONFIG_NAME).exists():
        return None
    return load_server_config(directory.parent).server.site


def install_commands(directory: Path) -> list[str]:
    """The commands that install the broker's files, as `setup` prints them (run as root on
    the broker's machine)."""
    d = shlex.quote(str(directory.resolve()))
    files = ",".join((CA_CERT, CRL_FILE, BROKER_CERT, BROKER_KEY))
    return [
        f"sudo install -d -m 0750 {ETC_TLS}",
        f"sudo cp {d}/{{{files}}} {ETC_TLS}/",
        f"sudo chown -R root:mosquitto {ETC_TLS}",
        f"sudo chmod 0640 {ETC_TLS}/{BROKER_KEY}",
        f"sudo cp {d}/{CONF_FILE} {ETC}/conf.d/menwei.conf",
        f"sudo cp {d}/{ACL_FILE} {ETC}/{ACL_FILE}",
        "sudo systemctl restart mosquitto",
    ]


def acl_commands(directory: Path) -> list[str]:
    """The commands that install a rewritten ACL or CRL (after add-client or revoke)."""
    d = shlex.quote(str(directory.resolve()))
    return [
        f"sudo cp {d}/{CRL_FILE} {ETC_TLS}/{CRL_FILE}",
        f"sudo chown root:mosquitto {ETC_TLS}/{CRL_FILE}",
        f"sudo cp {d}/{ACL_FILE} {ETC}/{ACL_FILE}",
        "sudo systemctl restart mosquitto",
    ]


def mqtt_lines(broker: str, folder: str) -> str:
    """server.toml's [mqtt] lines for the collector's certificate in `folder` (relative to the
    server directory, or absolute)."""
    return (
        f'broker = "{broker}"\n'
        f'ca_file = "{folder}/{CA_CERT}"\n'
        f'cert_file = "{folder}/collector.pem"\n'
        f'key_file = "{folder}/collector.key"\n'
    )


def server_toml_lines(directory: Path) -> str:
    """server.toml's [mqtt] for the collector, as `setup` prints them: paths relative to the
    server directory when DIR is its broker/ folder; the broker on the same machine."""
    folder = directory.name if site_of(directory) else str(directory.resolve())
    return mqtt_lines(f"mqtts://localhost:{TLS_PORT}", folder)


def link_server_toml(server_dir: Path, broker: str) -> None:
    """Replace server.toml's default `broker` line by `mqtt_lines` for SERVER_DIR/broker/, as
    an installer does by hand after `setup` (`menwei demo`, tests). Raises CaError when the
    file no longer has the default line."""
    path = server_dir / CONFIG_NAME
    text = path.read_text("utf-8")
    default = 'broker = "mqtt://127.0.0.1:1883"\n'
    if default not in text:
        raise CaError(f"{path}: no default broker line to replace")
    path.write_text(text.replace(default, mqtt_lines(broker, BROKER_DIR), 1), "utf-8")


def setup(directory: Path, site: str | None, hosts: list[str]) -> dict[str, Any]:
    """Make the broker folder `directory`: the site CA, the broker's and the collector's
    certificates, the Mosquitto config and the ACL. Refuses a folder that holds a CA.
    `site` default: that of the server directory `directory` is in. Raises CaError."""
    slug = site or site_of(directory)
    if slug is None:
        raise CaError(f"{directory} is not in a server directory: give --site SLUG")
    names = default_hosts(hosts)
    ca = SiteCA.create(directory, slug)
    folder = BrokerFolder(directory)
    creds = ca.issue(names[0], "broker", tuple(names))
    write_private(directory / BROKER_KEY, creds.key_pem)
    (directory / BROKER_CERT).write_bytes(creds.cert_pem)
    folder.write_client(ca, "collector")
    (directory / CONF_FILE).write_text(MOSQUITTO_CONF, "utf-8")
    folder.write_acl(ca)
    return {
        "dir": str(directory.resolve()),
        "site": slug,
        "hosts": names,
        "broker": folder.broker_url(),
        "ca_key": str((directory / CA_KEY).resolve()),
        "install": install_commands(directory),
        "server_toml": server_toml_lines(directory),
    }


def renew(directory: Path, hosts: list[str]) -> dict[str, Any]:
    """A new certificate for the broker (new names, or before the old one expires): replaces
    broker.pem and broker.key. Raises CaError."""
    ca = SiteCA.load(directory)
    names = default_hosts(hosts)
    creds = ca.issue(names[0], "broker", tuple(names))
    for name, data in ((BROKER_KEY, creds.key_pem), (BROKER_CERT, creds.cert_pem)):
        tmp = directory / f".{name}.new"
        tmp.unlink(missing_ok=True)
        write_private(tmp, data)
        os.replace(tmp, directory / name)
    return {
        "dir": str(directory.resolve()),
        "hosts": names,
        "broker": BrokerFolder(directory).broker_url(),
        "install": install_commands(directory),
    }


def add_client(directory: Path, name: str) -> dict[str, Any]:
    """A certificate for one more collector (`collector-2`, ...) and the ACL with its section."""
    ca = SiteCA.load(directory)
    folder = BrokerFolder(directory)
    cert, key = folder.write_client(ca, name)
    folder.write_acl(ca)
    return {
        "name": name,
        "cert_file": str(cert.resolve()),
        "key_file": str(key.resolve()),
        "install": acl_commands(directory),
    }


def issue_gate(directory: Path, gate: str) -> BrokerCredentials:
    """A new certificate for gate `gate` from the broker folder's CA. Raises CaError."""
    folder = BrokerFolder(directory)
    ca = folder.ca
    url = folder.broker_url()
    creds = ca.issue(gate, "gate")
    return BrokerCredentials(ca.cert_pem, creds.cert_pem, creds.key_pem, url)


def add_gate(directory: Path, gate: str, out: Path) -> dict[str, Any]:
    """Gate `gate`'s credentials into the folder `out` (made, mode 0700), to carry to a gate
    whose `gate init` cannot reach the CA: ca.pem, gate.pem, gate.key (0600), broker.url."""
    creds = issue_gate(directory, gate)
    out.mkdir(mode=0o700, parents=True, exist_ok=True)
    files = write_credentials(out, creds)
    (out / BROKER_URL_FILE).write_text(creds.broker + "\n", "utf-8")
    return {
        "gate": gate,
        "out": str(out.resolve()),
        "files": [*files, BROKER_URL_FILE],
        "broker": creds.broker,
    }


def revoke(directory: Path, name: str) -> dict[str, Any]:
    """Revoke every certificate of a gate or collector: the CRL re-signed, a collector's ACL
    section removed."""
    ca = SiteCA.load(directory)
    serials = ca.revoke(name)
    BrokerFolder(directory).write_acl(ca)
    return {"name": name, "revoked": serials, "install": acl_commands(directory)}


def gate_credentials(server_dir: Path, gate: str) -> BrokerCredentials | None:
    """`gate init`'s issuer: gate `gate`'s new credentials when `server_dir` holds the broker CA
    (SERVER_DIR/broker/ca.key), else None. Raises CaError."""
    directory = server_dir / BROKER_DIR
    if not (directory / CA_KEY).exists():
        return None
    return issue_gate(directory, gate)
