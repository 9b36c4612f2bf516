"""The pass: a compact signed payload, encoded for the QR alphanumeric mode.

QR text = ``PREFIX + base45(payload || signature)`` where

===========  =======  ==============================================
field        bytes    meaning
===========  =======  ==============================================
version      1        payload format, currently 1
key_id       2        which trust key signed it (big-endian)
pass_id      4        unsigned, unique per site
site_tag     4        first 4 bytes of SHA-256 of the site slug
role         1        1 resident, 2 visitor, 3 staff
valid_from   4        Unix seconds (UTC)
valid_until  4        Unix seconds (UTC), exclusive
hh_len       1        length of the household id
household    1..24    household id, ASCII ``[A-Za-z0-9._-]``
signature    64       Ed25519 over ``PREFIX`` bytes + payload
===========  =======  ==============================================

No name, phone or room is in the pass (privacy by default). A typical pass is
about 145 characters: QR version 6 at error-correction level M. The encoding is
canonical: decoding re-encodes and compares, so a pass has exactly one valid
text and any other text (a changed character included) is refused.
"""

from __future__ import annotations

import base64
import hashlib
import re
import struct
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import IntEnum

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from protocol import base45
from protocol.errors import PassError, ProtocolError

PREFIX = "MW1:"
FORMAT_VERSION = 1
SIGNATURE_LEN = 64
MAX_TEXT_LEN = 200  # longer QR texts are refused before any parsing work
_HEADER = struct.Struct(">BHI4sBIIB")
_HOUSEHOLD_RE = re.compile(r"^[A-Za-z0-9._-]{1,24}$")
_SLUG_RE = re.compile(r"^[a-z0-9][a-z0-9-]{0,31}$")


class Role(IntEnum):
    RESIDENT = 1
    VISITOR = 2
    STAFF = 3

    @property
    def label(self) -> str:
        return self.name.lower()

    @classmethod
    def parse(cls, label: str) -> Role:
        try:
            return cls[label.upper()]
        except KeyError:
            raise ProtocolError(f"unknown role {label!r} (resident, visitor or staff)") from None


def check_slug(slug: str, what: str = "slug") -> str:
    """Site and gate names are slugs: lower-case letters, digits and '-', at most 32."""
    if not _SLUG_RE.match(slug):
        raise ProtocolError(f"{what} {slug!r} must be 1-32 of a-z, 0-9 and '-'")
    return slug


def check_household(household: str) -> str:
    if not _HOUSEHOLD_RE.match(household):
        raise ProtocolError(f"household id {household!r} must be 1-24 of A-Z a-z 0-9 . _ -")
    return household


def site_tag(site: str) -> bytes:
    return hashlib.sha256(site.encode()).digest()[:4]


@dataclass(frozen=True)
class PassPayload:
    key_id: int
    pass_id: int
    site: str
    household: str
    role: Role
    valid_from: int  # Unix seconds, UTC
    valid_until: int  # Unix seconds, UTC, exclusive

    def to_bytes(self) -> bytes:
        hh = check_household(self.household).encode("ascii")
        if not self.valid_from < self.valid_until:
            raise ProtocolError("valid_from must be before valid_until")
        try:
            head = _HEADER.pack(
                FORMAT_VERSION,
                self.key_id,
                self.pass_id,
                site_tag(check_slug(self.site, "site")),
                int(self.role),
                self.valid_from,
                self.valid_until,
                len(hh),
            )
        except struct.error as exc:
            raise ProtocolError(f"pass field out of range: {exc}") from None
        return head + hh


