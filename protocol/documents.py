"""Signed JSON documents: how policy, trust roots and the register travel to gates.

A retained MQTT message can be written by anyone who can publish to the
broker, so a gate accepts a document only when it is signed by a key of the
trust root it holds now (protocol.roots: the versioned set of the site's
keys, provisioned offline by `menwei gate init` and moved forward only by
root documents signed with keys it already trusts) and is newer than the one
it holds.

The envelope, the same for every kind (config, register, freshness, root and
any kind added later)::

    {"kind": "register", "site": "sunny", "version": 42, "root": 3,
     "issued_at": "2026-11-29T00:00:00.000+00:00", "body": {...},
     "key_id": 2, "signature": "<base64 Ed25519>",
     "chain": [<root document 1>, <root document 2>, <root document 3>]}

`root` is signed: the trust root (its version) the document was signed
under; a document from a server before trust roots has none (root 0).
`chain` is beside the signed part: the root documents 1..root, so any single
document lets a gate that missed rotations catch up, whatever order retained
messages arrive in. Documents of a kind are ordered by (root, version): one
signed under a newer root supersedes every version an older root signed.
"""

from __future__ import annotations

import base64
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from protocol.errors import MessageError
from protocol.passes import TrustKey

ROOT_KIND = "root"
"""The kind of a trust root document (protocol.roots)."""

MAX_DOCUMENT_BYTES = 8 * 1024 * 1024
"""The largest signed document (config, register, freshness statement) a gate accepts, in bytes
of its JSON: a register snapshot is compressed (protocol.register_documents; 100,000 passes are
~1.4 MB), and the server signs nothing larger. The collector publishes nothing larger (it raises a
`document_too_large` alert instead), and the shipped broker's `max_packet_size`
(systemd/mosquitto-menwei.conf) is MAX_DOCUMENT_BYTES + MQTT_HEADROOM_BYTES, so every document
a gate would accept also passes the broker."""
MAX_VERSION = 2**53
"""Versions (and statement serials) are stored as SQLite integers and read by JavaScript."""
MQTT_HEADROOM_BYTES = 64 * 1024
"""What an MQTT PUBLISH carries besides the payload (fixed header, topic, packet id,
properties: well under 1 KiB for Menwei's topics), with a margin."""


def canonical_json(body: object) -> bytes:
    return json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


class UntrustedDocument(MessageError):
    """A well-formed document the reader does not trust: signed by a key outside its trust
    root, a signature that does not verify, or a chain of roots that does not lead from the
    reader's root (protocol.roots.RootError). A gate logs it, counts it and raises an
    alert (`untrusted_document`)."""


MAX_CHAIN = 1000
"""The most root documents a document may carry (each ~150 bytes plus ~60 per key)."""


@dataclass(frozen=True)
class SignedDocument:
    kind: str  # "config", "register", "freshness" (protocol.freshness), "root" (protocol.roots)
    site: str
    version: int
    issued_at: str  # ISO-8601 UTC, server time
    body: dict[str, Any]
    key_id: int
    signature: bytes
    root: int = 0
    """The trust root (its version) the document was signed under; 0: a document signed
    before the site had trust roots (its signed bytes name none)."""
    chain: tuple[SignedDocument, ...] = ()
    """Root documents, consecutive versions ending at `root`; not signed with the document
    (each root document is signed itself)."""

    @property
    def mark(self) -> tuple[int, int]:
        """What orders documents of a kind: (root, version)."""
        return (self.root, self.version)

    def signed_bytes(self) -> bytes:
        signed: dict[str, object] = {
            "kind": self.kind,
            "site": self.site,
            "version": self.version,
            "issued_at": self.issued_at,
            "body": self.body,
        }
        if self.root:
            signed["root"] = self.root
        return canonical_json(signed)

    def to_json(self) -> dict[str, Any]:
        data: dict[str, Any] = {
            "kind": self.kind,
            "site": self.site,
            "version": self.version,
        }
        if self.root:
            data["root"] = self.root
        data |= {
            "issued_at": self.issued_at,
            "body": self.body,
            "key_id": self.key_id,
            "signature": base64.b64encode(self.signature).decode(),
        }
        if self.chain:
            data["chain"] = [c.to_json() for c in self.chain]
        return data

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
    *,
    root: int = 0,
    chain: tuple[SignedDocument, ...] = (),
) -> SignedDocument:
    """Sign a document under trust root `root`, carrying `chain` (root documents ..root)."""
    unsigned = SignedDocument(kind, site, version, issued_at, body, key_id, b"", root, chain)
    sig = private_key.sign(unsigned.signed_bytes())
    return SignedDocument(kind, site, version, issued_at, body, key_id, sig, root, chain)


def parse_document(raw: bytes, *, kind: str, site: str) -> SignedDocument:
    """Parse a document of `kind` for `site` without verifying its signature (verify_signature,
    protocol.roots.verify). Raises MessageError with a clear reason."""
    if len(raw) > MAX_DOCUMENT_BYTES:
        raise MessageError(f"{kind} document of {len(raw)} bytes is too large")
    try:
        data = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as exc:
        raise MessageError(f"{kind} document is malformed: {exc}") from None
    except RecursionError:  # JSON nested thousands deep
        raise MessageError(f"{kind} document is nested too deeply") from None
    return _document(data, kind=kind, site=site, chained=True)


