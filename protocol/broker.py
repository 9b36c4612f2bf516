"""Broker addresses as written in configs and on the command line: ``mqtt://HOST:PORT``."""

from __future__ import annotations

import re
from dataclasses import dataclass
from urllib.parse import urlsplit

from protocol.errors import ProtocolError

_HOST = re.compile(r"[A-Za-z0-9._-]{1,253}|[0-9A-Fa-f:.]{2,45}")
"""A DNS name, an IPv4 address, or an IPv6 address (written in brackets in the URL)."""


@dataclass(frozen=True)
class BrokerAddress:
    host: str
    port: int
    tls: bool

    def __str__(self) -> str:
        return f"{'mqtts' if self.tls else 'mqtt'}://{self.host}:{self.port}"


def parse_broker(url: str) -> BrokerAddress:
    """mqtt://HOST[:PORT] (port 1883 unless given) or mqtts://HOST[:PORT] (8883); a bare
    HOST[:PORT] is mqtt://. The port is 1..65535; no user, password, path, query or fragment
    (credentials are [mqtt] username and password). Raises ProtocolError with the reason."""
    parts = urlsplit(url if "://" in url else f"mqtt://{url}")
    if "@" in parts.netloc:  # never echo a password into a log or a terminal
        raise ProtocolError(
            f"broker '{parts.scheme}://…@{parts.netloc.rpartition('@')[2]}': no user or"
            " password in the URL ([mqtt] username and password)"
        )
    if parts.scheme not in ("mqtt", "mqtts"):
        raise ProtocolError(f"broker {url!r}: scheme must be mqtt:// or mqtts://")
    if not parts.hostname:
        raise ProtocolError(f"broker {url!r}: no host")
    if not _HOST.fullmatch(parts.hostname):
        raise ProtocolError(f"broker {url!r}: the host must be a DNS name or an IP address")
    if parts.path not in ("", "/") or parts.query or parts.fragment:
        raise ProtocolError(
            f"broker {url!r}: only mqtt://HOST:PORT or mqtts://HOST:PORT (no path or query)"
        )
    try:
        port = parts.port
    except ValueError:
        port = 0
    if port is None:
        port = 8883 if parts.scheme == "mqtts" else 1883
    elif not 1 <= port <= 65535:
        raise ProtocolError(f"broker {url!r}: the port must be 1..65535")
    return BrokerAddress(parts.hostname, port, parts.scheme == "mqtts")
