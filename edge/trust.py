"""What a gate accepts: documents checked against its trust root, and the root moving forward.

A document arrives (retained MQTT message, provisioning bundle, a damaged database's
copy): `receive` follows the chain of root documents it carries from the root the gate
holds (protocol.roots), checks that the document is signed under a root no newer than
that by one of its keys, and applies it when it supersedes the one held (by (root,
version)). A root that drops a key withdraws every held document that key signed. All
of it is pure (a new Knowledge); `save_received` writes what changed in one
transaction of the gate's store, so a restarted gate holds the same root and
documents.

The gate's root lives in gate.db; the trust file (`trust.json`, copied by
`menwei gate init`) is where it starts. `gate_root` takes whichever is newer, so
provisioning from an older bundle never moves a gate's trust backwards.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import datetime

from edge.knowledge import Held, Knowledge
from edge.store import GateStore
from protocol.documents import SignedDocument, parse_document
from protocol.errors import ProtocolError
from protocol.passes import TrustKey
from protocol.register_documents import DELTA
from protocol.roots import TrustRoot, verify


@dataclass(frozen=True)
class Received:
    """What a verified document did to the gate's knowledge."""

    doc: SignedDocument
    know: Knowledge
    applied: bool
    """It superseded the document of its kind held (else only its chain may count)."""
    advanced_from: int | None = None
    """The root the gate held before the document's chain moved it (None: not moved)."""
    withdrawn: dict[str, Held] = field(default_factory=dict)
    """Held documents the new root stopped (kind -> what they were)."""

    @property
    def changed(self) -> bool:
        return self.applied or self.advanced_from is not None


def receive(
    know: Knowledge, kind: str, raw: bytes, received_at: datetime | None = None
) -> Received:
    """Check `raw` (a `kind` document) against the gate's trust root and apply it if newer.
    `received_at`: when it arrived by the gate's clock (a freshness statement proves no
    later than that). Raises UntrustedDocument (RootError for a broken chain): a document
    the gate does not trust; MessageError: malformed; ProtocolError: signed and trusted but
    not applicable (its body, an issue time without offset; Superseded: a register delta of
    an older snapshot; AwaitingSnapshot: one whose snapshot the gate does not hold yet)."""
    doc = parse_document(raw, kind=kind, site=know.site)
    held = know.trust_root()
    root = verify(doc, held)
    withdrawn: dict[str, Held] = {}
    after = know
    if root.version != held.version:
        after, withdrawn = know.with_root(root)
    applied = after.supersedes(doc)
    if applied:
        after = _apply(after, doc, received_at)
    return Received(
        doc,
        after,
        applied,
        advanced_from=held.version if root.version != held.version else None,
        withdrawn=withdrawn,
    )


def _apply(know: Knowledge, doc: SignedDocument, received_at: datetime | None) -> Knowledge:
    if doc.kind == "config":
        return know.with_config(doc)
    if doc.kind == "register":
        return know.with_register(doc)
    if doc.kind == DELTA:
        return know.with_register_delta(doc)
    if doc.kind == "freshness":
        return know.with_freshness(doc, received_at)
    raise ProtocolError(f"a gate does not apply {doc.kind} documents")


def save_received(store: GateStore, got: Received, raw: bytes, received_at: datetime) -> None:
    """Write what `receive` decided, in one transaction: the new root and the documents it
    withdrew, the document when it was applied (a config of a server before trust roots
    also records the keys it names, as before). Raises StorageFault."""
    doc = got.doc
    root = got.know.root if got.advanced_from is not None else None
    learnt = doc.body.get("trust_keys") if doc.kind == "config" and doc.root == 0 else None
    store.save_document(
        doc.kind,
        doc.version,
        received_at.isoformat(),
        raw if got.applied else None,
        learnt_keys=list(learnt) if got.applied and isinstance(learnt, list) else None,
        root=None if root is None else json.dumps(root.to_json()),
        withdrawn={kind: got.know.floors[kind] for kind in got.withdrawn},
    )


def gate_root(anchor: TrustRoot, store: GateStore) -> TrustRoot:
    """The gate's trust root: the one gate.db holds, or the trust file's (`anchor`) when
    that is newer (a gate provisioned again from a newer bundle). At root 0 (a trust file
    from before trust roots) the keys the last config of such a server named count too, as
    they did for documents then. Raises StorageFault."""
    held = None
    raw = store.trust_root()
    if raw is not None:
        try:
            held = TrustRoot.from_json(json.loads(raw))
        except (ValueError, ProtocolError):
            held = None  # damaged: the trust file is the anchor again
    if held is not None and held.version >= anchor.version:
        return held
    if anchor.version == 0:
        try:
            learnt = {k.key_id: k for k in map(TrustKey.from_json, store.learnt_keys())}
        except ProtocolError:
            learnt = {}
        return TrustRoot(0, {**learnt, **anchor.keys})
    return anchor
