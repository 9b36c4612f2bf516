"""Trust roots: the versioned set of keys a gate trusts for documents and passes.

Keys are rotated and retired the way TUF rotates its root role (threshold 1): the
trust root is itself a signed document of kind ``"root"`` whose version is the
trust epoch and whose body lists the keys of that epoch::

    {"keys": [{"key_id": 1, "public_key": "<base64>"}, {"key_id": 2, ...}]}

Root 1 is signed by a key it lists (or, on a site that had keys before trust roots,
by the oldest one, which every gate provisioned before holds); root n+1 is signed
by a key of root n, and names n as the root it was signed under. A gate starts
from its provisioned trust file (root 0 when the file names none) and moves
forward only through consecutive roots, each signed by a key of the one before:
a gap, a fork (another root n than the one it holds), a wrong signer, an older or
a future root are refused (RootError). Every document carries the chain of root
documents up to the root it was signed under (protocol.documents), and is accepted
only when signed by a key of the gate's root after that chain, under a root no
newer than it. So a key the server retired (a root without it) signs nothing a
gate accepts once the gate has seen that root.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

from protocol.documents import (
    ROOT_KIND,
    SignedDocument,
    UntrustedDocument,
    verify_signature,
)
from protocol.errors import MessageError, ProtocolError
from protocol.passes import TrustKey

KIND = ROOT_KIND


class RootError(UntrustedDocument):
    """A root document that does not move the reader's trust forward by one step: an older
    or a future root, a gap, a fork, a wrong signer."""


@dataclass(frozen=True)
class TrustRoot:
    """A trust root a reader holds: its version (0: a trust file from before trust roots)
    and its keys."""

    version: int
    keys: Mapping[int, TrustKey]

    def same_keys(self, keys: Mapping[int, TrustKey]) -> bool:
        return {k: v.public_key for k, v in self.keys.items()} == {
            k: v.public_key for k, v in keys.items()
        }

    def dropped(self, newer: TrustRoot) -> set[int]:
        """Ids of the keys of this root that `newer` no longer holds (or holds changed)."""
        return {
            k
            for k, key in self.keys.items()
            if k not in newer.keys or newer.keys[k].public_key != key.public_key
        }

    def to_json(self) -> dict[str, object]:
        return {"version": self.version, "trust_keys": [k.to_json() for k in self.keys.values()]}

    @classmethod
    def from_json(cls, data: object) -> TrustRoot:
        """Raises ProtocolError."""
        if not isinstance(data, dict):
            raise ProtocolError("trust root must be an object")
        try:
            version = data["version"]
            keys = {k.key_id: k for k in map(TrustKey.from_json, data["trust_keys"])}
        except (KeyError, TypeError) as exc:
            raise ProtocolError(f"trust root lacks {exc}") from None
        if isinstance(version, bool) or not isinstance(version, int) or version < 0 or not keys:
            raise ProtocolError("trust root needs a version >= 0 and at least one key")
        return cls(version, keys)


def root_body(keys: Sequence[TrustKey]) -> dict[str, object]:
    """The body of a root document listing `keys` (at least one)."""
    if not keys:
        raise ProtocolError("a trust root needs at least one key")
    return {"keys": [k.to_json() for k in sorted(keys, key=lambda k: k.key_id)]}


def root_of(doc: SignedDocument) -> TrustRoot:
    """The trust root a root document states (its signature is not checked here). Raises
    MessageError when its body is not `{"keys": [key, ...]}` with at least one key."""
    if doc.kind != KIND:
        raise MessageError(f"a {doc.kind} document is not a trust root")
    try:
        listed = doc.body["keys"]
        if not isinstance(listed, list) or not listed:
            raise MessageError("root document lists no keys")
        keys = {k.key_id: k for k in map(TrustKey.from_json, listed)}
    except KeyError:
        raise MessageError("root document lacks keys") from None
    except ProtocolError as exc:
        raise MessageError(f"root document: {exc}") from None
    if len(keys) != len(listed):
        raise MessageError("root document lists a key id twice")
    return TrustRoot(doc.version, keys)


def next_root(held: TrustRoot, doc: SignedDocument) -> TrustRoot:
    """The root after `held` that root document `doc` makes: version held + 1, signed under
    `held` by one of its keys. Raises RootError (older, fork, gap, future, wrong signer)."""
    stated = root_of(doc)
    n = held.version
    if doc.version < n:
        raise RootError(f"root {doc.version} is older than root {n}, which this reader holds")
    if doc.version == n:
        if stated.same_keys(held.keys):
            raise RootError(f"root {n} is the one this reader holds already")
        raise RootError(
            f"root {n} lists keys {sorted(stated.keys)}, but the root {n} this reader holds"
            f" lists {sorted(held.keys)}: a fork, refused"
        )
    if doc.version > n + 1:
        raise RootError(f"root {doc.version} does not follow root {n}: roots in between missing")
    if doc.root != n:
        raise RootError(f"root {doc.version} names root {doc.root} as its signer, not {n}")
    try:
        verify_signature(doc, held.keys)
    except UntrustedDocument as exc:
        raise RootError(
            f"root {doc.version} is not signed by a key of root {n} ({sorted(held.keys)}): {exc}"
        ) from None
    return stated


def advance(held: TrustRoot, chain: Sequence[SignedDocument]) -> TrustRoot:
    """The root after following `chain` (consecutive root documents) from `held`: roots
    older than it are history it passed, the one it holds must be the same, each newer one
    must follow (next_root). Raises RootError."""
    root = held
    for doc in chain:
        if doc.version < root.version:
            continue
        if doc.version == root.version:
            stated = root_of(doc)
            if not stated.same_keys(root.keys):
                next_root(root, doc)  # raises: a fork
            continue
        root = next_root(root, doc)
    return root


def verify(doc: SignedDocument, held: TrustRoot) -> TrustRoot:
    """Check a parsed document against the trust root a reader holds: follow the chain it
    carries, then the document must be signed under a root no newer than that, by a key of
    it. Returns the reader's root after the chain (`held` when the chain brings nothing
    new). Raises RootError, UntrustedDocument."""
    root = advance(held, doc.chain)
    if doc.root > root.version:
        raise RootError(
            f"{doc.kind} document is signed under root {doc.root}, and the chain it carries"
            f" leads only to root {root.version}: refused"
        )
    if doc.key_id not in root.keys:
        raise UntrustedDocument(
            f"{doc.kind} document signed by key {doc.key_id}, which trust root {root.version}"
            f" does not hold (keys {sorted(root.keys)})"
        )
    verify_signature(doc, root.keys)
    return root


def leads_to(
    start: TrustRoot, target: TrustRoot, chains: Iterable[Sequence[SignedDocument]]
) -> bool | None:
    """Whether the root `target` follows from the older root `start`, judged from `chains`
    (the root documents that documents a reader holds carry). True: one chain leads from
    `start` to `target` (same version and keys), each step signed by a key of the root
    before it, a proof only the holders of `start`'s keys and their successors can make.
    False: none does, and one shows a fork from `start` (a root at or after its version that
    does not follow it, or that leads to another root of `target`'s version). None: the
    chains show neither (no root as new as `target`)."""
    fork = False
    for chain in chains:
        try:
            reached = advance(start, chain)
        except RootError:
            fork = True
            continue
        if reached.version == target.version and reached.same_keys(target.keys):
            return True
        fork = fork or reached.version >= target.version  # another root `target.version`
    return False if fork else None
