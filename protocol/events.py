"""Events (gate → collector), their batches, acknowledgements and gate status.

Every event carries (gate, seq) — the collector's idempotency key — and a
UUID, the wall time and whether the gate's clock was trusted, the decision and
reason code, the temperature, pass and household ids, and the data versions
the decision used. No names or phone numbers (DESIGN.md, privacy).
"""

from __future__ import annotations

import copy
import json
import math
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, TypeGuard

from protocol.errors import MessageError, ProtocolError
from protocol.passes import Role, check_household, check_slug
from protocol.temperature import PLAUSIBLE_BODY_C, plausible_body

SCHEMA = 1
EPOCH_RE = re.compile(r"[0-9a-f]{0,32}")
MAX_BATCH_BYTES = 1024 * 1024
MAX_BATCH_EVENTS = 500
MAX_SEQ = 2**53
"""The largest seq (and acked_seq, status counters, reported versions), like document
versions (protocol.documents.MAX_VERSION): a gate numbering 1,000 events a second reaches it
in 285,000 years, and seq + 1 stays far inside a 64-bit integer (2^63 - 1 stored, then
seq + 1, was an overflow error on PostgreSQL) and exact in a JSON double."""
MAX_PASS_ID = 2**32 - 1  # 4 unsigned bytes in the pass
MAX_DETAIL_DEPTH = 16
"""Levels of objects and lists in an event's `detail` or a gate status (a gate's are two or
three deep)."""
TOO_DEEP = "{what} nests objects or lists too deeply to be read"
"""A message whose JSON is deeper than Python's parser goes (a hostile one): a MessageError,
never a RecursionError that would take other messages down with it."""
EARLIEST_AT = datetime(2000, 1, 1, tzinfo=UTC)
LATEST_AT = datetime(2101, 1, 1, tzinfo=UTC)
"""Times a gate reports lie in [EARLIEST_AT, LATEST_AT): years 2000 through 2100 (UTC). A gate's
clock never goes below its floor (the issue time of the documents it holds); readers convert
times to the site's zone, where a year 9999 overflows."""

MAX_AHEAD = timedelta(hours=24)
"""An event dated further ahead of the collector's clock is refused (decode_batch's `now`):
a gate's clock that wrong (a year 2099 from a dead RTC) would put its passages into days
that have not come. Generous on purpose: a refused event holds up its gate's
acknowledgements until the gate's clock is fixed, and a gate whose RTC keeps local time
runs 8 hours ahead in China."""

KINDS = frozenset({"decision", "exit_request", "passed", "alert", "override", "device"})
ROLES = frozenset(role.label for role in Role)
"""The roles a pass can carry (resident, visitor, staff): an event or passage says one or none."""
REASON_RE = re.compile(r"[a-z][a-z0-9_]{0,47}")
"""A reason code's form. Not the list of codes this version knows (protocol/reasons.py): codes
are added over time, and an event of a gate newer than its collector must still be stored
(and shown as "Refused (code)") or its gate's acknowledgements would stop there."""
UUID_RE = re.compile(r"[0-9A-Za-z-]{1,64}")
"""An event's id: the gate writes a UUID (uuid4 text)."""
VERSION_NAME_RE = re.compile(r"[a-z][a-z0-9_]{0,31}")
MAX_VERSIONS = 16
"""Names of the data versions an event reports (a gate's: config and register), at most."""
DECISIONS = frozenset({"allow", "deny"})
DIRECTIONS = frozenset({"in", "out"})


