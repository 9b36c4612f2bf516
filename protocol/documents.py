"""Signed JSON documents: how policy, trust keys and the register travel to gates.

A retained MQTT message can be written by anyone who can publish to the
broker, so a gate accepts a document only when it is signed by a key it
already trusts (provisioned offline by `menwei gate init`) and is newer than
the one it holds.
"""

from __future__ import annotations

import base64
import json
from dataclasses import dataclass
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from protocol.errors import MessageError
from protocol.passes import TrustKey

MAX_DOCUMENT_BYTES = 8 * 1024 * 1024
MAX_VERSION = 2**53
"""Versions (and statement serials) are stored as SQLite integers and read by JavaScript."""
"""The largest signed document (config, register, freshness statement) a gate accepts, in bytes
of its JSON: a register snapshot is compressed (protocol.register_documents; 100,000 passes are
~1.4 MB), and the server signs nothing larger. The collector publishes nothing larger (it raises a
`document_too_large` alert instead), and the shipped broker's `max_packet_size`
(systemd/mosquitto-menwei.conf) is MAX_DOCUMENT_BYTES + MQTT_HEADROOM_BYTES, so every document
a gate would accept also passes the broker."""
MQTT_HEADROOM_BYTES = 64 * 1024
"""What an MQTT PUBLISH carries besides the payload (fixed header, topic, packet id,
properties: well under 1 KiB for Menwei's topics), with a margin."""


def canonical_json(body: object) -> bytes:
    return json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


@dataclass(frozen=True)
class SignedDocument:
    kind: str  # "config", "register" or "freshness" (protocol.freshness)
    site: str
    version: int
    issued_at: str  # ISO-8601 UTC, server time
    body: dict[str, Any]
    key_id: int
    signature: bytes

    def signed_bytes(self) -> bytes:
        return canonical_json(
            {
                "kind": self.kind,
                "site": self.site,
                "version": self.version,
                "issued_at": self.issued_at,
                "body": self.body,
            }
        )

    def to_json(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "site": self.site,
            "version": self.version,
            "issued_at": self.issued_at,
            "body": self.body,
            "key_id": self.key_id,
            "signature": base64.b64encode(self.signature).decode(),
        }

    def encode(self) -> bytes:
        return json.dumps(self.to_json(), ensure_ascii=False).encode()


def sign_document(
    kind: str,
    site: str,
    version: int,
    issued_at: str,
    body: dict[str, Any],
    key_id: int,
    private_key: Ed25519PrivateKey,
) -> SignedDocument:
    unsigned = SignedDocument(kind, site, version, issued_at, body, key_id, b"")
    sig = private_key.sign(unsigned.signed_bytes())
    return SignedDocument(kind, site, version, issued_at, body, key_id, sig)


def decode_document(
    raw: bytes, *, kind: str, site: str, trust_keys: dict[int, TrustKey]
) -> SignedDocument:
    """Parse and verify a signed document. Raises MessageError with a clear reason."""
    if len(raw) > MAX_DOCUMENT_BYTES:
        raise MessageError(f"{kind} document of {len(raw)} bytes is too large")
    try:
        data = json.loads(raw)
        doc = SignedDocument(
            kind=str(data["kind"]),
            site=str(data["site"]),
            version=int(data["version"]),
            issued_at=str(data["issued_at"]),
            body=dict(data["body"]),
            key_id=int(data["key_id"]),
            signature=base64.b64decode(data["signature"], validate=True),
        )
    except (ValueError, KeyError, TypeError, OverflowError) as exc:  # int(1e999) overflows
        raise MessageError(f"{kind} document is malformed: {exc}") from None
    except RecursionError:  # JSON nested thousands deep
        raise MessageError(f"{kind} document is nested too deeply") from None
    if not 1 <= doc.version <= MAX_VERSION:
        raise MessageError(f"{kind} document version {doc.version} is not 1..{MAX_VERSION}")
    if doc.kind != kind or doc.site != site:
        raise MessageError(f"document is {doc.kind!r} for site {doc.site!r}, expected {kind!r}")
    key = trust_keys.get(doc.key_id)
    if key is None:
        raise MessageError(f"{kind} document signed by untrusted key {doc.key_id}")
    try:
        key.verifier().verify(doc.signature, doc.signed_bytes())
    except InvalidSignature:
        raise MessageError(f"{kind} document signature does not verify") from None
    return doc


# The provisioning bundle: what `menwei gate init` reads from a server directory (or a USB
# stick with a copy of it). The trust file is the gate's trust anchor.
BUNDLE_DIR = "bundle"
TRUST_FILE = "trust.json"
CONFIG_FILE = "config.json"
REGISTER_FILE = "register.json"
FRESHNESS_FILE = "freshness.json"


def encode_trust(site: str, keys: list[TrustKey]) -> bytes:
    return json.dumps({"site": site, "trust_keys": [k.to_json() for k in keys]}, indent=1).encode()


def decode_trust(raw: bytes) -> tuple[str, dict[int, TrustKey]]:
    try:
        data = json.loads(raw)
        keys = {k.key_id: k for k in map(TrustKey.from_json, data["trust_keys"])}
        return str(data["site"]), keys
    except (ValueError, KeyError, TypeError) as exc:
        raise MessageError(f"trust file is malformed: {exc}") from None
