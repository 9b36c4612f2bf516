"""What a gate knows to decide with: site, trust root, policy and register, with versions.

Built from the signed config and register documents (`protocol.documents`;
the register as a snapshot and a delta, `protocol.register_documents`) and the
newest freshness statement (`protocol.freshness`); a value, never mutated: new
documents make a new Knowledge.

How old is what the gate knows? Each document is proven current at its own
`issued_at`, and again at the `issued_at` of a freshness statement that names
its version; the knowledge is as fresh as its least recently proven document
(`fresh_as_of`). A connected gate receives a statement every few minutes; a
gate cut off from its server sees that time recede (DESIGN.md principle 5).

The keys passes and documents are verified with are those of the gate's trust
root (protocol.roots). When the root moves to one that drops a key, every held
document that key signed stops applying at once (`with_root`): the gate then
decides as one that holds no document of that kind, and asks the guard
(edge.decision: a gate missing its config or register never decides alone).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from datetime import datetime

from protocol.documents import SignedDocument
from protocol.errors import ProtocolError
from protocol.freshness import NAMED_KINDS, named_versions
from protocol.passes import TrustKey
from protocol.policy import Policy
from protocol.register import EMPTY_REGISTER, Register
from protocol.register_documents import DELTA, apply_delta, read_snapshot
from protocol.roots import TrustRoot


@dataclass(frozen=True)
class Held:
    """What orders and identifies a document a gate applied: the root it was signed under,
    its version (a statement: its serial) and its signing key."""

    root: int
    version: int
    key_id: int

    @property
    def mark(self) -> tuple[int, int]:
        return (self.root, self.version)

    def to_json(self) -> dict[str, int]:
        return {"root": self.root, "version": self.version, "key_id": self.key_id}


SERIES = {DELTA: "register"}
"""Kinds numbered in another kind's version series: a register delta's version is that of the
register it makes (protocol.register_documents), so it is ordered among the snapshots."""
TOGETHER = ("register", DELTA)
"""The documents that make one register: a delta means nothing without its snapshot, so a
root that withdraws either withdraws both."""


@dataclass(frozen=True)
class Knowledge:
    site: str
    trust_keys: Mapping[int, TrustKey]
    """The keys passes are verified with: those of the trust root (a gate at root 0, from
    before trust roots: those its config names, as before)."""
    policy: Policy = field(default_factory=Policy)
    register: Register = EMPTY_REGISTER
    config_version: int = 0
    register_version: int = 0
    config_issued_at: datetime | None = None
    register_issued_at: datetime | None = None
    statement: Statement | None = None
    """The newest verified freshness statement (it may name versions not yet held)."""
    snapshot: Register = EMPTY_REGISTER
    """The register snapshot held (`register` is it with the delta applied, if one is)."""
    snapshot_version: int = 0
    root: TrustRoot | None = None
    """The trust root the gate holds; None (knowledge made without one, in tools and tests):
    root 0 of `trust_keys`."""
    held: Mapping[str, Held] = field(default_factory=dict)
    """kind ("config", "register", "register_delta", "freshness") -> the document of that
    kind applied (a delta: the one applied to the snapshot held, if any)."""
    floors: Mapping[str, int] = field(default_factory=dict)
    """kind -> the oldest root a document of that kind may be signed under: the root that
    withdrew the one held before (an older genuine document is not taken in its place)."""

    def trust_root(self) -> TrustRoot:
        """The gate's root; at root 0 (a trust file from before trust roots) its keys and the
        keys its config names, as a gate trusted for documents before trust roots."""
        root = self.root or TrustRoot(0, self.trust_keys)
        if root.version == 0:
            return TrustRoot(0, {**self.trust_keys, **root.keys})
        return root

    def supersedes(self, doc: SignedDocument) -> bool:
        """Is `doc` newer than the `doc.kind` document held: a higher (root, version), and
        signed under a root no older than the one that withdrew the last one held? A register
        snapshot and delta are one series: each is compared with the newer of the two held."""
        series = SERIES.get(doc.kind, doc.kind)
        kinds = [k for k in self.held if SERIES.get(k, k) == series]
        if doc.root < max(self.floors.get(k, 0) for k in {doc.kind, series}):
            return False
        return all(doc.mark > self.held[k].mark for k in kinds)

    def behind(self, doc: SignedDocument) -> bool:
        """Is `doc` older than what the gate holds of its series (not a delivery again of the
        one held)?"""
        series = SERIES.get(doc.kind, doc.kind)
        return any(doc.mark < h.mark for k, h in self.held.items() if SERIES.get(k, k) == series)

    def missing(self) -> list[str]:
        """The documents a gate needs to decide alone that it does not hold (never held, or
        withdrawn): "config", "register"."""
        held = {"config": self.config_version, "register": self.register_version}
        return [kind for kind, version in held.items() if version == 0]

    def with_root(self, root: TrustRoot) -> tuple[Knowledge, dict[str, Held]]:
        """The knowledge under a newer trust root: its keys verify passes and documents, and
        the held documents signed by a key it drops stop applying (returned, by kind)."""
        dropped = self.trust_root().dropped(root)
        withdrawn = {k: h for k, h in self.held.items() if h.key_id in dropped}
        if any(k in withdrawn for k in TOGETHER):
            withdrawn |= {k: self.held[k] for k in TOGETHER if k in self.held}
        know = replace(
            self, root=root, trust_keys=dict(root.keys) if root.version else self.trust_keys
        )
        for kind in withdrawn:
            know = know.without(kind, root.version)
        return know, withdrawn

    def without(self, kind: str, floor: int) -> Knowledge:
        """No `kind` document held any more; the next one must be signed under root `floor`
        or newer."""
        held = {k: h for k, h in self.held.items() if k != kind}
        know = replace(self, held=held, floors={**self.floors, kind: floor})
        if kind == "config":
            return replace(know, policy=Policy(), config_version=0, config_issued_at=None)
        if kind in TOGETHER:
            return replace(
                know,
                register=EMPTY_REGISTER,
                register_version=0,
                register_issued_at=None,
                snapshot=EMPTY_REGISTER,
                snapshot_version=0,
            )
        if kind == "freshness":
            return replace(know, statement=None)
        return know

    def versions(self) -> dict[str, int]:
        return {"config": self.config_version, "register": self.register_version}

    def proven_at(self, kind: str) -> datetime | None:
        """The latest time the held `kind` document ("config" or "register") was proven
        current: its own issue time, or the statement's when that names its version."""
        version, issued = (
            (self.config_version, self.config_issued_at)
            if kind == "config"
            else (self.register_version, self.register_issued_at)
        )
        if issued is None:
            return None
        s = self.statement
        if s is not None and s.versions.get(kind) == version and s.proves > issued:
            return s.proves
        return issued

    def fresh_as_of(self) -> datetime | None:
        """When all held documents were last proven current (None: the gate holds none)."""
        times = [t for t in map(self.proven_at, NAMED_KINDS) if t is not None]
        return min(times) if times else None

    def newest_issued_at(self) -> datetime | None:
        """The newest server time any held document or statement was signed at: the gate's
        clock cannot be earlier than that (edge.clock.GateClock.raise_floor)."""
        times = [self.config_issued_at, self.register_issued_at]
        times.append(None if self.statement is None else self.statement.issued_at)
        known = [t for t in times if t is not None]
        return max(known) if known else None

    def data_age_hours(self, now: datetime) -> float | None:
        """Hours since `fresh_as_of` (0 when a statement is ahead of the gate's clock)."""
        as_of = self.fresh_as_of()
        return None if as_of is None else round(max(0.0, (now - as_of).total_seconds()) / 3600, 3)

    def with_config(self, doc: SignedDocument) -> Knowledge:
        """Apply a verified config document: the policy. (One from a server before trust
        roots, on a gate at root 0, also names the keys that verify passes.)"""
        keys = self.trust_keys
        try:
            if doc.root == 0 and self.trust_root().version == 0:
                keys = {k.key_id: k for k in map(TrustKey.from_json, doc.body["trust_keys"])}
                if not keys:
                    raise ProtocolError("config document has no trust keys")
            policy = Policy.from_json(doc.body.get("policy", {}))
        except (KeyError, TypeError) as exc:
            raise ProtocolError(f"config document lacks {exc}") from None
        return replace(
            self,
            trust_keys=keys,
            policy=policy,
            config_version=doc.version,
            config_issued_at=_issued_at(doc),
            held={**self.held, "config": _held(doc)},
        )

    def with_register(self, doc: SignedDocument) -> Knowledge:
        """Apply a verified register snapshot: the register of its version, no delta."""
        register = read_snapshot(doc)
        held = {k: h for k, h in self.held.items() if k != DELTA}
        return replace(
            self,
            register=register,
            register_version=doc.version,
            register_issued_at=_issued_at(doc),
            snapshot=register,
            snapshot_version=doc.version,
            held={**held, "register": _held(doc)},
        )

    def with_register_delta(self, doc: SignedDocument) -> Knowledge:
        """Apply a verified register delta to the snapshot held: the register of its version.
        Raises Superseded (older than what is held) or MessageError (its snapshot is not held
        yet; see protocol.register_documents.apply_delta)."""
        held = (self.snapshot_version, self.register_version)
        return replace(
            self,
            register=apply_delta(doc, self.snapshot, held),
            register_version=doc.version,
            register_issued_at=_issued_at(doc),
            held={**self.held, DELTA: _held(doc)},
        )

    def with_freshness(self, doc: SignedDocument, received_at: datetime | None = None) -> Knowledge:
        """Apply a verified freshness statement (protocol.freshness). It proves the documents
        current at its issue time, but never later than it arrived (`received_at`, the
        gate's clock): a statement from a server whose clock ran ahead does not keep a gate
        that is cut off looking fresh."""
        issued = _issued_at(doc)
        counted = issued if received_at is None else min(issued, received_at)
        statement = Statement(doc.version, issued, named_versions(doc), counted)
        return replace(self, statement=statement, held={**self.held, "freshness": _held(doc)})


@dataclass(frozen=True)
class Statement:
    """A verified freshness statement: its serial, when the server issued it, and the
    versions it names as current ({"config": n, "register": m})."""

    serial: int
    issued_at: datetime
    versions: Mapping[str, int]
    counted_at: datetime | None = None
    """The time it proves the documents current at: issued_at, or when it arrived if that
    was earlier (None: issued_at)."""

    @property
    def proves(self) -> datetime:
        return self.issued_at if self.counted_at is None else self.counted_at


def _held(doc: SignedDocument) -> Held:
    return Held(doc.root, doc.version, doc.key_id)


def _issued_at(doc: SignedDocument) -> datetime:
    """Its age is compared with the gate's (aware) clock on every decision."""
    try:
        issued = datetime.fromisoformat(doc.issued_at)
    except ValueError:
        issued = None
    if issued is None or issued.tzinfo is None:
        raise ProtocolError(f"{doc.kind} document issued_at {doc.issued_at!r} needs a UTC offset")
    return issued