@dataclass(frozen=True)
class Event:
    site: str
    gate: str
    seq: int
    uuid: str
    at: str  # ISO-8601 with offset, the gate's wall time when it decided
    clock_trusted: bool
    kind: str
    decision: str | None
    reason: str
    direction: str | None
    temperature_c: float | None
    pass_id: int | None
    household: str | None
    role: str | None
    versions: dict[str, int] = field(default_factory=dict)
    detail: dict[str, Any] = field(default_factory=dict)
    schema: int = SCHEMA
    epoch: str = ""
    """The gate database's random id: seq numbering starts again at 1 in a new database (a
    replaced SD card), so the collector keys events on (gate, epoch, seq)."""

    def to_json(self) -> dict[str, Any]:
        """The event as exported and sent: every field, in declaration order (what
        dataclasses.asdict gives, without its recursive walk: this runs for every event the
        collector stores). A new dict each time; `versions` and `detail` are copies."""
        return {
            "site": self.site,
            "gate": self.gate,
            "seq": self.seq,
            "uuid": self.uuid,
            "at": self.at,
            "clock_trusted": self.clock_trusted,
            "kind": self.kind,
            "decision": self.decision,
            "reason": self.reason,
            "direction": self.direction,
            "temperature_c": self.temperature_c,
            "pass_id": self.pass_id,
            "household": self.household,
            "role": self.role,
            "versions": dict(self.versions),
            "detail": copy.deepcopy(self.detail) if self.detail else {},
            "schema": self.schema,
            "epoch": self.epoch,
        }

    @classmethod
    def from_json(cls, data: object) -> Event:
        """Strictly validated: a field of the wrong type is a MessageError, never a crash."""
        if not isinstance(data, Mapping):
            raise MessageError("event must be a JSON object")
        try:
            event = cls(
                site=_slug(data, "site"),
                gate=_slug(data, "gate"),
                seq=_int(data, "seq"),
                uuid=_match(data, "uuid", UUID_RE, "up to 64 letters, digits and '-' (a UUID)"),
                at=_at(data),
                clock_trusted=_bool(data, "clock_trusted"),
                kind=_str(data, "kind"),
                decision=_opt(data, "decision", str),
                reason=_match(data, "reason", REASON_RE, "a reason code (a-z, 0-9, _; 1-48)"),
                direction=_opt(data, "direction", str),
                temperature_c=_temperature(data),
                pass_id=_opt(data, "pass_id", int),
                household=_household(data, optional=True),
                role=_role(data, optional=True),
                versions=_versions(data),
                detail=_detail(data),
                schema=_int(data, "schema"),
                epoch=_epoch(data),
            )
        except (TypeError, ValueError) as exc:
            raise MessageError(f"bad event: {exc}") from None
        if event.schema != SCHEMA:
            raise MessageError(f"unsupported event schema {event.schema}")
        if event.seq < 1:
            raise MessageError("event seq must be >= 1")
        if event.seq > MAX_SEQ:
            raise MessageError(f"event seq must be <= {MAX_SEQ}")
        if event.pass_id is not None and not 0 <= event.pass_id <= MAX_PASS_ID:
            raise MessageError(f"event pass_id must be 0..{MAX_PASS_ID}")
        if event.kind not in KINDS:
            raise MessageError(f"unknown event kind {event.kind!r}")
        if event.decision is not None and event.decision not in DECISIONS:
            raise MessageError(f"unknown decision {event.decision!r}")
        if event.direction is not None and event.direction not in DIRECTIONS:
            raise MessageError(f"unknown direction {event.direction!r}")
        return event


def _detail(data: Mapping[str, Any]) -> dict[str, Any]:
    """Optional: an object of at most MAX_DETAIL_DEPTH levels of objects and lists (the
    collector copies and serialises it recursively for every event it stores)."""
    detail = dict(data.get("detail", {}))
    if too_deep(detail):
        raise ValueError(f"field 'detail' nests deeper than {MAX_DETAIL_DEPTH} levels")
    return detail


def too_deep(value: object, limit: int = MAX_DETAIL_DEPTH) -> bool:
    """Whether `value` nests objects and lists more than `limit` levels deep (read without
    recursion: what is stored must be readable, and written again, by recursive code)."""
    walk: list[tuple[object, int]] = [(value, 1)]
    while walk:
        item, depth = walk.pop()
        if isinstance(item, Mapping | list):
            if depth > limit:
                return True
            items = item.values() if isinstance(item, Mapping) else item
            walk.extend((inner, depth + 1) for inner in items)
    return False


def _slug(data: Mapping[str, Any], key: str) -> str:
    """A site or gate: a slug (protocol.passes.check_slug), as in every topic."""
    try:
        return check_slug(_str(data, key), f"field {key!r}")
    except ProtocolError as exc:
        raise ValueError(str(exc)) from None


def _match(data: Mapping[str, Any], key: str, form: re.Pattern[str], what: str) -> str:
    value = _str(data, key)
    if not form.fullmatch(value):
        raise ValueError(f"field {key!r} must be {what}")
    return value


