"""Messages on the wire: events and their batches, acks, signed documents; strict schemas."""

from __future__ import annotations

import json
import uuid
from dataclasses import asdict, dataclass, field, fields, replace
from datetime import UTC, datetime, timedelta
from typing import Any, Literal

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from hypothesis import given
from hypothesis import strategies as st

from drivers.screening import PLAUSIBLE_BODY_C as SCREENING_DEFAULT
from protocol.documents import decode_document, sign_document
from protocol.errors import MessageError
from protocol.events import (
    MAX_BATCH_BYTES,
    MAX_BATCH_EVENTS,
    MAX_PASSAGES,
    Ack,
    Event,
    Passage,
    decode_batch,
    decode_passages,
    decode_status,
    encode_batch,
    encode_passages,
)
from protocol.passes import TrustKey, public_bytes
from protocol.policy import Policy
from protocol.schema import SchemaError, from_mapping
from protocol.temperature import PLAUSIBLE_BODY_C

SITE, GATE = "test-site", "east"


def event(seq: int = 1, **changes: Any) -> Event:
    base = Event(
        site=SITE,
        gate=GATE,
        seq=seq,
        uuid=str(uuid.UUID(int=seq)),
        at="2026-11-29T08:00:00.000+08:00",
        clock_trusted=True,
        kind="decision",
        decision="allow",
        reason="ok",
        direction="in",
        temperature_c=36.6,
        pass_id=42,
        household="1-1-101",
        role="resident",
        versions={"config": 3, "register": 9},
        detail={"rule": "all", "alert": None},
    )
    return replace(base, **changes)


def event_json(**changes: Any) -> dict[str, Any]:
    return {**event().to_json(), **changes}


# --- Event.from_json ----------------------------------------------------------------------


def test_event_json_round_trip():
    e = event(seq=7, temperature_c=None, pass_id=None, household=None, role=None)
    assert Event.from_json(json.loads(json.dumps(e.to_json()))) == e


def test_to_json_is_every_field_in_order_and_a_copy():
    """What dataclasses.asdict gave (the stored and exported body), without its cost."""
    e = event(detail={"rule": "all", "nested": {"a": [1, 2]}}, versions={"config": 3})
    data = e.to_json()
    assert data == asdict(e) and list(data) == [f.name for f in fields(Event)]
    data["detail"]["nested"]["a"].append(3)
    data["versions"]["config"] = 4
    assert e.detail == {"rule": "all", "nested": {"a": [1, 2]}} and e.versions == {"config": 3}


def test_optional_fields_may_be_absent():
    data = event_json()
    for key in ("decision", "direction", "temperature_c", "pass_id", "household", "role"):
        del data[key]
    parsed = Event.from_json(data)
    assert (parsed.decision, parsed.direction, parsed.pass_id, parsed.temperature_c) == (
        None,
        None,
        None,
        None,
    )


def test_integer_temperature_is_a_float():
    assert Event.from_json(event_json(temperature_c=37)).temperature_c == 37.0


@pytest.mark.parametrize(
    "required", ["site", "gate", "seq", "uuid", "at", "clock_trusted", "kind", "reason", "schema"]
)
def test_missing_required_field_is_named(required):
    data = event_json()
    del data[required]
    with pytest.raises(MessageError, match=f"missing field '{required}'"):
        Event.from_json(data)


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("seq", True),  # bool is an int in Python, never in our messages
        ("seq", 1.0),
        ("seq", "1"),
        ("schema", True),
        ("pass_id", True),
        ("pass_id", 42.0),
        ("pass_id", "42"),
        ("temperature_c", True),
        ("temperature_c", "36.6"),
        ("clock_trusted", 1),
        ("clock_trusted", "true"),
        ("site", 5),
        ("reason", None),
        ("reason", "x" * 201),
        ("household", 101),
        ("decision", False),
        ("versions", {"config": True}),
        ("versions", {"config": "3"}),
        ("versions", {"config": 3.5}),
        ("versions", {"config": None}),
        ("versions", [["config", 3]]),
        ("versions", "config=3"),
        ("detail", "alert"),
        ("detail", [1, 2]),
        ("reason", "ok\x00"),  # NUL: no PostgreSQL text column holds it
        ("household", "H1\x00"),
    ],
)
def test_field_of_wrong_type_is_refused(key, value):
    with pytest.raises(MessageError):
        Event.from_json(event_json(**{key: value}))


