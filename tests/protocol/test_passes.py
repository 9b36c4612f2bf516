"""The pass contract: signed, canonical, fits a version <= 7 QR at level M, anonymous."""

from __future__ import annotations

import pytest
import segno
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from hypothesis import given
from hypothesis import strategies as st

from protocol import base45
from protocol.errors import PassError, ProtocolError
from protocol.passes import (
    MAX_TEXT_LEN,
    PREFIX,
    PassPayload,
    Role,
    TrustKey,
    parse_pass,
    public_bytes,
    sign_pass,
    verify_pass,
)
from server.site import Site

SITE = "test-site"
KEY = Ed25519PrivateKey.generate()
TRUST = {1: TrustKey(1, public_bytes(KEY))}
REFUSALS = {"malformed", "bad_signature", "unknown_key", "wrong_site"}
VALID_FROM = 1_790_000_000  # 2026-09, Unix seconds
VALID_UNTIL = VALID_FROM + 30 * 86400

TYPICAL = PassPayload(1, 42, SITE, "1-1-101", Role.RESIDENT, VALID_FROM, VALID_UNTIL)
# The largest pass the format allows: every integer at its maximum, a 24-character household.
LARGEST = PassPayload(
    0xFFFF, 0xFFFF_FFFF, SITE, "B12-U3-R1701.north_wing-", Role.STAFF, 0, 0xFFFF_FFFF
)
TYPICAL_TEXT = sign_pass(TYPICAL, KEY)
LARGEST_TEXT = sign_pass(LARGEST, Ed25519PrivateKey.generate())
# Characters a changed pass text might contain: the base45 alphabet itself, its neighbours in
# the QR alphanumeric world (lower case), and bytes a broken scanner or a copy-paste produces.
NOT_BASE45 = "abcxyz_#!?\n\t\x00é中=,;"


def test_sign_then_verify_gives_back_the_payload():
    assert verify_pass(TYPICAL_TEXT, SITE, TRUST) == TYPICAL
    assert TYPICAL_TEXT.startswith(PREFIX)


@pytest.mark.parametrize("role", list(Role))
def test_every_role_survives_the_round_trip(role):
    payload = PassPayload(1, 7, SITE, "hh", role, VALID_FROM, VALID_UNTIL)
    assert verify_pass(sign_pass(payload, KEY), SITE, TRUST).role is role


@pytest.mark.parametrize(
    ("name", "payload", "text"),
    [("typical", TYPICAL, TYPICAL_TEXT), ("largest", LARGEST, LARGEST_TEXT)],
)
def test_qr_text_fits_version_7_at_level_m_in_alphanumeric_mode(name, payload, text):
    qr = segno.make(text, error="m", boost_error=False)

    assert (qr.mode, qr.error) == ("alphanumeric", "M"), name
    assert isinstance(qr.version, int), "a Micro QR would not be read by gate cameras"
    assert qr.version <= 7, f"{name} pass of {len(text)} characters needs version {qr.version}"
    assert len(payload.household) in (7, 24)


@given(
    position=st.integers(min_value=0, max_value=len(TYPICAL_TEXT) - 1),
    replacement=st.sampled_from(base45.ALPHABET + NOT_BASE45),
)
def test_any_single_character_change_is_refused(position, replacement):
    original = TYPICAL_TEXT[position]
    if replacement == original:
        replacement = base45.ALPHABET[(base45.ALPHABET.index(original) + 1) % 45]
    changed = TYPICAL_TEXT[:position] + replacement + TYPICAL_TEXT[position + 1 :]

    with pytest.raises(PassError) as refused:
        verify_pass(changed, SITE, TRUST)
    assert refused.value.reason in REFUSALS


@given(suffix=st.text(alphabet=base45.ALPHABET + NOT_BASE45, min_size=1, max_size=12))
def test_appended_text_is_refused(suffix):
    with pytest.raises(PassError) as refused:
        verify_pass(TYPICAL_TEXT + suffix, SITE, TRUST)
    assert refused.value.reason == "malformed"


@given(cut=st.integers(min_value=1, max_value=len(TYPICAL_TEXT)))
def test_truncated_text_is_refused(cut):
    with pytest.raises(PassError) as refused:
        verify_pass(TYPICAL_TEXT[:-cut], SITE, TRUST)
    assert refused.value.reason == "malformed"


@given(text=st.text(max_size=MAX_TEXT_LEN + 20))
def test_arbitrary_text_gets_a_pass_error_never_a_crash(text):
    with pytest.raises(PassError) as refused:
        verify_pass(text, SITE, TRUST)
    assert refused.value.reason in REFUSALS


@given(text=st.text(alphabet=base45.ALPHABET, min_size=1, max_size=MAX_TEXT_LEN - len(PREFIX)))
def test_arbitrary_base45_after_the_prefix_is_refused(text):
    with pytest.raises(PassError) as refused:
        verify_pass(PREFIX + text, SITE, TRUST)
    assert refused.value.reason in REFUSALS


def test_pass_for_another_site_is_wrong_site():
    with pytest.raises(PassError) as refused:
        verify_pass(TYPICAL_TEXT, "other-site", TRUST)
    assert refused.value.reason == "wrong_site"


