"""The site's certificate authority for broker links: one CA per site, a certificate per client.

The broker (Mosquitto) proves its name to gates and collectors with a server certificate; each
gate and each collector proves who it is with a client certificate whose common name is its
MQTT identity (the gate slug, or `collector`, `collector-2`, ...): the broker takes that name
as the username (`use_identity_as_username`), so the ACL's rules follow the credential, not
what a client claims.

Keys are ECDSA P-256, signatures SHA-256. Not Ed25519 (which signs the site's passes and
documents): P-256 is the curve every TLS 1.2/1.3 stack must implement (RFC 8446 §9.1), so
Mosquitto's OpenSSL, Python's ssl (paho) and the MQTT tools an installer reaches for
(mosquitto_sub, MQTT Explorer, mbedTLS on microcontrollers) all accept it; Ed25519
certificates need OpenSSL 1.1.1 on both ends and are refused by many other stacks.

Validity: the CA 20 years (`CA_DAYS`), the broker's and every client's certificate 10 years
(`LEAF_DAYS`, never past the CA's own end). Revocation is by a CRL the broker reads
(`crl.pem`, `CRL_DAYS`, re-signed at every revocation).
"""

from __future__ import annotations

import contextlib
import fcntl
import ipaddress
import json
import os
import re
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Literal

from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import (
    Encoding,
    NoEncryption,
    PrivateFormat,
    load_pem_private_key,
)
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from protocol.errors import ProtocolError
from protocol.passes import check_slug
from server.config import BROKER_DIR, CONFIG_NAME

CA_CERT = "ca.pem"
CA_KEY = "ca.key"
BROKER_CERT = "broker.pem"
BROKER_KEY = "broker.key"
CRL_FILE = "crl.pem"
ISSUED_FILE = "issued.json"
"""Every certificate the CA issued: name, role, serial, validity, revoked (for `revoke`)."""
LOCK_FILE = ".issued.lock"

CA_DAYS = 20 * 365
LEAF_DAYS = 10 * 365
CRL_DAYS = 20 * 365
"""A CRL past its nextUpdate makes OpenSSL refuse every client: it is valid as long as the CA."""
BACKDATE = timedelta(minutes=5)
"""Certificates start this long before they are made: a client whose clock is a little behind
the machine that issued them would otherwise refuse them as "not yet valid"."""

COLLECTOR_NAME = re.compile(r"collector(-[0-9]+)?")
"""The identities of collectors. The ACL's gate rules apply to every identity (they are
`pattern` lines), the collectors' rules to these names only: a gate never gets one."""

Role = Literal["broker", "gate", "collector"]


class CaError(ProtocolError):
    """The site CA cannot do what was asked; the message says why."""


@dataclass(frozen=True)
class Credentials:
    """A certificate and its private key, PEM."""

    cert_pem: bytes
    key_pem: bytes


def no_ca(directory: Path, why: str) -> str:
    """Why `directory` is not a broker folder, and the fix: a server directory (or any folder
    with a `broker/` that holds a CA) is refused with the folder meant, never the advice to
    make a second CA (its certificates would not be trusted by the broker)."""
    inner = directory / BROKER_DIR
    if (inner / CA_CERT).exists():
        return (
            f"{directory}: no site CA here ({why}), but {inner} holds one: did you mean {inner}?"
            " (the commands take the broker folder, not the server directory)"
        )
    if (directory / CONFIG_NAME).exists():
        return (
            f"{directory}: a server directory, not a broker folder; its broker folder is {inner}"
            f" and has no CA yet: make it with `menwei broker setup {inner}`"
        )
    return (
        f"{directory}: no site CA ({why}); give the broker folder (`SERVER_DIR/{BROKER_DIR}`),"
        f" or make a CA with `menwei broker setup {directory}`"
    )


def check_client_name(name: str, role: Role) -> str:
    """A gate's name is its slug and never a collector's name; a collector's name is
    `collector` or `collector-N`. Raises CaError."""
    try:
        check_slug(name, "name")
    except ProtocolError as exc:
        raise CaError(str(exc)) from None
    is_collector = COLLECTOR_NAME.fullmatch(name) is not None
    if role == "gate" and is_collector:
        raise CaError(
            f"{name!r} is a collector's name: a gate with it would get the collectors' rights"
        )
    if role == "collector" and not is_collector:
        raise CaError(f"{name!r}: a collector is named collector, collector-2, collector-3, ...")
    return name