@pytest.mark.parametrize(
    ("key", "value", "message"),
    [
        ("household", "H" * 300, "household id 'HHH"),
        ("household", "", "household id"),
        ("household", "1-1-101 OR 1=1", "household id"),
        ("role", "admin", "'role' must be one of resident, staff, visitor"),
        ("temperature_c", 99.9, "'temperature_c' must be 34..43 °C or null"),
        ("temperature_c", 20, "'temperature_c' must be 34..43 °C or null"),
        ("reason", "Not A Code", "'reason' must be a reason code"),
        ("reason", "x" * 49, "'reason' must be a reason code"),
        ("uuid", "", "'uuid' must be up to 64"),
        ("uuid", "{a}", "'uuid' must be up to 64"),
        ("site", "Test Site", "'site' 'Test Site' must be 1-32 of a-z"),
        ("gate", "e" * 33, "must be 1-32 of a-z"),
        ("versions", {"config": -1}, "'versions' must map at most 16 names"),
        ("versions", {"config": 2**63}, "'versions' must map"),
        ("versions", {"config": 2**53 + 1}, "'versions' must map"),
        ("versions", {"Config File": 1}, "'versions' must map"),
        ("versions", {f"v{i}": 1 for i in range(17)}, "'versions' must map"),
        ("kind", "teleport", "unknown event kind"),
        ("decision", "maybe", "unknown decision"),
        ("direction", "up", "unknown direction"),
        ("seq", 0, "seq must be >= 1"),
        ("seq", -5, "seq must be >= 1"),
        ("schema", 2, "unsupported event schema"),
    ],
)
def test_value_outside_the_contract_is_refused(key, value, message):
    with pytest.raises(MessageError, match=message):
        Event.from_json(event_json(**{key: value}))


@pytest.mark.parametrize(
    ("key", "value"),
    [("uuid", "a\x00b"), ("reason", "ok\x00"), ("household", "1-1\x00"), ("role", "\x00")],
)
def test_a_text_with_a_nul_character_is_refused(key, value):
    """PostgreSQL text cannot hold NUL; no field of an event means one."""
    with pytest.raises(MessageError, match=f"field '{key}' must not contain NUL"):
        Event.from_json(event_json(**{key: value}))


def nested(depth: int) -> Any:
    value: Any = "x"
    for level in range(depth - 1):
        value = {"a": value} if level % 2 else [value]
    return {"a": value}


def test_a_detail_nested_deeper_than_sixteen_levels_is_refused():
    """The collector copies and serialises `detail` recursively for every event it stores:
    a few hundred levels there raised RecursionError inside the group's transaction."""
    assert Event.from_json(event_json(detail=nested(16))).detail == nested(16)
    with pytest.raises(MessageError, match="nests deeper than 16 levels"):
        Event.from_json(event_json(detail=nested(17)))


def test_json_deeper_than_the_parser_goes_is_a_message_error_everywhere():
    """json.loads raises RecursionError, not ValueError, for [[[[…: in the collector it escaped
    the group of messages it came in, and every other gate's batch of that group was dropped
    (one gate flooding such messages stopped the site's ingestion)."""
    deep = b"[" * 100_000 + b"]" * 100_000
    with pytest.raises(MessageError, match="too deeply"):
        decode_batch(b'{"schema": 1, "events": ' + deep + b"}", site=SITE, gate=GATE)
    for decode in (decode_status, decode_passages, Ack.decode):
        with pytest.raises(MessageError, match="too deeply"):
            decode(deep)


@pytest.mark.parametrize("data", [None, [], "event", 42, [("site", SITE)]])
def test_event_that_is_not_an_object_is_refused(data):
    with pytest.raises(MessageError, match="must be a JSON object"):
        Event.from_json(data)


# --- batches ------------------------------------------------------------------------------


def test_batch_round_trip():
    events = [event(seq) for seq in range(1, 6)]
    batch = decode_batch(encode_batch(GATE, events), site=SITE, gate=GATE)
    assert (batch.events, batch.rejected) == (events, [])


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        (b"", "not JSON"),
        (b"{events: []}", "not JSON"),
        (b"\xff\xfe\x00", "not JSON"),
        (b"[]", "'events' list"),
        (b'{"schema": 1, "events": {}}', "'events' list"),
        (b'{"events": []}', "unsupported batch schema"),
        (b'{"schema": "1", "events": []}', "unsupported batch schema"),
    ],
)
def test_batch_that_is_not_a_batch_raises(raw, message):
    with pytest.raises(MessageError, match=message):
        decode_batch(raw, site=SITE, gate=GATE)


