"""The TLS side of a link to the broker (`mqtts://`): the client's context, and why it failed.

Gates and collectors connect with the site CA's certificate (`[mqtt] ca_file`) and a client
certificate of their own (`cert_file`, `key_file`; its common name is the identity the broker
gives them). The host name of the broker URL is checked against the broker's certificate. A
handshake that fails is said in one line that names the cause and the fix (`tls_failure`),
logged once per cause by `LinkTrouble` (paho retries every few seconds) and shown by
`menwei gate doctor`.

Reads the three files (and nothing else); no network.
"""

from __future__ import annotations

import logging
import re
import ssl
import sys
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.x509.oid import NameOID

from protocol.errors import ProtocolError
from protocol.files import FileKind, InputFileError, read_bounded


class BrokerTlsError(ProtocolError):
    """The TLS files of [mqtt] cannot be used; the message names the file and the fix."""


@dataclass(frozen=True)
class TlsFiles:
    """[mqtt] ca_file, cert_file and key_file, resolved (None: not set)."""

    ca_file: Path | None = None
    cert_file: Path | None = None
    key_file: Path | None = None

    @classmethod
    def of(cls, base: Path, ca: str | None, cert: str | None, key: str | None) -> TlsFiles:
        """The files as a config names them, relative to `base` (the config file's folder)."""

        def at(name: str | None) -> Path | None:
            return None if name is None else (base / name).resolve()

        return cls(at(ca), at(cert), at(key))


def check_tls_keys(broker: str, ca: str | None, cert: str | None, key: str | None) -> None:
    """The rules every [mqtt] table follows: cert_file and key_file together, and TLS files only
    with an mqtts:// broker (else they would be silently unused: the link in clear). Raises
    ValueError (the config loaders name the table)."""
    if (cert is None) != (key is None):
        raise ValueError("cert_file and key_file go together: set both or neither")
    if (ca or cert) and not broker.startswith("mqtts://"):
        raise ValueError(
            "ca_file, cert_file and key_file are for a TLS link: write the broker as mqtts://HOST"
        )


def client_context(files: TlsFiles) -> ssl.SSLContext:
    """A client context: TLS 1.2 or later, the broker's certificate checked against `ca_file`
    (the system's CAs when unset) and its host name, this client's certificate presented when
    set. Raises BrokerTlsError naming the file that is missing, unreadable or wrong."""
    try:
        ca = None if files.ca_file is None else _bounded("ca_file", files.ca_file, "certificate")
        ctx = ssl.create_default_context(cadata=None if ca is None else ca.decode("ascii"))
    except (ssl.SSLError, UnicodeDecodeError) as exc:
        raise BrokerTlsError(_file_problem("ca_file", files.ca_file, exc)) from None
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    if files.cert_file is not None and files.key_file is not None:
        _bounded("cert_file", files.cert_file, "certificate")  # a regular file within its cap
        _bounded("key_file", files.key_file, "key")
        try:
            ctx.load_cert_chain(str(files.cert_file), str(files.key_file))
        except (OSError, ssl.SSLError) as exc:
            raise BrokerTlsError(
                f"[mqtt] cert_file {files.cert_file} and key_file {files.key_file} cannot be "
                f"used together ({_reason(exc)}): both must come from the same "
                "`menwei broker add-gate`/`add-client`"
            ) from None
    return ctx


def _bounded(key: str, path: Path, kind: FileKind) -> bytes:
    """The file named by [mqtt] `key`, read within its size cap (protocol.files). Raises
    BrokerTlsError naming the key and the file."""
    try:
        return read_bounded(path, kind)
    except OSError as exc:
        raise BrokerTlsError(_file_problem(key, path, exc)) from None
    except InputFileError as exc:
        raise BrokerTlsError(f"[mqtt] {key} {exc}") from None


def _file_problem(key: str, path: Path | None, exc: Exception) -> str:
    if isinstance(exc, OSError) and exc.strerror and not isinstance(exc, ssl.SSLError):
        why = exc.strerror
    else:
        why = f"not a PEM certificate ({_reason(exc)})"
    return f"[mqtt] {key} {path}: {why}"


def _reason(exc: BaseException) -> str:
    return str(getattr(exc, "reason", None) or getattr(exc, "strerror", None) or exc)


_UNKNOWN_ISSUER = {2, 18, 19, 20, 21}
"""OpenSSL's verify codes for a certificate no CA of ca_file signed (self-signed, unknown
issuer, incomplete chain)."""
_ALERTS = {
    "TLSV13_ALERT_CERTIFICATE_REQUIRED": "the broker requires a client certificate: set "
    "[mqtt] cert_file and key_file (`menwei gate init` or `menwei broker add-gate`)",
    "SSLV3_ALERT_CERTIFICATE_EXPIRED": "the broker refused this client's certificate: it "
    "has expired (or the broker's clock is wrong); issue a new one with `menwei broker "
    "add-gate SERVER_DIR/broker GATE` (a collector: `add-client`)",
    "SSLV3_ALERT_CERTIFICATE_REVOKED": "the broker refused this client's certificate: it was "
    "revoked (`menwei broker revoke`)",
    "TLSV1_ALERT_UNKNOWN_CA": "the broker refused this client's certificate: it is not from "
    "the site CA the broker trusts (cert_file of another site, or of an older CA)",
    "SSLV3_ALERT_BAD_CERTIFICATE": "the broker refused this client's certificate",
    "SSLV3_ALERT_UNSUPPORTED_CERTIFICATE": "the broker refused this client's certificate "
    "(not a client certificate: use one made by `menwei broker add-gate`/`add-client`)",
    "WRONG_VERSION_NUMBER": "the broker does not speak TLS on this port (an mqtt:// "
    "listener? mqtts:// is port 8883)",
}