def _household(data: Mapping[str, Any], *, optional: bool = False) -> str | None:
    """A household id as a pass carries it (1-24 of A-Z a-z 0-9 . _ -)."""
    value = _opt(data, "household", str) if optional else _str(data, "household")
    if value is None:
        return None
    try:
        return check_household(value)
    except ProtocolError as exc:
        raise ValueError(f"field 'household': {exc}") from None


def _role(data: Mapping[str, Any], *, optional: bool = False) -> str | None:
    value = _opt(data, "role", str) if optional else _str(data, "role")
    if value is not None and value not in ROLES:
        raise ValueError(f"field 'role' must be one of {', '.join(sorted(ROLES))}")
    return value


def _temperature(data: Mapping[str, Any]) -> float | None:
    """A body temperature (°C, PLAUSIBLE_BODY_C) or null: a gate records only those."""
    value = _opt_float(data, "temperature_c")
    if value is not None and not plausible_body(value):
        low, high = PLAUSIBLE_BODY_C
        raise ValueError(f"field 'temperature_c' must be {low:g}..{high:g} °C or null")
    return value


def _epoch(data: Mapping[str, Any]) -> str:
    """Optional (events of gates before epochs carry none): up to 32 hex digits."""
    value = data.get("epoch", "")
    if not isinstance(value, str) or not EPOCH_RE.fullmatch(value):
        raise ValueError("field 'epoch' must be up to 32 hex digits")
    return value


def _at(data: Mapping[str, Any], key: str = "at") -> str:
    """An ISO-8601 time with a UTC offset, in years 2000..2100 (EARLIEST_AT, LATEST_AT): the
    collector and the gates compare these times with aware ones (a naive one would raise there,
    after the message was accepted) and show them in local time (year 9999 overflows)."""
    value = _str(data, key)
    if not is_time(value):
        raise ValueError(f"field {key!r} must be an ISO-8601 time with a UTC offset")
    if not in_range(datetime.fromisoformat(value)):
        raise ValueError(
            f"field {key!r} is {value}: outside {EARLIEST_AT:%Y}..{LATEST_AT.year - 1} (UTC)"
        )
    return value


def is_time(value: object) -> bool:
    """Whether `value` is an ISO-8601 time text with a UTC offset."""
    if not isinstance(value, str):
        return False
    try:
        return datetime.fromisoformat(value).tzinfo is not None
    except ValueError:
        return False


def in_range(t: datetime) -> bool:
    """Whether aware `t` lies in years 2000..2100 (UTC), the times gates report."""
    return EARLIEST_AT <= t < LATEST_AT


def _get(data: Mapping[str, Any], key: str) -> Any:
    if key not in data:
        raise ValueError(f"missing field {key!r}")
    return data[key]


def _str(data: Mapping[str, Any], key: str) -> str:
    value = _get(data, key)
    if not isinstance(value, str) or len(value) > 200:
        raise ValueError(f"field {key!r} must be a string")
    if "\x00" in value:  # no text column of PostgreSQL holds NUL
        raise ValueError(f"field {key!r} must not contain NUL")
    return value


def _int(data: Mapping[str, Any], key: str) -> int:
    value = _get(data, key)
    if not isinstance(value, int) or isinstance(value, bool):
        raise ValueError(f"field {key!r} must be an integer")
    return value


def _bool(data: Mapping[str, Any], key: str) -> bool:
    value = _get(data, key)
    if not isinstance(value, bool):
        raise ValueError(f"field {key!r} must be true or false")
    return value


def _versions(data: Mapping[str, Any]) -> dict[str, int]:
    """At most MAX_VERSIONS names (a-z, 0-9, _) of whole numbers 0..MAX_SEQ."""
    value = data.get("versions", {})
    if (
        not isinstance(value, Mapping)
        or len(value) > MAX_VERSIONS
        or not all(isinstance(k, str) and VERSION_NAME_RE.fullmatch(k) for k in value)
        or not all(_is_count(v) for v in value.values())
    ):
        raise ValueError(
            f"field 'versions' must map at most {MAX_VERSIONS} names to whole numbers 0..{MAX_SEQ}"
        )
    return dict(value)


def _opt(data: Mapping[str, Any], key: str, kind: type) -> Any:
    value = data.get(key)
    if value is None:
        return None
    if not isinstance(value, kind) or isinstance(value, bool):
        raise ValueError(f"field {key!r} must be {kind.__name__} or null")
    if isinstance(value, str) and "\x00" in value:  # no text column of PostgreSQL holds NUL
        raise ValueError(f"field {key!r} must not contain NUL")
    return value