def test_oversize_batch_raises_before_parsing():
    raw = b"[" * (MAX_BATCH_BYTES + 1)  # would be a RecursionError if json tried it
    with pytest.raises(MessageError, match="exceeds"):
        decode_batch(raw, site=SITE, gate=GATE)


def test_batch_with_too_many_events_raises():
    raw = json.dumps({"schema": 1, "gate": GATE, "events": [{}] * (MAX_BATCH_EVENTS + 1)})
    with pytest.raises(MessageError, match="exceeds"):
        decode_batch(raw.encode(), site=SITE, gate=GATE)


def test_one_bad_event_does_not_lose_the_good_ones():
    good = [event(seq) for seq in (1, 2, 4)]
    items: list[Any] = [e.to_json() for e in good]
    items.insert(2, {**event(3).to_json(), "seq": "three"})
    items.append("not an event")
    raw = json.dumps({"schema": 1, "gate": GATE, "events": items}).encode()

    batch = decode_batch(raw, site=SITE, gate=GATE)

    assert batch.events == good
    assert [index for index, _ in batch.rejected] == [2, 4]
    assert "seq" in batch.rejected[0][1]


def test_huge_number_in_one_event_does_not_lose_the_batch():
    # JSON allows 1e999 (read as infinity); it must reject that event, not the whole batch.
    good = event(1).to_json()
    raw = (
        '{"schema": 1, "gate": "east", "events": ['
        + json.dumps(good)
        + ", "
        + json.dumps(event(2).to_json()).replace('"config": 3', '"config": 1e999')
        + "]}"
    ).encode()

    batch = decode_batch(raw, site=SITE, gate=GATE)

    assert batch.events == [event(1)]
    assert [index for index, _ in batch.rejected] == [1]


@pytest.mark.parametrize(
    "changes", [{"gate": "west"}, {"site": "other-site"}, {"gate": "west", "site": "other-site"}]
)
def test_event_of_another_gate_or_site_is_rejected(changes):
    raw = encode_batch(GATE, [event(1), event(2, **changes)])

    batch = decode_batch(raw, site=SITE, gate=GATE)

    assert batch.events == [event(1)]
    assert [index for index, _ in batch.rejected] == [1]
    assert f"sent on {SITE}/{GATE}" in batch.rejected[0][1]


JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner),
    max_leaves=6,
)


@given(
    st.lists(
        st.dictionaries(st.sampled_from(sorted(event_json())), JSON_VALUES, max_size=3),
        min_size=1,
        max_size=5,
    )
)
def test_fuzzed_events_are_each_accepted_or_rejected(changes):
    # Each event: a valid one with up to three fields replaced by arbitrary JSON values
    # (NaN and Infinity included, as Python's json reads them).
    items = [{**event(i + 1).to_json(), **c} for i, c in enumerate(changes)]
    raw = json.dumps({"schema": 1, "gate": GATE, "events": items}).encode()

    batch = decode_batch(raw, site=SITE, gate=GATE)

    assert len(batch.events) + len(batch.rejected) == len(items)
    for e in batch.events:
        assert (e.site, e.gate) == (SITE, GATE)
        assert isinstance(e.seq, int) and not isinstance(e.seq, bool) and e.seq >= 1
        assert all(type(v) is int for v in e.versions.values())


# --- acks ---------------------------------------------------------------------------------


def test_every_value_a_gate_records_is_within_the_contract():
    """The bounds at the edges: what a gate can write is accepted (a refused event of a real
    gate would hold up its acknowledgements for good)."""
    for changes in (
        {"household": "H" * 24, "role": "staff", "temperature_c": 43.0, "reason": "r" * 48},
        {"household": None, "role": None, "temperature_c": None, "reason": "forged"},
        {"temperature_c": 34, "uuid": "east-77", "versions": {f"v{i}": 0 for i in range(16)}},
    ):
        assert Event.from_json(event_json(**changes)).to_json() == event_json(**changes)


