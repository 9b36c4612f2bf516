"""Trust roots move forward only: each root is signed under the one before by one of its keys,
and a document is trusted only under the root its reader reached (protocol/roots.py)."""

from __future__ import annotations

import json

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from protocol.documents import (
    SignedDocument,
    UntrustedDocument,
    claimed_root,
    parse_document,
    sign_document,
)
from protocol.errors import MessageError
from protocol.passes import TrustKey, public_bytes
from protocol.roots import RootError, TrustRoot, advance, next_root, root_body, verify

SITE = "sunny"
AT = "2026-11-29T00:00:00.000+00:00"
PRIVATE = {i: Ed25519PrivateKey.generate() for i in range(1, 6)}
KEYS = {i: TrustKey(i, public_bytes(k)) for i, k in PRIVATE.items()}


def root_doc(
    version: int, keys: list[int], signer: int, *, under: int | None = None
) -> SignedDocument:
    """Root `version` listing `keys`, signed by `signer` under root `under` (default v - 1)."""
    body = root_body([KEYS[k] for k in keys])
    under = version - 1 if under is None else under
    return sign_document("root", SITE, version, AT, body, signer, PRIVATE[signer], root=under)


# The site's history: 1 {1}; rotate → 2 {1, 2}; retire 1 → 3 {2}; rotate → 4 {2, 3}.
R1 = root_doc(1, [1], 1)
R2 = root_doc(2, [1, 2], 1)
R3 = root_doc(3, [2], 2)
R4 = root_doc(4, [2, 3], 2)
CHAIN = (R1, R2, R3, R4)


def held(version: int, keys: list[int]) -> TrustRoot:
    return TrustRoot(version, {k: KEYS[k] for k in keys})


def document(
    signer: int, root: int, chain: tuple[SignedDocument, ...], version: int = 7
) -> SignedDocument:
    body = {"policy": {}}
    return sign_document(
        "config", SITE, version, AT, body, signer, PRIVATE[signer], root=root, chain=chain
    )


def test_a_reader_follows_the_chain_from_the_root_it_holds() -> None:
    assert advance(held(1, [1]), CHAIN) == held(4, [2, 3])
    assert advance(held(3, [2]), CHAIN) == held(4, [2, 3]), "older roots are history"
    assert advance(held(4, [2, 3]), CHAIN) == held(4, [2, 3])
    # A gate provisioned before trust roots (root 0: its trust file's keys) takes root 1,
    # signed by a key it holds.
    assert advance(held(0, [1]), CHAIN) == held(4, [2, 3])


def test_a_gap_is_refused() -> None:
    with pytest.raises(RootError, match="root 3 does not follow root 1: roots in between"):
        next_root(held(1, [1]), R3)
    with pytest.raises(RootError, match="does not follow"):
        advance(held(1, [1]), (R3, R4))


def test_a_fork_is_refused() -> None:
    other_2 = root_doc(2, [1, 5], 1)  # root 2 as another (stolen-key) signer would make it
    with pytest.raises(RootError, match=r"root 2 lists keys \[1, 5\].*a fork"):
        advance(held(2, [1, 2]), (R1, other_2, R3))
    with pytest.raises(RootError, match="a fork"):
        next_root(held(2, [1, 2]), other_2)


def test_a_root_signed_by_a_key_the_reader_does_not_hold_is_refused() -> None:
    by_stranger = root_doc(2, [1, 5], 5)
    with pytest.raises(RootError, match="root 2 is not signed by a key of root 1"):
        next_root(held(1, [1]), by_stranger)
    # Key 1, retired at root 3, cannot sign root 4 for a reader at root 3.
    by_retired = root_doc(4, [1, 2], 1)
    with pytest.raises(RootError, match="not signed by a key of root 3"):
        next_root(held(3, [2]), by_retired)
    forged = SignedDocument(**{**R2.__dict__, "body": root_body([KEYS[1], KEYS[5]])})
    with pytest.raises(RootError, match="signature does not verify"):
        next_root(held(1, [1]), forged)