def _opt_float(data: Mapping[str, Any], key: str) -> float | None:
    value = data.get(key)
    if value is None:
        return None
    if not isinstance(value, int | float) or isinstance(value, bool):
        raise ValueError(f"field {key!r} must be a number or null")
    if not math.isfinite(value):
        raise ValueError(f"field {key!r} must be a finite number or null")
    return float(value)


def encode_batch(gate: str, events: list[Event]) -> bytes:
    return json.dumps(
        {"schema": SCHEMA, "gate": gate, "events": [e.to_json() for e in events]},
        ensure_ascii=False,
    ).encode()


@dataclass(frozen=True)
class DecodedBatch:
    events: list[Event]
    rejected: list[tuple[int, str]]  # (index in batch, reason) of events that failed validation


def decode_batch(raw: bytes, *, site: str, gate: str, now: datetime | None = None) -> DecodedBatch:
    """Parse a batch from topic menwei/{site}/{gate}/events.

    A batch that is not JSON at all raises MessageError; single bad events are
    returned in `rejected` so the good ones are still stored. An event whose
    site/gate differs from the topic it came on is rejected (no cross-gate writes), and
    so is one dated more than MAX_AHEAD after `now` (aware; the collector's clock).
    """
    if len(raw) > MAX_BATCH_BYTES:
        raise MessageError(f"batch of {len(raw)} bytes exceeds {MAX_BATCH_BYTES}")
    try:
        data = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as exc:
        raise MessageError(f"batch is not JSON: {exc}") from None
    except RecursionError:  # [[[[…: deeper than Python's parser goes
        raise MessageError(TOO_DEEP.format(what="batch")) from None
    if not isinstance(data, dict) or not isinstance(data.get("events"), list):
        raise MessageError("batch must be an object with an 'events' list")
    if data.get("schema") != SCHEMA:
        raise MessageError(f"unsupported batch schema {data.get('schema')!r}")
    if len(data["events"]) > MAX_BATCH_EVENTS:
        raise MessageError(f"batch of {len(data['events'])} events exceeds {MAX_BATCH_EVENTS}")
    events: list[Event] = []
    rejected: list[tuple[int, str]] = []
    for i, item in enumerate(data["events"]):
        try:
            event = Event.from_json(item)
        except MessageError as exc:
            rejected.append((i, str(exc)))
            continue
        if event.site != site or event.gate != gate:
            rejected.append((i, f"event of {event.site}/{event.gate} sent on {site}/{gate}"))
            continue
        if now is not None and datetime.fromisoformat(event.at) > now + MAX_AHEAD:
            ahead_h = (datetime.fromisoformat(event.at) - now) / timedelta(hours=1)
            rejected.append(
                (
                    i,
                    f"event dated {event.at}, {ahead_h:.0f} h ahead of the collector's clock"
                    f" (at most {MAX_AHEAD / timedelta(hours=1):.0f} h): check the gate's"
                    " clock (`menwei gate clock`)",
                )
            )
            continue
        events.append(event)
    return DecodedBatch(events, rejected)


@dataclass(frozen=True)
class Ack:
    gate: str
    acked_seq: int  # every seq <= this of this epoch is committed at the collector
    epoch: str = ""
    uuid: str | None = None
    """The uuid of the event the collector holds at `acked_seq` (None for 0, and from
    collectors before it was added): a gate whose own event there differs lost history."""

    def encode(self) -> bytes:
        return json.dumps(
            {
                "schema": SCHEMA,
                "gate": self.gate,
                "acked_seq": self.acked_seq,
                "epoch": self.epoch,
                "uuid": self.uuid,
            }
        ).encode()

    @classmethod
    def decode(cls, raw: bytes) -> Ack:
        try:
            data = json.loads(raw)
            if not isinstance(data, Mapping):
                raise ValueError("ack must be a JSON object")
            ack = cls(
                gate=_str(data, "gate"),
                acked_seq=_int(data, "acked_seq"),
                epoch=_epoch(data),
                uuid=_opt(data, "uuid", str),
            )
        except ValueError as exc:  # a strict parse: 1e999, "3" or true are not a seq
            raise MessageError(f"bad ack: {exc}") from None
        except RecursionError:
            raise MessageError(TOO_DEEP.format(what="ack")) from None
        if not 0 <= ack.acked_seq <= MAX_SEQ:
            raise MessageError(f"acked_seq must be 0..{MAX_SEQ}")
        return ack