def test_an_event_dated_more_than_a_day_ahead_of_the_collector_is_refused():
    now = datetime(2026, 11, 29, 0, 0, tzinfo=UTC)
    ahead = [
        event(1, at=(now + timedelta(hours=23)).isoformat()),
        event(2, at=(now + timedelta(hours=25)).isoformat()),
    ]
    batch = decode_batch(encode_batch(GATE, ahead), site=SITE, gate=GATE, now=now)
    assert [e.seq for e in batch.events] == [1]
    [(index, reason)] = batch.rejected
    assert index == 1 and "25 h ahead of the collector's clock (at most 24 h)" in reason
    # Without a clock (a gate reading its own log), only the 2000..2100 window applies.
    assert len(decode_batch(encode_batch(GATE, ahead), site=SITE, gate=GATE).events) == 2


@pytest.mark.parametrize(
    ("key", "value"), [("household", "H" * 300), ("role", "admin"), ("gate", "Other Gate")]
)
def test_a_relayed_passage_follows_the_same_rules(key, value):
    data = {**Passage(SITE, GATE, "u-1", "2026-11-29T08:00:00+08:00", 7, "1-1-101", "resident",
                      "out").to_json(), key: value}  # fmt: skip
    with pytest.raises(MessageError, match=key):
        Passage.from_json(data)


def test_the_screening_driver_and_the_protocol_agree_on_plausible_temperatures():
    """drivers/ imports nothing of ours: its default is a copy the gate overrides anyway."""
    assert SCREENING_DEFAULT == PLAUSIBLE_BODY_C


def test_a_status_nested_deeper_than_sixteen_levels_is_refused():
    value: Any = 1
    for _ in range(17):
        value = [value]
    with pytest.raises(MessageError, match="deeper than 16 levels"):
        decode_status(json.dumps({"state": "online", "extra": value}).encode())


@pytest.mark.parametrize("seq", [0, 1, 2**40])
def test_ack_round_trip(seq):
    assert Ack.decode(Ack(GATE, seq).encode()) == Ack(GATE, seq)


@pytest.mark.parametrize(
    "raw",
    [
        b"",
        b"garbage",
        b"\xff",
        b"[]",
        b"7",
        b"null",
        b'{"gate": "east"}',
        b'{"acked_seq": 3}',
        b'{"gate": "east", "acked_seq": -1}',
        b'{"gate": "east", "acked_seq": "x"}',
        b'{"gate": "east", "acked_seq": null}',
        b'{"gate": "east", "acked_seq": NaN}',
        b'{"gate": "east", "acked_seq": 1e999}',
        b'{"gate": "east", "acked_seq": 3.7}',
        b'{"gate": "east", "acked_seq": true}',
        b'{"gate": "east", "acked_seq": "3"}',
        b'{"gate": ["east"], "acked_seq": 3}',
        b'{"gate": "east", "acked_seq": 9223372036854775807}',  # 2^63 - 1: + 1 overflows
        b'{"gate": "east", "acked_seq": 9007199254740993}',  # 2^53 + 1
    ],
)
def test_garbage_ack_is_a_message_error(raw):
    with pytest.raises(MessageError):
        Ack.decode(raw)


# --- signed documents ---------------------------------------------------------------------

DOC_KEY = Ed25519PrivateKey.generate()
DOC_TRUST = {3: TrustKey(3, public_bytes(DOC_KEY))}
BODY = {"policy": {"fever_threshold_c": 37.3}, "note": "门卫"}


def signed_config(**kw: Any) -> bytes:
    args: dict[str, Any] = {
        "kind": "config",
        "site": SITE,
        "version": 5,
        "issued_at": "2026-11-29T00:00:00+00:00",
        "body": BODY,
        "key_id": 3,
        "private_key": DOC_KEY,
        **kw,
    }
    return sign_document(**args).encode()


def test_document_sign_and_verify():
    doc = decode_document(signed_config(), kind="config", site=SITE, trust_keys=DOC_TRUST)
    assert (doc.kind, doc.site, doc.version, doc.key_id, doc.body) == (
        "config",
        SITE,
        5,
        3,
        BODY,
    )


def test_key_order_and_spacing_do_not_matter():
    data = json.loads(signed_config())
    reordered = json.dumps(dict(reversed(list(data.items()))), indent=3).encode()
    assert decode_document(reordered, kind="config", site=SITE, trust_keys=DOC_TRUST).version == 5


@pytest.mark.parametrize(
    "tamper",
    [
        lambda d: d["body"]["policy"].update(fever_threshold_c=42.0),
        lambda d: d["body"].update(extra=1),
        lambda d: d.update(version=6),
        lambda d: d.update(issued_at="2027-01-01T00:00:00+00:00"),
    ],
)
def test_tampered_document_is_refused(tamper):
    data = json.loads(signed_config())
    tamper(data)
    with pytest.raises(MessageError, match="signature does not verify"):
        decode_document(json.dumps(data).encode(), kind="config", site=SITE, trust_keys=DOC_TRUST)