def test_a_root_that_names_another_root_as_its_signer_is_refused() -> None:
    with pytest.raises(RootError, match="names root 0 as its signer, not 1"):
        next_root(held(1, [1]), root_doc(2, [1, 2], 1, under=0))


def test_an_older_root_is_refused() -> None:
    with pytest.raises(RootError, match="root 2 is older than root 3"):
        next_root(held(3, [2]), R2)
    with pytest.raises(RootError, match="root 3 is the one this reader holds"):
        next_root(held(3, [2]), R3)


def test_a_document_is_trusted_under_the_root_its_chain_reaches() -> None:
    doc = document(3, 4, CHAIN)
    assert verify(doc, held(1, [1])) == held(4, [2, 3])


def test_a_retired_key_signs_nothing_once_the_reader_has_seen_the_retirement() -> None:
    # Key 1's forgery names root 2 (when key 1 was trusted) and carries the real chain to it.
    forged = document(1, 2, (R1, R2), version=1001)
    assert verify(forged, held(1, [1])) == held(2, [1, 2]), "before the retirement: trusted"
    with pytest.raises(
        UntrustedDocument, match="signed by key 1, which trust root 3 does not hold"
    ):
        verify(forged, held(3, [2]))
    # Naming a newer root with the full chain does not help it either.
    with pytest.raises(UntrustedDocument, match="trust root 4 does not hold"):
        verify(document(1, 4, CHAIN, version=1001), held(1, [1]))


def test_a_document_signed_under_a_future_root_is_refused() -> None:
    """A document naming a root its chain does not reach: never trusted on its word."""
    with pytest.raises(
        RootError, match="signed under root 4, and the chain it carries leads only to root 2"
    ):
        verify(document(2, 4, (R1, R2)), held(1, [1]))
    with pytest.raises(RootError, match="signed under root 9"):
        verify(document(3, 9, CHAIN), held(4, [2, 3]))


def test_the_envelope_carries_root_and_chain_and_signs_the_root() -> None:
    doc = document(3, 4, CHAIN)
    raw = doc.encode()
    again = parse_document(raw, kind="config", site=SITE)
    assert again == doc and claimed_root(raw) == 4
    data = json.loads(raw)
    data["root"] = 1  # moved to an older root: the signature no longer holds
    lowered = parse_document(json.dumps(data).encode(), kind="config", site=SITE)
    with pytest.raises(UntrustedDocument, match="signature does not verify"):
        verify(lowered, held(4, [2, 3]))
    data = json.loads(raw)
    data["chain"] = [data["chain"][0], data["chain"][2]]
    with pytest.raises(MessageError, match=r"carries roots \[1, 3\]: not consecutive"):
        parse_document(json.dumps(data).encode(), kind="config", site=SITE)
    data = json.loads(raw)
    data["chain"][0]["chain"] = []
    with pytest.raises(MessageError, match="carries no chain"):
        parse_document(json.dumps(data).encode(), kind="config", site=SITE)
    for bad in ("3", -1, True, 2.0):
        data = json.loads(raw)
        data["root"] = bad
        with pytest.raises(MessageError):
            parse_document(json.dumps(data).encode(), kind="config", site=SITE)


def test_a_root_document_must_list_keys() -> None:
    empty = sign_document("root", SITE, 2, AT, {"keys": []}, 1, PRIVATE[1], root=1)
    with pytest.raises(MessageError, match="lists no keys"):
        next_root(held(1, [1]), empty)
    twice = {"keys": [KEYS[1].to_json(), KEYS[1].to_json()]}
    doubled = sign_document("root", SITE, 2, AT, twice, 1, PRIVATE[1], root=1)
    with pytest.raises(MessageError, match="a key id twice"):
        next_root(held(1, [1]), doubled)


def test_claimed_root_is_only_read_from_the_envelope_head() -> None:
    assert claimed_root(document(3, 4, CHAIN).encode()) == 4
    legacy = sign_document("config", SITE, 3, AT, {"root": 99}, 1, PRIVATE[1])
    assert claimed_root(legacy.encode()) == 0, "a body's field is not the envelope's"
    assert claimed_root(b"not json") == 0
