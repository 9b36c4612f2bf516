"""Where the guard page listens: on this gate only (loopback), or beyond it.

The guard page opens the gate (with a guard's PIN) and shows who passed: the kiosk
browser runs on the gate, so `[guard] http` belongs on 127.0.0.1 (or ::1, localhost).
`menwei gate check-config` and `menwei gate run` warn when it would listen anywhere else.
"""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Callable, Sequence
from typing import Any

Resolver = Callable[[str], Sequence[str]]


def _resolve(host: str) -> list[str]:
    """The addresses `host` resolves to (the system's resolver; [] when it does not)."""
    try:
        infos: list[Any] = socket.getaddrinfo(host, None, proto=socket.IPPROTO_TCP)
    except (OSError, UnicodeError):
        return []
    return [str(info[4][0]) for info in infos]


def split_host(http: str) -> str:
    """The host of "HOST:PORT" ("[::1]:8000" → "::1")."""
    host = http.rpartition(":")[0]
    return host[1:-1] if host.startswith("[") and host.endswith("]") else host


def beyond_loopback(http: str, resolve: Resolver = _resolve) -> str | None:
    """A WARNING line when "HOST:PORT" would listen beyond this machine (0.0.0.0, ::, a LAN
    address, a name that does not resolve to loopback only); None for loopback. `resolve`
    is the system resolver (tests pass another)."""
    host = split_host(http)
    try:
        addresses = [ipaddress.ip_address(host)]
        where = "every interface" if addresses[0].is_unspecified else f"address {host}"
    except ValueError:
        resolved = resolve(host)
        addresses = []
        for a in resolved:
            try:
                addresses.append(ipaddress.ip_address(a.split("%")[0]))
            except ValueError:
                continue
        where = f"name {host!r} (resolves to {', '.join(map(str, resolved)) or 'nothing'})"
    if addresses and all(a.is_loopback for a in addresses):
        return None
    return (
        f"WARNING: [guard] http = {http!r} listens beyond this gate ({where}): anyone who can"
        " reach it can try guards' PINs to open the gate and can see who passed. Bind it to"
        " 127.0.0.1:PORT (the kiosk browser runs on the gate); see docs/security.md."
    )