def test_document_signed_by_an_untrusted_key_is_refused():
    other = Ed25519PrivateKey.generate()
    with pytest.raises(MessageError, match="untrusted key 4"):
        decode_document(
            signed_config(key_id=4, private_key=other),
            kind="config",
            site=SITE,
            trust_keys=DOC_TRUST,
        )
    # Claiming a trusted key id does not help the forger.
    with pytest.raises(MessageError, match="signature does not verify"):
        decode_document(
            signed_config(private_key=other), kind="config", site=SITE, trust_keys=DOC_TRUST
        )


@pytest.mark.parametrize(("kind", "site"), [("register", SITE), ("config", "other-site")])
def test_document_of_another_kind_or_site_is_refused(kind, site):
    with pytest.raises(MessageError, match="expected"):
        decode_document(signed_config(), kind=kind, site=site, trust_keys=DOC_TRUST)


@pytest.mark.parametrize(
    "raw",
    [
        b"",
        b"{",
        b"[]",
        b'{"kind": "config"}',
        signed_config().replace(b'"signature": "', b'"signature": "!'),
        signed_config().replace(b'"version": 5', b'"version": "five"'),
        signed_config().replace(b'"version": 5', b'"version": 1e999'),
        signed_config().replace(b'"key_id": 3', b'"key_id": 1e999'),
    ],
)
def test_malformed_document_is_a_message_error(raw):
    with pytest.raises(MessageError):
        decode_document(raw, kind="config", site=SITE, trust_keys=DOC_TRUST)


# --- schema and policy --------------------------------------------------------------------


@dataclass(frozen=True)
class Lamp:
    colour: Literal["red", "green"]
    pin: int = 17
    active_low: bool = False


@dataclass(frozen=True)
class Panel:
    name: str
    lamp: Lamp
    brightness: float = 1.0
    tags: tuple[str, ...] = ()
    timeout_s: int | None = None
    notes: list[str] = field(default_factory=list)


def test_schema_builds_nested_dataclasses():
    panel = from_mapping(
        Panel,
        {
            "name": "east",
            "lamp": {"colour": "green", "pin": 22},
            "brightness": 1,
            "tags": ["a", "b"],
            "timeout_s": None,
            "notes": ["x"],
        },
        "panel.toml",
    )
    assert panel == Panel("east", Lamp("green", 22), 1.0, ("a", "b"), None, ["x"])
    assert type(panel.brightness) is float


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"name": "e", "lamp": {"colour": "red"}, "colour": "red"}, "panel.toml: unknown key"),
        ({"name": "e", "lamp": {"colour": "red", "pni": 3}}, "panel.toml lamp: unknown key"),
        ({"name": "e", "lamp": {"colour": "blue"}}, "'blue' is not one of 'red', 'green'"),
        ({"name": "e", "lamp": {"colour": "red", "pin": True}}, "lamp pin: expected a whole"),
        ({"name": "e", "lamp": {"colour": "red", "pin": "17"}}, "lamp pin: expected a whole"),
        ({"name": "e", "lamp": {"colour": "red", "pin": 17.0}}, "lamp pin: expected a whole"),
        ({"name": "e", "lamp": {"colour": "red", "active_low": 1}}, "expected true or false"),
        ({"name": "e", "lamp": {"colour": "red"}, "brightness": True}, "expected a number"),
        ({"name": "e", "lamp": {"colour": "red"}, "brightness": "1"}, "expected a number"),
        ({"name": 5, "lamp": {"colour": "red"}}, "panel.toml name: expected a string"),
        ({"name": "e", "lamp": "red"}, "panel.toml lamp: expected a table"),
        ({"name": "e", "lamp": {"colour": "red"}, "tags": "a"}, "tags: expected a list"),
        ({"name": "e", "lamp": {"colour": "red"}, "tags": ["a", 2]}, r"tags\[1\]: expected a"),
        ({"name": "e", "lamp": {"colour": "red"}, "timeout_s": False}, "timeout_s: expected"),
        ({"name": "e", "lamp": {"colour": "red"}, "timeout_s": 1.5}, "timeout_s: expected"),
        ({"lamp": {"colour": "red"}}, "panel.toml: .*missing .*'name'"),
        ([("name", "e")], "panel.toml: expected a table"),
    ],
)
def test_schema_refuses_with_where_and_what(data, message):
    with pytest.raises(SchemaError, match=message):
        from_mapping(Panel, data, "panel.toml")


