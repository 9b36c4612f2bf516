"""Broker addresses as written in configs and on the command line: ``mqtt://HOST:PORT``."""

from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import urlsplit

from protocol.errors import ProtocolError


@dataclass(frozen=True)
class BrokerAddress:
    host: str
    port: int
    tls: bool

    def __str__(self) -> str:
        return f"{'mqtts' if self.tls else 'mqtt'}://{self.host}:{self.port}"


def parse_broker(url: str) -> BrokerAddress:
    """mqtt://host[:1883] or mqtts://host[:8883]. Raises ProtocolError with the reason."""
    parts = urlsplit(url if "://" in url else f"mqtt://{url}")
    if parts.scheme not in ("mqtt", "mqtts"):
        raise ProtocolError(f"broker {url!r}: scheme must be mqtt:// or mqtts://")
    if not parts.hostname:
        raise ProtocolError(f"broker {url!r}: no host")
    try:
        port = parts.port or (8883 if parts.scheme == "mqtts" else 1883)
    except ValueError:
        raise ProtocolError(f"broker {url!r}: bad port") from None
    return BrokerAddress(parts.hostname, port, parts.scheme == "mqtts")