def tls_failure(exc: BaseException | str, host: str) -> str | None:
    """One line saying why a TLS link to `host` failed, with the fix; None when `exc` (an
    exception or paho's error log line) is not about TLS."""
    if isinstance(exc, ssl.SSLCertVerificationError):
        code = exc.verify_code
        if code in (62, 64):  # X509_V_ERR_HOSTNAME_MISMATCH, X509_V_ERR_IP_ADDRESS_MISMATCH
            what = f"the address {host}" if code == 64 else repr(host)
            return (
                f"the broker's certificate is not valid for {what}: write [mqtt] broker"
                " with a name or address it was issued for, or add this one on the server:"
                f" `menwei broker renew SERVER_DIR/broker --host {host}` (and every other name"
                " the broker must keep: renew replaces the list)"
            )
        if code == 10:
            return (
                "the broker's certificate has expired: `menwei broker renew SERVER_DIR/broker`"
                " on the server"
            )
        if code == 9:
            return "the broker's certificate is not valid yet: is this machine's clock right?"
        if code in _UNKNOWN_ISSUER:
            return (
                "the broker's certificate is not signed by the CA of [mqtt] ca_file (another "
                f"site's broker, or not this site's ca.pem): {exc.verify_message}"
            )
        return f"the broker's certificate was refused: {exc.verify_message}"
    text = exc if isinstance(exc, str) else str(exc)
    found = re.search(r"\[SSL: ([A-Z0-9_]+)\]", text)
    if found is not None:
        reason = found.group(1)
        return _ALERTS.get(reason, f"TLS handshake failed: {reason.lower().replace('_', ' ')}")
    if isinstance(exc, ssl.SSLEOFError) or (
        isinstance(exc, str) and "EOF occurred in violation of protocol" in exc
    ):
        return (
            "the broker closed the TLS connection: it refused this client's certificate "
            "(another site's CA?) or accepts no TLS here"
        )
    if isinstance(exc, ssl.SSLError):
        return f"TLS handshake failed: {_reason(exc)}"
    return None


class LinkTrouble:
    """Says why a client's link to the broker fails, once per cause until it connects again,
    and when it connects.

    `attach(client)` installs paho's on_connect_fail (an attempt that failed on this side: the
    broker's port refused or unreachable, its name unknown, a failed handshake such as the
    broker's certificate) and a logger of its own for paho's errors (an alert the broker sent
    after the handshake: this client's certificate refused, which TLS 1.3 reports on the first
    read; paho's per-packet debug lines are not even formatted). The lines: "cannot reach the
    broker HOST:PORT: Connection refused", "broker HOST: WHY AND FIX" (TLS), "connected to the
    broker HOST:PORT". `last` is the current cause (None once connected); `failures` counts
    the failed attempts about TLS."""

    def __init__(self, log: logging.Logger, host: str, port: int) -> None:
        self.log = log
        self.host = host
        self.port = port
        self.last: str | None = None
        self.failures = 0

    def attach(self, client: Any) -> None:
        client.on_connect_fail = self._connect_failed
        # Outside the logging tree (not logging.getLogger): only this client's errors reach it.
        errors = logging.Logger(f"paho.{self.host}", logging.ERROR)
        errors.addHandler(_PahoErrors(self))
        client.enable_logger(errors)

    def connected(self) -> None:
        self.last = None
        self.log.info("connected to the broker %s:%d", self.host, self.port)

    def _connect_failed(self, _client: object, _userdata: object) -> None:
        # paho calls this inside its `except OSError:` around the connection attempt.
        self.note(sys.exc_info()[1])

    def note(self, exc: BaseException | str | None) -> None:
        """A failed attempt: `exc` is its exception or paho's error line."""
        if exc is None:
            return
        tls = tls_failure(exc, self.host)
        if tls is not None:
            self.failures += 1
            line = f"broker {self.host}: {tls}"
        elif isinstance(exc, OSError):
            line = f"cannot reach the broker {self.host}:{self.port}: {_reason(exc)}"
        else:
            return
        if line != self.last:
            self.last = line
            self.log.error("%s", line)


class _PahoErrors(logging.Handler):
    """paho's error lines ("failed to receive on socket: [SSL: ...]") to a LinkTrouble."""

    def __init__(self, trouble: LinkTrouble) -> None:
        super().__init__(logging.ERROR)
        self.trouble = trouble

    def emit(self, record: logging.LogRecord) -> None:
        text = record.getMessage()
        if "[SSL" in text:
            self.trouble.note(text)


@dataclass(frozen=True)
class CertificateInfo:
    """What a client certificate says: its identity (common name) and validity (UTC)."""

    name: str
    not_before: datetime
    not_after: datetime


def certificate_info(path: Path) -> CertificateInfo:
    """Read a PEM certificate. Raises BrokerTlsError."""
    try:
        cert = x509.load_pem_x509_certificate(path.read_bytes())
        name = str(cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value)
    except OSError as exc:
        raise BrokerTlsError(f"{path}: {exc.strerror}") from None
    except (ValueError, IndexError) as exc:
        raise BrokerTlsError(f"{path}: not a PEM certificate ({exc})") from None
    return CertificateInfo(name, cert.not_valid_before_utc, cert.not_valid_after_utc)