def test_pass_signed_by_a_key_id_not_trusted_here_is_unknown_key():
    other = {2: TrustKey(2, public_bytes(Ed25519PrivateKey.generate()))}
    with pytest.raises(PassError) as refused:
        verify_pass(TYPICAL_TEXT, SITE, other)
    assert refused.value.reason == "unknown_key"


def test_same_key_id_but_another_key_is_bad_signature():
    forger = Ed25519PrivateKey.generate()
    forged = sign_pass(TYPICAL, forger)  # claims key id 1, signed with the forger's key

    for text, trust in ((forged, TRUST), (TYPICAL_TEXT, {1: TrustKey(1, public_bytes(forger))})):
        with pytest.raises(PassError) as refused:
            verify_pass(text, SITE, trust)
        assert refused.value.reason == "bad_signature"


def test_signature_is_checked_before_the_site():
    # A forged pass for another site must count as a forgery (an alert), not a wrong site.
    forged = sign_pass(TYPICAL, Ed25519PrivateKey.generate())
    with pytest.raises(PassError) as refused:
        verify_pass(forged, "other-site", TRUST)
    assert refused.value.reason == "bad_signature"


def test_no_personal_data_in_the_qr(site: Site):
    names = ("Alice Wong", "张三丰")
    room = "3-2-601"
    for name in names:
        issued = site.issue_pass("hh-7", name, room=room)
        raw = base45.decode(issued.qr.removeprefix(PREFIX))

        for secret in (name, room, name.split()[0]):
            assert secret not in issued.qr
            for encoding in ("utf-8", "utf-16-le", "utf-16-be", "gb18030"):
                assert secret.encode(encoding) not in raw, (secret, encoding)
        # What the pass does hold: pseudonymous ids only.
        assert parse_pass(issued.qr).household == "hh-7"


@pytest.mark.parametrize("length", [MAX_TEXT_LEN + 1, 10_000, 5_000_000])
def test_too_long_text_is_malformed_before_any_parsing(length):
    text = PREFIX + "%" * (length - len(PREFIX))  # '%' triples would be out of range if parsed
    with pytest.raises(PassError) as refused:
        verify_pass(text, SITE, TRUST)
    assert refused.value.reason == "malformed"
    assert "too long" in refused.value.detail


@pytest.mark.parametrize(
    "text",
    [
        "",
        "MW1",
        PREFIX,
        "MW2:" + TYPICAL_TEXT.removeprefix(PREFIX),
        "mw1:" + TYPICAL_TEXT.removeprefix(PREFIX),
        " " + TYPICAL_TEXT,
        TYPICAL_TEXT.removeprefix(PREFIX),
        "https://example.com/pass?id=42",
        "HC1:6BFOXN%TS3DH0YOJ58S S-W5HDC *M0II5XHC9B5G2+$N",
    ],
)
def test_text_that_is_not_an_mw1_pass_is_malformed(text):
    with pytest.raises(PassError) as refused:
        verify_pass(text, SITE, TRUST)
    assert refused.value.reason == "malformed"


def test_payload_fields_out_of_range_cannot_be_signed():
    bad = [
        PassPayload(0x1_0000, 1, SITE, "hh", Role.RESIDENT, 0, 1),  # key id > 16 bits
        PassPayload(1, -1, SITE, "hh", Role.RESIDENT, 0, 1),
        PassPayload(1, 1, SITE, "x" * 25, Role.RESIDENT, 0, 1),
        PassPayload(1, 1, SITE, "1 号楼", Role.RESIDENT, 0, 1),
        PassPayload(1, 1, "Not A Slug", "hh", Role.RESIDENT, 0, 1),
        PassPayload(1, 1, SITE, "hh", Role.RESIDENT, 5, 5),  # empty validity window
    ]
    for payload in bad:
        with pytest.raises(ProtocolError):
            sign_pass(payload, KEY)


# --- base45 -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("data", "text"),
    [
        (b"", ""),
        (b"AB", "BB8"),
        (b"Hello!!", "%69 VD92EX0"),
        (b"base-45", "UJCLQE7W581"),
        (b"ietf!", "QED8WEX0"),
        (b"\xff\xff", "FGW"),
        (b"\xff", "U5"),
    ],
)
def test_base45_matches_rfc_9285(data, text):
    assert base45.encode(data) == text
    assert base45.decode(text) == data


@given(st.binary(max_size=300))
def test_base45_round_trip(data):
    text = base45.encode(data)
    assert set(text) <= set(base45.ALPHABET)
    assert len(text) == 3 * (len(data) // 2) + 2 * (len(data) % 2)
    assert base45.decode(text) == data


@pytest.mark.parametrize(
    ("text", "why"),
    [
        ("GGW", "triple out of range"),  # 65536
        (":::", "triple out of range"),  # 44 + 44*45 + 44*2025, the largest triple
        ("V5", "pair out of range"),  # 256
        ("::", "pair out of range"),
        ("A", "dangling"),
        ("BB8A", "dangling"),
        ("bb8", "not in the base45 alphabet"),
        ("BB8\n", "not in the base45 alphabet"),
    ],
)
def test_base45_strict_decode_refuses(text, why):
    with pytest.raises(ProtocolError, match=why):
        base45.decode(text)


@given(st.text(alphabet=base45.ALPHABET, max_size=12) | st.text(max_size=30))
def test_base45_every_decodable_text_is_canonical(text):
    try:
        data = base45.decode(text)
    except ProtocolError:
        return
    assert base45.encode(data) == text
