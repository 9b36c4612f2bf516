"""The register on the wire: compressed snapshots, cumulative deltas, and what a gate refuses.

A delta is everything that changed since its snapshot: applied to that snapshot it gives the
register of its version, whatever order the snapshot and the delta arrive in; a delta of an
older snapshot, or older than the register held, is superseded; one of a snapshot the gate
does not hold yet waits. Compressed bodies are read only from verified documents, and never
decompressed past the size they declare or MAX_REGISTER_JSON_BYTES (a compression bomb).
"""

from __future__ import annotations

import base64
import tracemalloc
import zlib
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from hypothesis import given, settings
from hypothesis import strategies as st

from edge.knowledge import Knowledge
from edge.trust import receive
from protocol.documents import SignedDocument, decode_document, sign_document
from protocol.errors import MessageError, ProtocolError, Superseded
from protocol.passes import TrustKey, public_bytes
from protocol.register import PassEntry, Register, RegisterDelta
from protocol.register_documents import (
    DELTA,
    MAX_REGISTER_JSON_BYTES,
    RegisterTooLarge,
    delta_body,
    read_snapshot,
    snapshot_body,
)

SITE = "sunny"
KEY = Ed25519PrivateKey.generate()
TRUST = {1: TrustKey(1, public_bytes(KEY))}
T0 = datetime(2026, 11, 29, 8, 0, tzinfo=UTC)


def entry(pass_id: int, household: str = "1-1-101", name: str = "张*丰") -> PassEntry:
    return PassEntry(pass_id, household, name, household, "resident")


def register(*ids: int, revoked: dict[int, str] | None = None, **quarantine: Any) -> Register:
    return Register({i: entry(i) for i in ids}, revoked or {}, dict(quarantine))


def signed(kind: str, version: int, body: dict[str, Any]) -> bytes:
    issued = (T0 + timedelta(minutes=version)).isoformat()
    return sign_document(kind, SITE, version, issued, body, 1, KEY).encode()


def snapshot(version: int, reg: Register) -> bytes:
    return signed("register", version, snapshot_body(reg))


def delta(version: int, base: Register, base_version: int, new: Register) -> bytes:
    return signed(DELTA, version, delta_body(base_version, RegisterDelta.between(base, new)))


def apply_document(know: Knowledge, kind: str, raw: bytes) -> Knowledge:
    """What a gate knows after receiving `raw` (edge.trust.receive: verified, then applied
    when it supersedes what the gate holds)."""
    return receive(know, kind, raw).know


def gate(*documents: tuple[str, bytes]) -> Knowledge:
    """A gate that applies `documents` in the order given, as provisioning does."""
    know = Knowledge(SITE, TRUST)
    for kind, raw in documents:
        know = apply_document(know, kind, raw)
    return know


# --- deltas -----------------------------------------------------------------------------------

ids = st.sets(st.integers(1, 60), max_size=25)
registers = st.builds(
    lambda passes, revoked, quarantined, names: Register(
        {i: entry(i, name=names[i % len(names)]) for i in passes},
        {i: "lost" for i in revoked},
        {f"9-9-{h}": None if h % 2 else T0 + timedelta(days=h) for h in quarantined},
    ),
    ids,
    ids,
    st.sets(st.integers(1, 9), max_size=5),
    st.lists(st.sampled_from(["张*丰", "李*", "A***e"]), min_size=1, max_size=3),
)


@settings(max_examples=200, deadline=None)
@given(registers, registers)
def test_a_delta_applied_to_its_base_gives_the_new_register(old: Register, new: Register) -> None:
    d = RegisterDelta.between(old, new)
    assert d.apply(old) == new
    assert RegisterDelta.from_json(d.to_json()) == d
    assert RegisterDelta.between(new, new).changes() == 0


