"""`menwei server doctor DIR`: can this server directory be run as it is, and safely?

Its configuration is loaded by the rules `server run` applies (a bad value is the same error,
exit status 2, before any check); then each check says what it saw and, when it fails, the
fix: the store answers, and the files that hold secrets or personal data are their owner's
alone (docs/security.md, "Files, modes and secrets").
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

from protocol.broker import parse_broker
from protocol.broker_tls import BrokerTlsError
from protocol.files import exposed
from server.collector import tls_context
from server.config import BROKER_DIR, CONFIG_NAME
from server.keys import KEYS_DIR
from server.site import Site
from server.storage import StoreUnavailable
from server.storage import events as events_db


@dataclass(frozen=True)
class Finding:
    check: str
    ok: bool
    detail: str
    fix: str = ""

    def line(self) -> str:
        head = f"{'PASS' if self.ok else 'FAIL'} {self.check:8s} {self.detail}"
        return head if self.ok or not self.fix else f"{head}\n     fix: {self.fix}"

    def to_json(self) -> dict[str, object]:
        return asdict(self)


def private_files(site: Site) -> dict[Path, str]:
    """The server's files and folders that must be its service user's alone, and what each
    holds (the SQLite store's only when the store is SQLite)."""
    keys = site.dir / KEYS_DIR
    broker = site.dir / BROKER_DIR
    found: dict[Path, str] = {
        site.dir / CONFIG_NAME: "the broker password, the webhook secret and any store password",
        keys: "the private signing keys",
        **{pem: "a private signing key" for pem in sorted(keys.glob("*.pem"))},
        broker: "the site CA's key and the broker's and collectors' keys",
        **{key: "a TLS private key (`menwei broker`)" for key in sorted(broker.glob("*.key"))},
    }
    key_file = site.config.mqtt.tls_files(site.dir).key_file
    if key_file is not None:
        found.setdefault(key_file, "the collector's TLS key ([mqtt] key_file)")
    db = site.store.sqlite_file
    if db is not None:
        held = "names, phones, accounts and every event"
        found |= {
            db: held,
            db.with_name(db.name + "-wal"): held,
            db.with_name(db.name + "-shm"): held,
        }
    return found


def check_files(site: Site) -> Finding:
    found = exposed(private_files(site))
    if found is None:
        return Finding("files", True, "secrets and personal data are readable by their owner only")
    return Finding("files", False, *found)


def check_store(site: Site) -> Finding:
    try:
        with site.store.read() as tx:
            count = events_db.count_events(tx)
    except StoreUnavailable as exc:
        return Finding("store", False, f"{site.store.label}: {exc}", "see docs/scaling.md")
    return Finding("store", True, f"{site.store.label}: {count} events")


def check_broker(site: Site) -> Finding:
    """For an mqtts:// broker, the TLS files of [mqtt] loaded by the function `server run`
    links with (`tls_context`): a file it cannot use fails here with the line it would print.
    The broker itself is not contacted (the running collector holds the session)."""
    mqtt = site.config.mqtt
    broker = parse_broker(mqtt.broker)
    if not broker.tls:
        return Finding("broker", True, f"{broker}: no TLS (docs/security.md, the broker)")
    try:
        tls_context(mqtt, site.dir)
    except BrokerTlsError as exc:
        return Finding(
            "broker",
            False,
            str(exc),
            "`server run` stops with this line: fix [mqtt] in server.toml (docs/security.md,"
            " the broker)",
        )
    return Finding("broker", True, f"{broker}: ca_file, cert_file and key_file load")


def run_doctor(directory: Path) -> list[Finding]:
    """The findings for server directory `directory`. Raises ServerConfigError (server.toml)
    or StoreError (a store that cannot be opened at all), as `server run` would."""
    with Site(directory) as site:
        return [check_files(site), check_broker(site), check_store(site)]