def test_schema_names_every_unknown_key_and_the_known_ones():
    with pytest.raises(SchemaError) as err:
        from_mapping(Lamp, {"colour": "red", "zeta": 1, "alpha": 2}, "[lamp]")
    assert "alpha, zeta" in str(err.value)
    assert "known: active_low, colour, pin" in str(err.value)


def test_policy_defaults_and_round_trip():
    assert Policy.from_json({}) == Policy()
    p = Policy.from_json({"fever_threshold_c": 37, "fever_recheck_window_s": 120})
    assert (p.fever_threshold_c, p.fever_recheck_window_s) == (37.0, 120)
    assert Policy.from_json(p.to_json()) == p


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"fever_threshold": 37.5}, "unknown key.*fever_threshold"),
        ({"fever_threshold_c": "37.3"}, "fever_threshold_c: expected a number"),
        ({"fever_threshold_c": True}, "fever_threshold_c: expected a number"),
        ({"fever_recheck_window_s": True}, "fever_recheck_window_s: expected a whole"),
        ({"fever_recheck_window_s": 300.0}, "fever_recheck_window_s: expected a whole"),
        ({"fever_threshold_c": 45.0}, "fever_threshold_c must be 34..42 °C, got 45.0"),
        ({"fever_threshold_c": float("nan")}, "fever_threshold_c: expected a finite number"),
        ({"household_max_out": 10**9}, "household_max_out must be 0..100"),
        ({"fever_recheck_window_s": 5}, "10..3600"),
        ({"max_data_age_h": 0}, "max_data_age_h"),
        ({"timezone": "localtime"}, "'localtime' is each machine's own system zone"),
        ({"timezone": "Factory"}, "'Factory' is the tz database's 'zone not set'"),
        ({"timezone": "Asia/Shanghia"}, "unknown timezone 'Asia/Shanghia': use an IANA name"),
    ],
)
def test_policy_refuses(data, message):
    with pytest.raises(SchemaError, match=message):
        Policy.from_json(data, "server.toml [policy]")


def test_epoch_is_optional_hex_and_travels_in_events_and_acks():
    from protocol.events import Ack, Event, MessageError

    base = {
        "site": "s",
        "gate": "g",
        "seq": 1,
        "uuid": "u",
        "at": "2026-11-29T08:00:00+00:00",
        "clock_trusted": True,
        "kind": "decision",
        "decision": "allow",
        "reason": "ok",
        "direction": "in",
        "temperature_c": 36.5,
        "pass_id": 1,
        "household": "h",
        "role": "resident",
        "schema": 1,
    }
    assert Event.from_json(base).epoch == ""  # gates from before epochs
    assert Event.from_json({**base, "epoch": "0123abcd"}).epoch == "0123abcd"
    for bad in ("XYZ", "0" * 33, 12, None):
        with pytest.raises(MessageError, match="epoch"):
            Event.from_json({**base, "epoch": bad})
    assert Ack.decode(Ack("g", 5, "beef").encode()) == Ack("g", 5, "beef")
    assert Ack.decode(b'{"schema": 1, "gate": "g", "acked_seq": 5}').epoch == ""


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("at", "yesterday"),  # the collector parses it to replay a household's day
        ("at", "2026-11-29T08:00:00"),  # no offset: naive and aware times never compare
        ("pass_id", 2**64),  # SQLite cannot store it: the whole batch would fail, unrecorded
        ("pass_id", -1),
        ("seq", 2**63),
        ("seq", 2**63 - 1),  # stored, then seq + 1 overflowed a BIGINT on PostgreSQL
        ("seq", 2**53 + 1),
        ("temperature_c", float("nan")),
        ("temperature_c", float("inf")),
    ],
)
def test_event_with_unusable_value_is_a_message_error(key, value):
    with pytest.raises(MessageError):
        Event.from_json(event_json(**{key: value}))
    raw = json.dumps({"schema": 1, "gate": GATE, "events": [event_json(**{key: value})]})
    batch = decode_batch(raw.encode(), site=SITE, gate=GATE)
    assert batch.events == [] and len(batch.rejected) == 1