def encode_status(status: Mapping[str, Any]) -> bytes:
    return json.dumps({"schema": SCHEMA, **status}, ensure_ascii=False).encode()


def decode_status(raw: bytes) -> dict[str, Any]:
    """Parse a gate's retained status (topic menwei/{site}/{gate}/status).

    An object with `state` online|offline (a Last Will carries little more); every other
    field of STATUS_FIELDS is optional but, when present, of its shape there. Unknown fields
    are kept (newer gates report more). Raises MessageError naming each ill-shaped field."""
    try:
        data = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as exc:
        raise MessageError(f"status is not JSON: {exc}") from None
    except RecursionError:
        raise MessageError(TOO_DEEP.format(what="status")) from None
    if not isinstance(data, dict) or data.get("state") not in STATUS_STATES:
        raise MessageError("status must be an object with state online|offline")
    if too_deep(data):  # kept as it came, and read back by the dashboard's recursive code
        raise MessageError(f"status nests objects or lists deeper than {MAX_DETAIL_DEPTH} levels")
    problems = [
        f"field {key!r} must be {what}"
        for key, (fits, what) in STATUS_FIELDS.items()
        if key in data and not fits(data[key])
    ]
    if problems:
        raise MessageError(f"bad status: {'; '.join(problems)}")
    return data


def readable_status(data: object) -> dict[str, Any]:
    """A stored status for readers: the fields of STATUS_FIELDS that are not of their shape
    are left out (statuses stored before decode_status checked shapes), {} when `data` is
    not an object. Unknown fields are kept as they are."""
    if not isinstance(data, Mapping):
        return {}
    return {
        str(key): value
        for key, value in data.items()
        if key not in STATUS_FIELDS or STATUS_FIELDS[key][0](value)
    }