def _document(data: Any, *, kind: str, site: str, chained: bool) -> SignedDocument:
    try:
        chain_data = data.get("chain", []) if chained else []
        if not isinstance(chain_data, list) or len(chain_data) > MAX_CHAIN:
            raise ValueError(f"chain must be a list of at most {MAX_CHAIN} root documents")
        doc = SignedDocument(
            kind=str(data["kind"]),
            site=str(data["site"]),
            version=int(data["version"]),
            issued_at=str(data["issued_at"]),
            body=dict(data["body"]),
            key_id=int(data["key_id"]),
            signature=base64.b64decode(data["signature"], validate=True),
            root=_whole(data.get("root", 0)),
            chain=tuple(_document(c, kind=ROOT_KIND, site=site, chained=False) for c in chain_data),
        )
    except (ValueError, KeyError, TypeError, AttributeError, OverflowError) as exc:
        # int(1e999) overflows
        raise MessageError(f"{kind} document is malformed: {exc}") from None
    if not chained and "chain" in data:
        raise MessageError("a root document in a chain carries no chain")
    if not 1 <= doc.version <= MAX_VERSION:
        raise MessageError(f"{kind} document version {doc.version} is not 1..{MAX_VERSION}")
    if not 0 <= doc.root <= MAX_VERSION:
        raise MessageError(f"{kind} document root {doc.root} is not 0..{MAX_VERSION}")
    if doc.kind != kind or doc.site != site:
        raise MessageError(f"document is {doc.kind!r} for site {doc.site!r}, expected {kind!r}")
    versions = [c.version for c in doc.chain]
    if versions and versions != list(range(versions[0], versions[0] + len(versions))):
        raise MessageError(f"{kind} document carries roots {versions}: not consecutive")
    return doc


_CLAIMED_ROOT = re.compile(rb'"root":\s*(\d{1,16})[,}]')
CLAIM_HEAD_BYTES = 512
"""How far into a document `claimed_root` looks: the envelope's fields before its body."""


def claimed_root(raw: bytes) -> int:
    """The root a document says it was signed under, read from its head without parsing it
    (0 when it names none there): an ordering hint for documents that arrive together, never
    a reason to trust one (protocol.roots.verify checks)."""
    found = _CLAIMED_ROOT.search(raw[:CLAIM_HEAD_BYTES].split(b'"body"', 1)[0])
    return int(found.group(1)) if found else 0


def _whole(value: object) -> int:
    """An integer field that JSON gave as an integer (not a bool, float or text)."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"{value!r} is not a whole number")
    return value


def verify_signature(doc: SignedDocument, trust_keys: Mapping[int, TrustKey]) -> None:
    """Check that `doc` is signed by one of `trust_keys`. Raises UntrustedDocument."""
    key = trust_keys.get(doc.key_id)
    if key is None:
        raise UntrustedDocument(f"{doc.kind} document signed by untrusted key {doc.key_id}")
    try:
        key.verifier().verify(doc.signature, doc.signed_bytes())
    except InvalidSignature:
        raise UntrustedDocument(f"{doc.kind} document signature does not verify") from None


def decode_document(
    raw: bytes, *, kind: str, site: str, trust_keys: Mapping[int, TrustKey]
) -> SignedDocument:
    """Parse and verify a signed document against `trust_keys`, ignoring its chain (the
    server reading what it signed; a gate verifies with protocol.roots.verify). Raises
    MessageError (UntrustedDocument for the signature) with a clear reason."""
    doc = parse_document(raw, kind=kind, site=site)
    verify_signature(doc, trust_keys)
    return doc


# The provisioning bundle: what `menwei gate init` reads from a server directory (or a USB
# stick with a copy of it). The trust file is the gate's trust anchor.
BUNDLE_DIR = "bundle"
TRUST_FILE = "trust.json"
CONFIG_FILE = "config.json"
REGISTER_FILE = "register.json"
FRESHNESS_FILE = "freshness.json"


def encode_trust(site: str, keys: list[TrustKey], root: int) -> bytes:
    """The trust file: the site's trust root `root` (its version) and its keys."""
    data = {"site": site, "root": root, "trust_keys": [k.to_json() for k in keys]}
    return json.dumps(data, indent=1).encode()


def decode_trust_file(raw: bytes) -> tuple[str, int, dict[int, TrustKey]]:
    """(site, root version, keys) of a trust file; one written before trust roots names no
    root: 0. Raises MessageError."""
    try:
        data = json.loads(raw)
        keys = {k.key_id: k for k in map(TrustKey.from_json, data["trust_keys"])}
        root = _whole(data.get("root", 0))
        if not 0 <= root <= MAX_VERSION or not keys:
            raise ValueError("needs a root version in range and at least one key")
        return str(data["site"]), root, keys
    except (ValueError, KeyError, TypeError, AttributeError, RecursionError) as exc:
        raise MessageError(f"trust file is malformed: {exc}") from None


def decode_trust(raw: bytes) -> tuple[str, dict[int, TrustKey]]:
    """(site, keys) of a trust file (decode_trust_file). Raises MessageError."""
    site, _root, keys = decode_trust_file(raw)
    return site, keys