@pytest.mark.parametrize("at", ["soon", "2026-11-29T08:00:00", ""])
def test_passage_without_an_aware_time_is_a_message_error(at):
    from protocol.events import Passage

    good = Passage(
        SITE, "west", "u-1", "2026-11-29T08:00:00+08:00", 7, "1-1-101", "resident", "out"
    )
    assert Passage.decode(good.encode()) == good
    raw = json.dumps({**json.loads(good.encode()), "at": at}).encode()
    with pytest.raises(MessageError, match="at"):
        Passage.decode(raw)


def passage(n: int, **changes: Any) -> Passage:
    base = Passage(
        SITE, "west", f"u-{n}", "2026-11-29T08:00:00+08:00", n, "1-1-101", "resident", "out"
    )
    return replace(base, **changes)


def test_relayed_passages_in_the_batch_form_and_the_single_one():
    many = [passage(n) for n in range(3)]
    assert decode_passages(encode_passages(many)) == (many, [])
    assert decode_passages(many[0].encode()) == ([many[0]], [])  # from older collectors
    with pytest.raises(ValueError, match="at most"):
        encode_passages([passage(n) for n in range(MAX_PASSAGES + 1)])


def test_a_bad_passage_spoils_only_itself():
    raw = json.loads(encode_passages([passage(1), passage(2)]))
    raw["passages"].insert(1, {**raw["passages"][0], "direction": "sideways"})
    raw["passages"].append("not an object")
    good, bad = decode_passages(json.dumps(raw).encode())
    assert good == [passage(1), passage(2)]
    assert len(bad) == 2 and "passage 1" in bad[0] and "sideways" in bad[0]


@pytest.mark.parametrize(
    "raw",
    [
        b"not json",
        b"[]",
        json.dumps({"schema": 2, "passages": []}).encode(),
        json.dumps({"schema": 1, "passages": {"a": 1}}).encode(),
        json.dumps({"schema": 1, "passages": [{}] * (MAX_PASSAGES + 1)}).encode(),
        json.dumps({"schema": 1, "site": SITE}).encode(),  # a single passage, incomplete
    ],
)
def test_a_passage_message_of_neither_form_is_a_message_error(raw: bytes):
    with pytest.raises(MessageError):
        decode_passages(raw)


# --- times out of range -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("at", "accepted"),
    [
        ("9999-12-31T20:00:00+00:00", False),  # local time overflows: readers would crash
        ("0001-01-01T00:00:00+00:00", False),
        ("1999-12-31T23:59:59+00:00", False),
        ("2000-01-01T07:59:59+08:00", False),  # 1999 in UTC, whatever the local date says
        ("2000-01-01T00:00:00+00:00", True),
        ("2100-12-31T23:59:59.999+00:00", True),
        ("2101-01-01T07:00:00+08:00", True),  # 2100-12-31T23:00Z: still 2100
        ("2101-01-01T00:00:00+00:00", False),
    ],
)
def test_event_and_passage_times_outside_2000_to_2100_are_refused(at, accepted):
    from protocol.events import Passage

    passage = json.dumps(
        {"schema": 1, "site": SITE, "gate": GATE, "uuid": "u", "at": at, "pass_id": 7,
         "household": "1-1-101", "role": "resident", "direction": "out"}
    ).encode()  # fmt: skip
    raw = json.dumps({"schema": 1, "gate": GATE, "events": [event_json(at=at)]}).encode()
    batch = decode_batch(raw, site=SITE, gate=GATE)
    if accepted:
        assert [e.at for e in batch.events] == [at]
        assert Passage.decode(passage).at == at
        return
    [(index, reason)] = batch.rejected
    assert index == 0 and "'at'" in reason and "2000..2100" in reason and at in reason
    with pytest.raises(MessageError, match=r"2000\.\.2100"):
        Passage.decode(passage)


# --- gate status --------------------------------------------------------------------------


def gate_status(**changes: Any) -> dict[str, Any]:
    """A status as edge/daemon.py publishes it."""
    return {
        "schema": 1,
        "gate": GATE,
        "site": SITE,
        "state": "online",
        "at": "2026-11-29T00:20:20+00:00",
        "direction": "in",
        "backlog": 0,
        "last_seq": 17,
        "acked_seq": 17,
        "versions": {"config": 3, "register": 9, "trust": 1},
        "data_age_h": 0.1,
        "data_as_of": "2026-11-29T00:15:00+00:00",
        "max_data_age_h": 24.0,
        "freshness": {"serial": 4, "issued_at": "2026-11-29T00:15:00+00:00"},
        "clock": {"trusted": True, "jumps": 0},
        "camera": {"state": "ok", "error": None},
        "thermometer": None,
        "counts": {"decisions": 3, "allowed": 2, "denied": 1},
        "outside": 1,
        **changes,
    }


