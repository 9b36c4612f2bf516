"""Freshness statements: the server's signed word that the documents gates hold are current.

A gate cut off from its server must notice (DESIGN.md principle 5; the TUF
specification's *timestamp* role and its freeze attack): the age of what a gate
decides with is the time since it last had signed proof that its documents are
current, not since they last changed. The collector re-issues a statement every
`[server] freshness_interval_s` (and whenever a document changes) on the
retained `menwei/{site}/freshness` topic. A statement is a `SignedDocument` of
kind ``"freshness"``: its `version` is a serial that only grows, `issued_at`
is the server's UTC time, and its body names the current versions::

    {"versions": {"config": 7, "register": 42}}

Verification is that of every document (`decode_document`): a key the gate
trusts for documents, the site, and a serial newer than the one held.
"""

from __future__ import annotations

from collections.abc import Mapping

from protocol.documents import SignedDocument
from protocol.errors import ProtocolError

KIND = "freshness"
NAMED_KINDS = ("config", "register")
"""The documents a statement vouches for."""


def statement_body(versions: Mapping[str, int]) -> dict[str, object]:
    """The body of a statement naming `versions` (both of NAMED_KINDS, each >= 1)."""
    return {"versions": {kind: int(versions[kind]) for kind in NAMED_KINDS}}


def named_versions(doc: SignedDocument) -> dict[str, int]:
    """The versions a verified statement names. Raises ProtocolError if its body is not
    `{"versions": {"config": int >= 1, "register": int >= 1}}`."""
    if doc.kind != KIND:
        raise ProtocolError(f"a {doc.kind} document is not a freshness statement")
    versions = doc.body.get("versions")
    if not isinstance(versions, dict) or set(versions) != set(NAMED_KINDS):
        raise ProtocolError("freshness statement must name exactly the config and register")
    named: dict[str, int] = {}
    for kind in NAMED_KINDS:
        value = versions[kind]
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ProtocolError(f"freshness statement: {kind} version {value!r} is not >= 1")
        named[kind] = value
    return named
