"""Who the client is: the socket peer, or what a trusted reverse proxy says it is.

Anyone can send `X-Forwarded-For`; believing it from anyone let a single host rotate it
and escape the per-address login limit (uvicorn believes it from 127.0.0.1 by default,
so the dashboard's server switches that off: server/web/cli.py). `ClientAddress` sets
the request's client from the headers only when the socket peer is in `[web]
trusted_proxies`, and then takes the right-most X-Forwarded-For entry that is not itself
a trusted proxy: entries to its left were written by the client and prove nothing.
An entry that is not an IP address where one is needed ends the walk at the last
trusted hop (a misconfigured proxy then counts as one client, never as many).
`X-Forwarded-Proto` (`http`/`https`) is taken from a trusted peer too (cookies are
marked Secure behind a TLS proxy). RFC 7239's `Forwarded` header is not read.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Sequence

from starlette.types import ASGIApp, Receive, Scope, Send

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


def parse_networks(entries: Iterable[str]) -> tuple[Network, ...]:
    """Addresses or CIDR networks (`10.0.0.5`, `10.0.0.0/8`, `::1`) → networks. Raises
    ValueError naming the first entry that is neither."""
    networks = []
    for entry in entries:
        try:
            networks.append(ipaddress.ip_network(entry.strip(), strict=False))
        except ValueError:
            raise ValueError(
                f"trusted_proxies: {entry!r} is not an IP address or network (CIDR)"
            ) from None
    return tuple(networks)


def _address(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    text = text.strip()
    if text.startswith("[") and "]" in text:  # [v6]:port
        text = text[1 : text.index("]")]
    elif text.count(":") == 1:  # v4:port
        text = text.split(":", 1)[0]
    try:
        return ipaddress.ip_address(text)
    except ValueError:
        return None


def is_trusted(address: str, trusted: Sequence[Network]) -> bool:
    """Whether `address` (an IP address, perhaps with a port) is in a trusted network."""
    parsed = _address(address)
    return parsed is not None and any(parsed in net for net in trusted)


def client_address(peer: str, forwarded_for: Sequence[str], trusted: Sequence[Network]) -> str:
    """The client of a request from socket peer `peer` carrying these X-Forwarded-For
    header values (each a comma-separated list, in order), given the trusted proxies."""
    if not is_trusted(peer, trusted):
        return peer
    hops = [h.strip() for value in forwarded_for for h in value.split(",") if h.strip()]
    client = peer
    for hop in reversed(hops):
        address = _address(hop)
        if address is None:
            break
        client = str(address)
        if not is_trusted(client, trusted):
            break
    return client


class ClientAddress:
    """Pure ASGI middleware: `scope["client"]` (and `scheme`) as the module doc says."""

    def __init__(self, app: ASGIApp, trusted: Sequence[str] = ()) -> None:
        self.app = app
        self.trusted = parse_networks(trusted)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        client = scope.get("client") if scope["type"] in ("http", "websocket") else None
        if client and is_trusted(client[0], self.trusted):
            headers = scope["headers"]
            forwarded = [v.decode("latin-1") for k, v in headers if k == b"x-forwarded-for"]
            scope = {**scope, "client": (client_address(client[0], forwarded, self.trusted), 0)}
            proto = [v.strip() for k, v in headers if k == b"x-forwarded-proto"]
            if proto and proto[-1] in (b"http", b"https"):
                scope["scheme"] = proto[-1].decode()
        await self.app(scope, receive, send)