def test_a_gates_status_and_its_last_will_are_accepted_unknown_fields_kept():
    from protocol.events import decode_status, encode_status

    full = gate_status(storage={"free_mb": 900}, newer_field=[1, 2])
    assert decode_status(json.dumps(full).encode()) == full
    will = encode_status({"gate": GATE, "site": SITE, "state": "offline"})
    assert decode_status(will)["state"] == "offline"
    nulls = gate_status(data_age_h=None, data_as_of=None, freshness=None, storage=None)
    assert decode_status(json.dumps(nulls).encode()) == nulls


BAD_STATUS_FIELDS = [
    ("versions", "x"),
    ("versions", {"config": 2**63 - 1}),
    ("last_seq", 2**63 - 1),
    ("acked_seq", 2**53 + 1),
    ("versions", {"config": "3"}),
    ("versions", {"config": -1}),
    ("versions", {"config": True}),
    ("clock", [1]),
    ("clock", None),
    ("camera", "ok"),
    ("backlog", "7"),
    ("backlog", 1.5),
    ("backlog", -1),
    ("backlog", 2**64),  # Prometheus cannot hold it as a float
    ("last_seq", None),
    ("acked_seq", True),
    ("data_age_h", "1"),
    ("data_age_h", float("nan")),
    ("data_as_of", 5),
    ("data_as_of", "yesterday"),
    ("data_as_of", "2026-11-29T00:15:00"),  # no offset
    ("data_as_of", "9999-12-31T20:00:00+00:00"),
    ("max_data_age_h", 0),
    ("max_data_age_h", None),
    ("max_data_age_h", float("inf")),
    ("freshness", "yes"),
    ("storage", []),
    ("at", "9999-12-31T20:00:00+00:00"),
    ("direction", 3),
    ("gate", ["east"]),
]


@pytest.mark.parametrize(("key", "value"), BAD_STATUS_FIELDS)
def test_a_status_field_of_the_wrong_shape_is_refused_by_name(key, value):
    from protocol.events import decode_status, readable_status

    raw = json.dumps(gate_status(**{key: value})).encode()
    with pytest.raises(MessageError, match=rf"bad status: field '{key}' must be"):
        decode_status(raw)
    # a status stored before intake checked shapes: readers get the rest of it
    readable = readable_status(json.loads(raw))
    assert set(readable) == set(gate_status()) - {key}
    assert readable["state"] == "online"


def test_a_status_with_several_bad_fields_names_each():
    from protocol.events import decode_status, readable_status

    raw = json.dumps(gate_status(versions="x", clock=[1], backlog="lots")).encode()
    with pytest.raises(MessageError) as err:
        decode_status(raw)
    assert all(f"'{k}'" in str(err.value) for k in ("versions", "clock", "backlog"))
    assert readable_status([1, 2]) == {} and readable_status(None) == {}


def test_an_ack_names_the_event_it_acknowledges_and_older_acks_still_decode():
    from protocol.events import Ack

    named = Ack("g", 5, "beef", "0b8c7a52-0000-4000-8000-000000000005")
    assert Ack.decode(named.encode()) == named
    assert Ack.decode(b'{"schema": 1, "gate": "g", "acked_seq": 5, "epoch": "beef"}').uuid is None
    with pytest.raises(MessageError):
        Ack.decode(b'{"schema": 1, "gate": "g", "acked_seq": 5, "uuid": 7}')


def test_the_largest_seq_and_the_next_one_fit_a_signed_64_bit_integer():
    """A gate may number up to MAX_SEQ; readers compute seq + 1 (the next one expected) in
    SQL: that stays inside PostgreSQL's BIGINT and exact as a JSON double."""
    from protocol.events import MAX_SEQ

    assert Event.from_json(event_json(seq=MAX_SEQ)).seq == MAX_SEQ
    assert MAX_SEQ + 1 <= 2**63 - 1 and float(MAX_SEQ) == MAX_SEQ
    assert Ack.decode(Ack("east", MAX_SEQ).encode()).acked_seq == MAX_SEQ
