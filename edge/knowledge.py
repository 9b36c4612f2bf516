"""What a gate knows to decide with: site, trust keys, policy and register, with versions.

Built from the signed config and register documents (`protocol.documents`);
a value, never mutated: new documents make a new Knowledge.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime

from protocol.documents import SignedDocument
from protocol.errors import ProtocolError
from protocol.passes import TrustKey
from protocol.policy import Policy
from protocol.register import EMPTY_REGISTER, Register


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

    def versions(self) -> dict[str, int]:
        return {"config": self.config_version, "register": self.register_version}

    def with_config(self, doc: SignedDocument) -> Knowledge:
        """Apply a verified config document: policy and trust keys."""
        try:
            keys = {k.key_id: k for k in map(TrustKey.from_json, doc.body["trust_keys"])}
            policy = Policy.from_json(doc.body.get("policy", {}))
        except (KeyError, TypeError) as exc:
            raise ProtocolError(f"config document lacks {exc}") from None
        if not keys:
            raise ProtocolError("config document has no trust keys")
        return Knowledge(
            self.site,
            keys,
            policy,
            self.register,
            doc.version,
            self.register_version,
            _issued_at(doc),
            self.register_issued_at,
        )

    def with_register(self, doc: SignedDocument) -> Knowledge:
        return Knowledge(
            self.site,
            self.trust_keys,
            self.policy,
            Register.from_json(doc.body),
            self.config_version,
            doc.version,
            self.config_issued_at,
            _issued_at(doc),
        )


def _issued_at(doc: SignedDocument) -> datetime:
    """Its age is compared with the gate's (aware) clock on every decision."""
    try:
        issued = datetime.fromisoformat(doc.issued_at)
    except ValueError:
        issued = None
    if issued is None or issued.tzinfo is None:
        raise ProtocolError(f"{doc.kind} document issued_at {doc.issued_at!r} needs a UTC offset")
    return issued