def write_private(path: Path, data: bytes) -> None:
    """Write a private key: mode 0600 from the start (not chmod after writing), never over an
    existing file (O_EXCL). Raises FileExistsError."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(data)


def _new_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(Encoding.PEM, PrivateFormat.PKCS8, NoEncryption())


def _name(common_name: str, site: str) -> x509.Name:
    return x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Menwei"),
            x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, site),
            x509.NameAttribute(NameOID.COMMON_NAME, common_name),
        ]
    )


def _usage(*, ca: bool) -> x509.KeyUsage:
    """A CA signs certificates and CRLs; every other certificate signs TLS handshakes only."""
    return x509.KeyUsage(
        digital_signature=not ca,
        content_commitment=False,
        key_encipherment=False,
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=ca,
        crl_sign=ca,
        encipher_only=False,
        decipher_only=False,
    )


def _host_name(host: str) -> x509.GeneralName:
    try:
        return x509.IPAddress(ipaddress.ip_address(host))
    except ValueError:
        pass
    if not re.fullmatch(r"[A-Za-z0-9]([A-Za-z0-9.-]{0,252})", host) or ".." in host:
        raise CaError(f"--host {host!r}: not a host name or an IP address")
    return x509.DNSName(host.lower().rstrip("."))


class SiteCA:
    """The CA of one broker directory (`menwei broker setup DIR`): `ca.pem` and `ca.key`.

    `now` (an aware datetime) is when a certificate starts; tests give a past one to make an
    expired certificate with this same code."""

    def __init__(self, directory: Path, cert: x509.Certificate, key: ec.EllipticCurvePrivateKey):
        self.dir = directory
        self.cert = cert
        self.key = key

    @property
    def site(self) -> str:
        return str(
            self.cert.subject.get_attributes_for_oid(NameOID.ORGANIZATIONAL_UNIT_NAME)[0].value
        )

    @property
    def cert_pem(self) -> bytes:
        return self.cert.public_bytes(Encoding.PEM)

    @classmethod
    def create(cls, directory: Path, site: str, now: datetime | None = None) -> SiteCA:
        """Make the CA in `directory` (created, mode 0700) and an empty CRL. Refuses when a CA
        is there already (its certificates would all stop working). Raises CaError."""
        check_slug(site, "site")
        directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        if (directory / CA_KEY).exists() or (directory / CA_CERT).exists():
            raise CaError(
                f"{directory} already holds a site CA ({CA_CERT}, {CA_KEY}): every certificate "
                "it issued would stop working; to add a client use `menwei broker add-gate` or "
                "`add-client`, for a new broker certificate `menwei broker renew`"
            )
        start = (now or datetime.now(UTC)) - BACKDATE
        key = _new_key()
        name = _name(f"Menwei site CA {site}", site)
        cert = (
            x509.CertificateBuilder()
            .subject_name(name)
            .issuer_name(name)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(start)
            .not_valid_after(start + timedelta(days=CA_DAYS))
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(_usage(ca=True), critical=True)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), False)
            .sign(key, hashes.SHA256())
        )
        write_private(directory / CA_KEY, _key_pem(key))
        (directory / CA_CERT).write_bytes(cert.public_bytes(Encoding.PEM))
        ca = cls(directory, cert, key)
        ca._write_crl(now)
        return ca

    @classmethod
    def load(cls, directory: Path) -> SiteCA:
        """The CA of `directory`. Raises CaError when it has none or it cannot be read."""
        try:
            cert = x509.load_pem_x509_certificate((directory / CA_CERT).read_bytes())
            key = load_pem_private_key((directory / CA_KEY).read_bytes(), password=None)
        except OSError as exc:
            raise CaError(no_ca(directory, f"{exc.filename}: {exc.strerror}")) from None
        except ValueError as exc:
            raise CaError(f"{directory}: the site CA cannot be read: {exc}") from None
        if not isinstance(key, ec.EllipticCurvePrivateKey):
            raise CaError(f"{directory / CA_KEY}: not an ECDSA key")
        return cls(directory, cert, key)

    def issue(
        self,
        name: str,
        role: Role,
        hosts: tuple[str, ...] = (),
        *,
        now: datetime | None = None,
        days: int = LEAF_DAYS,
    ) -> Credentials:
        """A new key and a certificate for `name`: the broker's (a server certificate for
        `hosts`, host names or IP addresses, the first one also its common name) or a client's
        (common name `name`: its MQTT identity). Recorded in issued.json. Raises CaError."""
        if role == "broker":
            if not hosts:
                raise CaError("the broker's certificate needs at least one host name")
            sans = [_host_name(h) for h in hosts]
            usage = ExtendedKeyUsageOID.SERVER_AUTH
        else:
            check_client_name(name, role)
            sans = []
            usage = ExtendedKeyUsageOID.CLIENT_AUTH
        start = (now or datetime.now(UTC)) - BACKDATE
        end = min(start + timedelta(days=days), self.cert.not_valid_after_utc)
        key = _new_key()
        builder = (
            x509.CertificateBuilder()
            .subject_name(_name(name, self.site))
            .issuer_name(self.cert.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(start)
            .not_valid_after(end)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(_usage(ca=False), critical=True)
            .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(self.key.public_key()), False
            )
        )
        if sans:
            builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
        cert = builder.sign(self.key, hashes.SHA256())
        self._record(
            {
                "name": name,
                "role": role,
                "serial": format(cert.serial_number, "x"),
                "not_before": start.isoformat(timespec="seconds"),
                "not_after": end.isoformat(timespec="seconds"),
                "revoked": None,
            }
        )
        return Credentials(cert.public_bytes(Encoding.PEM), _key_pem(key))

    def issued(self) -> list[dict[str, str | None]]:
        """Every certificate issued, oldest first (issued.json)."""
        try:
            raw = (self.dir / ISSUED_FILE).read_text("utf-8")
        except FileNotFoundError:
            return []
        except OSError as exc:
            raise CaError(f"{self.dir / ISSUED_FILE}: cannot read: {exc.strerror}") from None
        return list(json.loads(raw))

    def revoke(self, name: str, now: datetime | None = None) -> list[str]:
        """Revoke every certificate of `name` not revoked yet and re-sign the CRL. Returns
        their serials (hex). Raises CaError when `name` has none."""
        at = now or datetime.now(UTC)
        with self._locked():
            records = self.issued()
            hit = [r for r in records if r["name"] == name and r["role"] != "broker"]
            if not hit:
                raise CaError(f"no client certificate was issued to {name!r} by {self.dir}")
            fresh = [r for r in hit if r["revoked"] is None]
            for r in fresh:
                r["revoked"] = at.isoformat(timespec="seconds")
            self._save(records)
            self._write_crl(now)
        return [str(r["serial"]) for r in fresh]

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        """issued.json and the CRL are read, changed and written by one command at a time (two
        `gate init` at once must not lose a record: `revoke` finds certificates by it)."""
        with open(self.dir / LOCK_FILE, "a") as f:
            fcntl.flock(f, fcntl.LOCK_EX)
            yield

    def _write_crl(self, now: datetime | None) -> None:
        at = (now or datetime.now(UTC)) - BACKDATE
        builder = (
            x509.CertificateRevocationListBuilder()
            .issuer_name(self.cert.subject)
            .last_update(at)
            .next_update(max(at + timedelta(days=CRL_DAYS), self.cert.not_valid_after_utc))
        )
        for r in self.issued():
            if r["revoked"] is not None:
                revoked_at = datetime.fromisoformat(str(r["revoked"]))
                builder = builder.add_revoked_certificate(
                    x509.RevokedCertificateBuilder()
                    .serial_number(int(str(r["serial"]), 16))
                    .revocation_date(revoked_at)
                    .build()
                )
        crl = builder.sign(self.key, hashes.SHA256())
        tmp = self.dir / f".{CRL_FILE}.tmp"
        tmp.write_bytes(crl.public_bytes(Encoding.PEM))
        os.replace(tmp, self.dir / CRL_FILE)

    def _record(self, record: dict[str, str | None]) -> None:
        with self._locked():
            self._save([*self.issued(), record])

    def _save(self, records: list[dict[str, str | None]]) -> None:
        tmp = self.dir / f".{ISSUED_FILE}.tmp"
        tmp.write_text(json.dumps(records, indent=1) + "\n", "utf-8")
        os.replace(tmp, self.dir / ISSUED_FILE)


def certificate_hosts(cert_pem: bytes) -> list[str]:
    """The DNS names and IP addresses a server certificate is valid for, in its order."""
    cert = x509.load_pem_x509_certificate(cert_pem)
    try:
        sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return []
    return [str(n.value) for n in sans if isinstance(n, x509.DNSName | x509.IPAddress)]
