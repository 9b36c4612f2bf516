"""Base45 (RFC 9285): bytes as text in the QR alphanumeric alphabet.

Decoding is strict, so that a byte string has exactly one encoding: any text
that `encode` would not have produced (out-of-alphabet characters, a triple
above 0xFFFF, a dangling character) is rejected.
"""

from __future__ import annotations

from protocol.errors import ProtocolError

ALPHABET = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZ $%*+-./:"
_VALUE = {c: i for i, c in enumerate(ALPHABET)}


def encode(data: bytes) -> str:
    out: list[str] = []
    for i in range(0, len(data) - 1, 2):
        n = data[i] * 256 + data[i + 1]
        c, n = n % 45, n // 45
        d, e = n % 45, n // 45
        out += (ALPHABET[c], ALPHABET[d], ALPHABET[e])
    if len(data) % 2:
        c, d = data[-1] % 45, data[-1] // 45
        out += (ALPHABET[c], ALPHABET[d])
    return "".join(out)


def decode(text: str) -> bytes:
    try:
        values = [_VALUE[ch] for ch in text]
    except KeyError as exc:
        raise ProtocolError(f"character {exc.args[0]!r} is not in the base45 alphabet") from None
    if len(values) % 3 == 1:
        raise ProtocolError("base45 text has a dangling character")
    out = bytearray()
    for i in range(0, len(values) - 2, 3):
        n = values[i] + values[i + 1] * 45 + values[i + 2] * 2025
        if n > 0xFFFF:
            raise ProtocolError("base45 triple out of range")
        out += n.to_bytes(2, "big")
    if len(values) % 3 == 2:
        n = values[-2] + values[-1] * 45
        if n > 0xFF:
            raise ProtocolError("base45 pair out of range")
        out.append(n)
    return bytes(out)