def test_a_gate_holds_the_snapshot_and_the_register_the_delta_makes_of_it() -> None:
    s5, r6, r7 = register(1, 2), register(1, 2, 3), register(2, 3, revoked={1: "lost"})
    know = gate(("register", snapshot(5, s5)), (DELTA, delta(7, s5, 5, r7)))
    assert (know.register, know.register_version, know.snapshot_version) == (r7, 7, 5)
    assert know.versions() == {"config": 0, "register": 7}  # what statements name
    assert know.register_issued_at == T0 + timedelta(minutes=7)
    # Cumulative: a gate that missed v6 needs only v7; v6 after v7 is superseded.
    with pytest.raises(Superseded, match="older than the register held"):
        know.with_register_delta(decode(DELTA, delta(6, s5, 5, r6)))
    # v7 delivered again (retained, at every reconnect): the register it holds, no error.
    assert know.with_register_delta(decode(DELTA, delta(7, s5, 5, r7))) == know


def test_a_quarantine_released_since_the_snapshot_is_released_whatever_came_between() -> None:
    """The delta applies to the snapshot, not to the register the previous delta made: an entry
    put by v6 and gone by v7 is not in v7's delta, and must not survive."""
    s5 = register(1)
    r6 = register(1, **{"9-9-1": None})
    know = gate(("register", snapshot(5, s5)), (DELTA, delta(6, s5, 5, r6)))
    assert "9-9-1" in know.register.quarantine
    know = know.with_register_delta(decode(DELTA, delta(7, s5, 5, s5)))
    assert know.register == s5 and know.register_version == 7


def test_a_delta_of_a_snapshot_not_held_yet_waits_and_applies_once_it_came() -> None:
    s5, s8, r9 = register(1), register(1, 2), register(1, 2, 3)
    early = delta(9, s8, 8, r9)
    held = gate(("register", snapshot(5, s5)))
    with pytest.raises(MessageError, match="applies to snapshot v8, not held yet") as refused:
        apply_document(held, DELTA, early)
    assert not isinstance(refused.value, Superseded)  # the daemon keeps it for later
    know = apply_document(held, "register", snapshot(8, s8))
    know = apply_document(know, DELTA, early)
    assert (know.register, know.register_version) == (r9, 9)


def test_an_old_delta_after_a_new_snapshot_is_superseded() -> None:
    s5, r7, s8 = register(1), register(1, 2), register(1, 2, 3)
    know = gate(("register", snapshot(5, s5)), ("register", snapshot(8, s8)))
    old = delta(7, s5, 5, r7)
    got = receive(know, DELTA, old)
    assert not got.applied and got.know == know, "older than the register held (v8)"
    with pytest.raises(Superseded, match="snapshot v5"):
        know.with_register_delta(decode(DELTA, old))
    with pytest.raises(Superseded, match="snapshot v5"):  # numbered above it, of v5 still
        apply_document(know, DELTA, delta(9, s5, 5, r7))


@pytest.mark.parametrize("base", [0, 9, 10, "5", True, None])
def test_a_delta_must_name_an_earlier_version_as_its_base(base: object) -> None:
    s5 = register(1)
    body = {**delta_body(5, RegisterDelta.between(s5, s5)), "base": base}
    with pytest.raises(MessageError, match=r"is not 1\.\.version-1"):
        gate(("register", snapshot(5, s5)), (DELTA, signed(DELTA, 9, body)))


# --- compressed bodies ------------------------------------------------------------------------


def decode(kind: str, raw: bytes) -> SignedDocument:
    return decode_document(raw, kind=kind, site=SITE, trust_keys=TRUST)


def test_a_snapshot_round_trips_and_a_plain_register_body_is_still_read() -> None:
    reg = register(1, 2, revoked={3: "挂失"}, **{"9-9-1": T0})
    assert read_snapshot(decode("register", snapshot(4, reg))) == reg
    assert read_snapshot(decode("register", signed("register", 4, reg.to_json()))) == reg