def _is_count(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= MAX_SEQ


def _is_number(value: object) -> TypeGuard[int | float]:
    # json.loads reads NaN and Infinity: they are numbers to Python, not an age
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def _is_time_in_range(value: object) -> bool:
    return is_time(value) and in_range(datetime.fromisoformat(str(value)))


def _is_versions(value: object) -> bool:
    return isinstance(value, Mapping) and all(
        isinstance(k, str) and _is_count(v) for k, v in value.items()
    )


def _or_null(fits: Callable[[object], bool]) -> Callable[[object], bool]:
    return lambda value: value is None or fits(value)


STATUS_STATES = ("online", "offline")
STATUS_FIELDS: dict[str, tuple[Callable[[object], bool], str]] = {
    "state": (lambda v: v in STATUS_STATES, "online or offline"),
    "gate": (lambda v: isinstance(v, str), "a string"),
    "site": (lambda v: isinstance(v, str), "a string"),
    "direction": (_or_null(lambda v: isinstance(v, str)), "a string or null"),
    "at": (_is_time_in_range, "an ISO-8601 time with a UTC offset in years 2000..2100"),
    "backlog": (_is_count, f"a whole number 0..{MAX_SEQ}"),
    "last_seq": (_is_count, f"a whole number 0..{MAX_SEQ}"),
    "acked_seq": (_is_count, f"a whole number 0..{MAX_SEQ}"),
    "versions": (_is_versions, f"an object of names to whole numbers 0..{MAX_SEQ}"),
    "clock": (lambda v: isinstance(v, Mapping), "an object"),
    "camera": (lambda v: isinstance(v, Mapping), "an object"),
    "data_age_h": (_or_null(_is_number), "a finite number or null"),
    "data_as_of": (
        _or_null(_is_time_in_range),
        "an ISO-8601 time with a UTC offset in years 2000..2100, or null",
    ),
    "max_data_age_h": (lambda v: _is_number(v) and v > 0, "a number > 0"),
    "freshness": (_or_null(lambda v: isinstance(v, Mapping)), "an object or null"),
    "storage": (_or_null(lambda v: isinstance(v, Mapping)), "an object or null"),
}
"""The fields of a gate status the server reads, each with its test and what it must be."""


MAX_PASSAGES = 500
"""Passages in one relayed message (the batch form): about 200 bytes each, far below what
a gate or the broker takes."""


@dataclass(frozen=True)
class Passage:
    """An accepted passage, relayed by the collector to the other gates of the site so that
    household counters and who-is-outside agree across gates."""

    site: str
    gate: str
    uuid: str
    at: str
    pass_id: int
    household: str
    role: str
    direction: str

    def to_json(self) -> dict[str, Any]:
        return {
            "site": self.site,
            "gate": self.gate,
            "uuid": self.uuid,
            "at": self.at,
            "pass_id": self.pass_id,
            "household": self.household,
            "role": self.role,
            "direction": self.direction,
        }

    def encode(self) -> bytes:
        """The single form, `{"schema": 1, "site", "gate", …}` (collectors before the batch
        form sent only this; gates still accept it)."""
        return json.dumps({"schema": SCHEMA, **self.to_json()}, ensure_ascii=False).encode()

    @classmethod
    def from_event(cls, e: Event) -> Passage | None:
        """The passage an event stands for, if it is an accepted pass decision."""
        if (
            e.kind != "decision"
            or e.decision != "allow"
            or e.pass_id is None
            or e.household is None
            or e.direction is None
        ):
            return None
        return cls(
            e.site, e.gate, e.uuid, e.at, e.pass_id, e.household, e.role or "resident", e.direction
        )

    @classmethod
    def decode(cls, raw: bytes) -> Passage:
        """One passage in the single form. Raises MessageError."""
        return cls.from_json(_schema_object(raw, "passage"))

    @classmethod
    def from_json(cls, data: object) -> Passage:
        """One passage object (its fields; `schema` is the message's). Raises MessageError."""
        try:
            if not isinstance(data, Mapping):
                raise ValueError("a passage must be a JSON object")
            p = cls(
                site=_slug(data, "site"),
                gate=_slug(data, "gate"),
                uuid=_match(data, "uuid", UUID_RE, "up to 64 letters, digits and '-' (a UUID)"),
                at=_at(data),
                pass_id=_int(data, "pass_id"),
                household=str(_household(data)),
                role=str(_role(data)),
                direction=_str(data, "direction"),
            )
        except ValueError as exc:
            raise MessageError(f"bad passage: {exc}") from None
        if p.direction not in DIRECTIONS:
            raise MessageError(f"bad passage direction {p.direction!r}")
        return p


def _schema_object(raw: bytes, what: str) -> dict[str, Any]:
    """`raw` as a JSON object of schema 1. Raises MessageError naming `what`."""
    try:
        data = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as exc:
        raise MessageError(f"bad {what}: {exc}") from None
    except RecursionError:
        raise MessageError(TOO_DEEP.format(what=what)) from None
    if not isinstance(data, dict) or data.get("schema") != SCHEMA:
        raise MessageError(f"bad {what}: not a schema 1 {what}")
    return data


def encode_passages(passages: Sequence[Passage]) -> bytes:
    """The batch form of relayed passages: `{"schema": 1, "passages": [{…}, …]}`, at most
    MAX_PASSAGES (the caller splits longer runs)."""
    if len(passages) > MAX_PASSAGES:
        raise ValueError(f"{len(passages)} passages in one message: at most {MAX_PASSAGES}")
    return json.dumps(
        {"schema": SCHEMA, "passages": [p.to_json() for p in passages]}, ensure_ascii=False
    ).encode()


def decode_passages(raw: bytes) -> tuple[list[Passage], list[str]]:
    """A message of `menwei/{site}/passages`, in the batch form (`encode_passages`) or the
    single form (`Passage.encode`). Returns the good passages in message order and a reason
    for each bad one (a bad passage never spoils the others). Raises MessageError when the
    message is neither form."""
    data = _schema_object(raw, "passage message")
    items = data.get("passages")
    if items is None:
        return [Passage.from_json(data)], []
    if not isinstance(items, list) or len(items) > MAX_PASSAGES:
        raise MessageError(
            f"bad passage message: 'passages' must be a list of at most {MAX_PASSAGES}"
        )
    good: list[Passage] = []
    bad: list[str] = []
    for i, item in enumerate(items):
        try:
            good.append(Passage.from_json(item))
        except MessageError as exc:
            bad.append(f"passage {i}: {exc}")
    return good, bad
