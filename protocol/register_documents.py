"""The register on the wire: a compressed snapshot and a cumulative delta, as signed documents.

A large compound's register does not fit one MQTT message as plain JSON (100,000 passes are
~10 MB), and most changes are one pass. So the register travels as two retained documents
(docs/protocol.md, "The register: snapshot and delta"):

- the **snapshot** (kind ``"register"``, topic ``menwei/{site}/register``): the whole
  register, its JSON compressed with zlib::

      {"encoding": "zlib", "bytes": 10144756, "passes": 98000, "data": "<base64>"}

- the **delta** (kind ``"register_delta"``, topic ``menwei/{site}/register/delta``):
  everything that changed since the snapshot whose version it names as its ``base``
  (protocol.register.RegisterDelta, compressed the same way)::

      {"base": 41, "encoding": "zlib", "bytes": 420, "data": "<base64>"}

Snapshots and deltas are numbered in one series (the register's version): the delta's
version is the version of the register it produces, the one freshness statements name.

Decompression happens only on a document whose signature was verified (`decode_document`
makes the `SignedDocument` these functions read), and never past MAX_REGISTER_JSON_BYTES:
the size a body declares is checked first and the output is cut one byte past it, so a
compression bomb is refused with its reason and costs no more memory than about twice the
size it declares.
"""

from __future__ import annotations

import base64
import binascii
import json
import zlib
from collections.abc import Mapping
from typing import Any

from protocol.documents import SignedDocument, canonical_json
from protocol.errors import MessageError, Superseded
from protocol.register import Register, RegisterDelta

SNAPSHOT = "register"
DELTA = "register_delta"
DELTA_FILE = "register-delta.json"
"""The delta in the provisioning bundle, beside protocol.documents.REGISTER_FILE (the
snapshot). Absent when the snapshot is the register."""

ENCODING = "zlib"
MAX_REGISTER_JSON_BYTES = 32 * 1024 * 1024
"""The largest register (snapshot or delta) a gate decompresses, in bytes of its JSON: room for
~330,000 passes at ~101 bytes each. A snapshot of 100,000 passes is ~10 MB of JSON, 1.4 MB
once compressed and base64-encoded (docs/scaling.md). The server publishes nothing larger."""


class AwaitingSnapshot(MessageError):
    """A genuine register delta of a snapshot the reader does not hold yet: a gate keeps it
    and applies it when that snapshot comes."""


class RegisterTooLarge(MessageError):
    """A register whose JSON is over MAX_REGISTER_JSON_BYTES (the server does not publish it;
    a gate does not decompress it)."""


def snapshot_body(register: Register) -> dict[str, Any]:
    """The body of a snapshot document holding `register`. Raises RegisterTooLarge."""
    return {**_pack(register.to_json(), "register"), "passes": len(register.passes)}


def delta_body(base: int, delta: RegisterDelta) -> dict[str, Any]:
    """The body of a delta document: `delta` applies to the snapshot of version `base`.
    Raises RegisterTooLarge."""
    return {"base": base, **_pack(delta.to_json(), "register delta")}


def body_bytes(body: Mapping[str, Any]) -> int:
    """The bytes `body` takes in a document as published (SignedDocument.encode)."""
    return len(json.dumps(body, ensure_ascii=False).encode())


def read_snapshot(doc: SignedDocument) -> Register:
    """The register a verified snapshot holds; a body of plain register JSON (servers before
    compression) is read as it is. Raises MessageError (RegisterTooLarge for a bomb) or
    ProtocolError (a bad register)."""
    if "encoding" not in doc.body:
        return Register.from_json(doc.body)
    return Register.from_json(_unpack(doc.body, f"register v{doc.version}"))


def delta_base(doc: SignedDocument) -> int:
    """The snapshot version a verified delta applies to. Raises MessageError."""
    base = doc.body.get("base")
    if isinstance(base, bool) or not isinstance(base, int) or not 1 <= base < doc.version:
        raise MessageError(f"register delta v{doc.version}: base {base!r} is not 1..version-1")
    return base


def apply_delta(doc: SignedDocument, snapshot: Register, held: tuple[int, int]) -> Register:
    """The register a verified delta makes of `snapshot`, where `held` is (the snapshot's
    version, the version of the register held now); the one held for the delta held (a
    retained delta delivered again). Raises Superseded for a delta the gate has moved past
    (of an older snapshot, or older than what it holds), MessageError for one whose snapshot
    it does not hold yet (AwaitingSnapshot: it waits for it) or that cannot be read."""
    base, version = delta_base(doc), doc.version
    snapshot_version, held_version = held
    if base < snapshot_version or version < held_version:
        raise Superseded(
            f"register delta v{version} (of snapshot v{base}) is older than the register held"
            f" (v{held_version}, snapshot v{snapshot_version})"
        )
    if base != snapshot_version:
        raise AwaitingSnapshot(
            f"register delta v{version} applies to snapshot v{base}, not held yet"
            f" (held: v{snapshot_version}): it waits for that snapshot"
        )
    return RegisterDelta.from_json(_unpack(doc.body, f"register delta v{version}")).apply(snapshot)


def _pack(data: object, what: str) -> dict[str, Any]:
    raw = canonical_json(data)
    if len(raw) > MAX_REGISTER_JSON_BYTES:
        raise RegisterTooLarge(
            f"the {what} is {len(raw)} bytes of JSON, over the {MAX_REGISTER_JSON_BYTES} bytes"
            " a gate decompresses (MAX_REGISTER_JSON_BYTES)"
        )
    packed = base64.b64encode(zlib.compress(raw)).decode()
    return {"encoding": ENCODING, "bytes": len(raw), "data": packed}


def _unpack(body: Mapping[str, Any], what: str) -> dict[str, Any]:
    """The JSON object a packed body holds, decompressed to at most the size it declares (and
    never past MAX_REGISTER_JSON_BYTES)."""
    if body.get("encoding") != ENCODING:
        raise MessageError(f"{what}: encoding {body.get('encoding')!r} is not {ENCODING!r}")
    size, data = body.get("bytes"), body.get("data")
    if isinstance(size, bool) or not isinstance(size, int) or size < 0:
        raise MessageError(f"{what}: bytes {size!r} is not a size")
    if size > MAX_REGISTER_JSON_BYTES:
        raise RegisterTooLarge(
            f"{what} declares {size} bytes of JSON, over the {MAX_REGISTER_JSON_BYTES} bytes a"
            " gate decompresses: refused"
        )
    if not isinstance(data, str):
        raise MessageError(f"{what}: data is not text")
    try:
        compressed = base64.b64decode(data, validate=True)
        inflate = zlib.decompressobj()
        raw = inflate.decompress(compressed, size + 1)
    except (binascii.Error, zlib.error) as exc:
        raise MessageError(f"{what}: data does not decompress: {exc}") from None
    if len(raw) > size or inflate.unconsumed_tail:
        raise RegisterTooLarge(
            f"{what} decompresses to more than the {size} bytes it declares: refused"
            " (a compression bomb?)"
        )
    if len(raw) < size or not inflate.eof or inflate.unused_data:
        raise MessageError(f"{what}: data is not one zlib stream of the {size} bytes it declares")
    try:
        value = json.loads(raw)
    except (ValueError, RecursionError) as exc:
        raise MessageError(f"{what}: data is not JSON: {exc}") from None
    if not isinstance(value, dict):
        raise MessageError(f"{what}: data is not a JSON object")
    return value