def test_an_old_gate_reading_a_compressed_snapshot_as_plain_json_refuses_it() -> None:
    """Gates from before compression read the body as the register itself: `passes` is then a
    count, not a list, and the document is refused (their register kept), never read as an
    empty register that forgets the revocations."""
    body = snapshot_body(register(1, revoked={2: "lost"}))
    with pytest.raises(ProtocolError, match="bad register"):
        Register.from_json(body)  # what those gates did with a register's body


def bomb(declared: int, mib: int) -> dict[str, Any]:
    """A body declaring `declared` bytes whose data inflates to `mib` MiB of zeros."""
    packer = zlib.compressobj(9)
    chunk = bytes(2**20)
    packed = b"".join(packer.compress(chunk) for _ in range(mib)) + packer.flush()
    data = base64.b64encode(packed).decode()
    return {"encoding": "zlib", "bytes": declared, "passes": 0, "data": data}


@pytest.mark.parametrize("declared", [1000, MAX_REGISTER_JSON_BYTES])
def test_a_compression_bomb_is_cut_at_the_size_it_declares(declared: int) -> None:
    body = bomb(declared, 128)
    doc = decode("register", signed("register", 3, body))
    tracemalloc.start()
    try:
        with pytest.raises(RegisterTooLarge, match="decompresses to more than"):
            read_snapshot(doc)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    # zlib gathers the output in blocks and joins them: twice the size, not the bomb's 128 MiB.
    assert peak < 2 * declared + 8 * 2**20, f"{peak} bytes allocated for a {declared}-byte body"


def test_a_body_declaring_more_than_a_gate_decompresses_is_refused_before_decompressing() -> None:
    body = {"encoding": "zlib", "bytes": MAX_REGISTER_JSON_BYTES + 1, "data": "!not base64!"}
    with pytest.raises(RegisterTooLarge, match="over the 33554432 bytes a gate decompresses"):
        read_snapshot(decode("register", signed("register", 3, body)))


def test_the_signature_is_verified_before_anything_is_decompressed() -> None:
    """A forged bomb (signed by no trusted key, or altered) is refused for its signature:
    a gate decompresses only what edge.trust.receive verified."""
    body = bomb(1000, 64)
    raw = signed("register", 3, body)
    forged = raw.replace(b'"bytes": 1000', b'"bytes": 1001')
    intruder = Ed25519PrivateKey.generate()
    foreign = sign_document("register", SITE, 3, T0.isoformat(), body, 1, intruder).encode()
    for bad in (forged, foreign):
        with pytest.raises(MessageError, match="signature does not verify"):
            apply_document(Knowledge(SITE, TRUST), "register", bad)


@pytest.mark.parametrize(
    ("change", "error"),
    [
        ({"encoding": "lzma"}, "encoding 'lzma' is not 'zlib'"),
        ({"bytes": -1}, "bytes -1 is not a size"),
        ({"data": "@@@"}, "does not decompress"),
        ({"data": base64.b64encode(zlib.compress(b"[1, 2]")).decode(), "bytes": 6}, "object"),
        ({"data": base64.b64encode(zlib.compress(b"{}") + b"x").decode(), "bytes": 2}, "stream"),
        ({"bytes": 10**6}, "not one zlib stream of the 1000000 bytes"),
    ],
)
def test_a_damaged_body_is_refused_with_its_reason(change: dict[str, Any], error: str) -> None:
    body = {**snapshot_body(register(1)), **change}
    with pytest.raises(MessageError, match=error):
        read_snapshot(decode("register", signed("register", 3, body)))


def test_a_register_too_large_for_a_gate_is_not_packed() -> None:
    room = "x" * 2**20
    huge = Register({i: PassEntry(i, "1-1-101", "李*", room, "staff") for i in range(40)}, {})
    with pytest.raises(RegisterTooLarge, match="over the 33554432 bytes a gate decompresses"):
        snapshot_body(huge)
