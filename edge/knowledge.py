"""What a gate knows to decide with: site, trust keys, policy and register, with versions.

Built from the signed config and register documents (`protocol.documents`;
the register as a snapshot and a delta, `protocol.register_documents`) and the
newest freshness statement (`protocol.freshness`); a value, never mutated: new
documents make a new Knowledge.

How old is what the gate knows? Each document is proven current at its own
`issued_at`, and again at the `issued_at` of a freshness statement that names
its version; the knowledge is as fresh as its least recently proven document
(`fresh_as_of`). A connected gate receives a statement every few minutes; a
gate cut off from its server sees that time recede (DESIGN.md principle 5).
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
from protocol.register_documents import apply_delta, read_snapshot


@dataclass(frozen=True)
class Knowledge:
    site: str
    trust_keys: Mapping[int, TrustKey]
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
        """Apply a verified config document: policy and trust keys."""
        try:
            keys = {k.key_id: k for k in map(TrustKey.from_json, doc.body["trust_keys"])}
            policy = Policy.from_json(doc.body.get("policy", {}))
        except (KeyError, TypeError) as exc:
            raise ProtocolError(f"config document lacks {exc}") from None
        if not keys:
            raise ProtocolError("config document has no trust keys")
        return replace(
            self,
            trust_keys=keys,
            policy=policy,
            config_version=doc.version,
            config_issued_at=_issued_at(doc),
        )

    def with_register(self, doc: SignedDocument) -> Knowledge:
        """Apply a verified register snapshot: the register of its version, no delta."""
        register = read_snapshot(doc)
        return replace(
            self,
            register=register,
            register_version=doc.version,
            register_issued_at=_issued_at(doc),
            snapshot=register,
            snapshot_version=doc.version,
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
        )

    def with_freshness(self, doc: SignedDocument, received_at: datetime | None = None) -> Knowledge:
        """Apply a verified freshness statement (protocol.freshness). It proves the documents
        current at its issue time, but never later than it arrived (`received_at`, the
        gate's clock): a statement from a server whose clock ran ahead does not keep a gate
        that is cut off looking fresh."""
        issued = _issued_at(doc)
        counted = issued if received_at is None else min(issued, received_at)
        return replace(self, statement=Statement(doc.version, issued, named_versions(doc), counted))


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


def _issued_at(doc: SignedDocument) -> datetime:
    """Its age is compared with the gate's (aware) clock on every decision."""
    try:
        issued = datetime.fromisoformat(doc.issued_at)
    except ValueError:
        issued = None
    if issued is None or issued.tzinfo is None:
        raise ProtocolError(f"{doc.kind} document issued_at {doc.issued_at!r} needs a UTC offset")
    return issued