@dataclass(frozen=True)
class TrustKey:
    """A public key that gates trust for passes (and signed documents) of one site."""

    key_id: int
    public_key: bytes  # raw 32-byte Ed25519 public key

    def verifier(self) -> Ed25519PublicKey:
        return Ed25519PublicKey.from_public_bytes(self.public_key)

    def to_json(self) -> dict[str, object]:
        return {"key_id": self.key_id, "public_key": base64.b64encode(self.public_key).decode()}

    @classmethod
    def from_json(cls, data: object) -> TrustKey:
        if not isinstance(data, dict):
            raise ProtocolError("trust key must be an object")
        try:
            key = cls(int(data["key_id"]), base64.b64decode(data["public_key"], validate=True))
        except (KeyError, TypeError, ValueError) as exc:
            raise ProtocolError(f"bad trust key: {exc}") from None
        if len(key.public_key) != 32:
            raise ProtocolError("trust key must be 32 bytes")
        return key


def public_bytes(private_key: Ed25519PrivateKey) -> bytes:
    return private_key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)


def sign_pass(payload: PassPayload, private_key: Ed25519PrivateKey) -> str:
    """The one QR text of this pass."""
    body = payload.to_bytes()
    signature = private_key.sign(PREFIX.encode() + body)
    return PREFIX + base45.encode(body + signature)


@dataclass(frozen=True)
class ParsedPass:
    """The fields of a QR text, before its signature and site are checked."""

    key_id: int
    pass_id: int
    site_tag: bytes
    role: Role
    valid_from: int
    valid_until: int
    household: str
    signed: bytes
    signature: bytes


def parse_pass(text: str) -> ParsedPass:
    """Split a QR text into its fields without trusting it. Raises PassError('malformed')."""
    if len(text) > MAX_TEXT_LEN:
        raise PassError("malformed", f"text of {len(text)} characters is too long")
    if not text.startswith(PREFIX):
        raise PassError("malformed", "not a Menwei pass (wrong prefix)")
    try:
        raw = base45.decode(text[len(PREFIX) :])
    except ProtocolError as exc:
        raise PassError("malformed", str(exc)) from None
    if len(raw) < _HEADER.size + 1 + SIGNATURE_LEN:
        raise PassError("malformed", "too short")
    body, signature = raw[:-SIGNATURE_LEN], raw[-SIGNATURE_LEN:]
    version, key_id, pass_id, tag, role, vfrom, vuntil, hh_len = _HEADER.unpack_from(body)
    if version != FORMAT_VERSION:
        raise PassError("malformed", f"unsupported pass format version {version}")
    if len(body) != _HEADER.size + hh_len:
        raise PassError("malformed", "length does not match household field")
    try:
        household = check_household(body[_HEADER.size :].decode("ascii"))
        parsed_role = Role(role)
    except (UnicodeDecodeError, ValueError) as exc:
        raise PassError("malformed", str(exc)) from None
    return ParsedPass(
        key_id,
        pass_id,
        tag,
        parsed_role,
        vfrom,
        vuntil,
        household,
        PREFIX.encode() + body,
        signature,
    )


def verify_pass(text: str, site: str, trust_keys: dict[int, TrustKey]) -> PassPayload:
    """Check that `text` is a genuine pass for `site`. Validity in time is checked by the caller.

    Raises PassError with reason malformed, unknown_key, bad_signature or wrong_site. The
    encoding is canonical because base45 decoding is strict and every field is length-checked,
    so the signed bytes determine the text.
    """
    parsed = parse_pass(text)
    key = trust_keys.get(parsed.key_id)
    if key is None:
        raise PassError("unknown_key", f"key id {parsed.key_id} is not trusted here")
    try:
        key.verifier().verify(parsed.signature, parsed.signed)
    except InvalidSignature:
        raise PassError("bad_signature") from None
    if parsed.site_tag != site_tag(site):
        raise PassError("wrong_site")
    return PassPayload(
        parsed.key_id,
        parsed.pass_id,
        site,
        parsed.household,
        parsed.role,
        parsed.valid_from,
        parsed.valid_until,
    )


def unix(dt: datetime) -> int:
    if dt.tzinfo is None:
        raise ProtocolError("naive datetime: pass times must be timezone-aware")
    return int(dt.timestamp())


def from_unix(seconds: int) -> datetime:
    return datetime.fromtimestamp(seconds, UTC)
