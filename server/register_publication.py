"""How the server sends the register: a delta of the snapshot gates hold, or a new snapshot.

Gates hold the retained snapshot and the retained delta (protocol.register_documents); each
change makes a new delta of everything that changed since the snapshot, so one pass issued or
revoked costs the gates a small message, not the whole register. The delta grows with every
change, and each is sent to every gate: a new snapshot is cut (and the delta emptied) when

- the delta would be more than DELTA_MAX_SHARE of the snapshot's size, or
- the deltas sent since the snapshot would add up to more than a snapshot: n deltas that
  grow evenly to d bytes add up to about n * d / 2 bytes. (Sending a snapshot once this
  total reaches it costs a gate at most about twice the fewest bytes any choice of cut could,
  the way renting skis until their price is spent is at most twice as dear as knowing the
  season in advance; docs/protocol.md has the numbers.)

A delta is signed by the key of its snapshot under the same trust root (protocol.roots): a
register signed by another key or under a newer root (a key rotated or retired) is a new
snapshot, so no gate needs two keys for one register, and a root that withdraws a key
withdraws a whole register, never half of one.

Pure: Site (server/site.py) reads the bundle, signs and writes.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from protocol.documents import MAX_DOCUMENT_BYTES, canonical_json, decode_document
from protocol.errors import ProtocolError
from protocol.passes import TrustKey
from protocol.register import Register
from protocol.register_documents import (
    DELTA,
    MAX_REGISTER_JSON_BYTES,
    SNAPSHOT,
    body_bytes,
    read_snapshot,
)

DELTA_MAX_SHARE = 0.25
"""A delta larger than this share of the snapshot's size is sent as a new snapshot."""
BOUND_MARGIN_BYTES = 256 * 1024
"""How far below MAX_DOCUMENT_BYTES the snapshot and a delta together must stay for the
register they make to be taken as fitting without compressing it (surely_fits)."""


@dataclass(frozen=True)
class HeldSnapshot:
    """The snapshot in the bundle: its version, signing key, register, and the bytes of its
    body and of the register's JSON in it, the trust root it was signed under, and the bytes
    of its document besides the body (the envelope and the chain of roots: a delta carries
    about as many)."""

    version: int
    key_id: int
    register: Register
    body_bytes: int
    json_bytes: int
    root: int = 0
    envelope_bytes: int = 0


def read_held_snapshot(
    path: Path, site: str, trust_keys: dict[int, TrustKey]
) -> HeldSnapshot | None:
    """The snapshot of the bundle file `path` (verified with `trust_keys`), None when there is
    none or it cannot be read (the next register is then a snapshot)."""
    try:
        raw = path.read_bytes()
        doc = decode_document(raw, kind=SNAPSHOT, site=site, trust_keys=trust_keys)
        register = read_snapshot(doc)
        json_bytes = doc.body.get("bytes")
    except (OSError, ProtocolError):
        return None
    if not isinstance(json_bytes, int):  # a plain body (servers before compression)
        json_bytes = len(canonical_json(doc.body))
    body = body_bytes(doc.body)
    return HeldSnapshot(
        doc.version, doc.key_id, register, body, json_bytes, doc.root, max(0, len(raw) - body)
    )


def held_delta(path: Path, snapshot_version: int) -> int | None:
    """The version of the bundle's delta (`path`) when it applies to the snapshot of
    `snapshot_version`, else None (none, or one of an older snapshot)."""
    try:
        data = json.loads(path.read_bytes())
        base, version = data["body"]["base"], data["version"]
    except (OSError, ValueError, KeyError, TypeError):
        return None
    if data.get("kind") != DELTA or base != snapshot_version or not isinstance(version, int):
        return None
    return version


def surely_fits(held: HeldSnapshot, delta: Mapping[str, Any], delta_document_bytes: int) -> bool:
    """Does the register a delta (its body, and its signed document's size) makes of `held`
    surely fit as a snapshot? Its JSON is at most the snapshot's and the delta's together
    (each entry is in one of them), and compressed it is about as large as both compressed,
    which must stay BOUND_MARGIN_BYTES below the limit. False: compress it to know (Site)."""
    return (
        held.json_bytes + int(delta["bytes"]) <= MAX_REGISTER_JSON_BYTES
        and held.body_bytes + delta_document_bytes <= MAX_DOCUMENT_BYTES - BOUND_MARGIN_BYTES
    )


def snapshot_due(delta_bytes: int, snapshot_bytes: int, deltas: int) -> bool:
    """Is it time for a new snapshot rather than a delta of `delta_bytes`, the `deltas`-th
    since the snapshot, when a snapshot now would be `snapshot_bytes`? (Document sizes: each
    delta carries the envelope and the chain of roots as a snapshot does.)"""
    return delta_bytes > DELTA_MAX_SHARE * snapshot_bytes or deltas * delta_bytes > 2 * (
        snapshot_bytes
    )
