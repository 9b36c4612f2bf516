"""The register as gates see it: passes with masked display data, and revocations.

Gates hold pseudonymous ids plus masked display names only (DESIGN.md,
privacy): full names and phone numbers stay on the server.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, TypeVar

from protocol.errors import ProtocolError

K = TypeVar("K")
V = TypeVar("V")


def mask_name(name: str) -> str:
    """张三丰 → 张*丰, 李四 → 李*, Alice → A***e: enough for a guard to recognise, no more."""
    name = name.strip()
    if len(name) <= 1:
        return name
    if len(name) == 2:
        return name[0] + "*"
    return name[0] + "*" * (len(name) - 2) + name[-1]


@dataclass(frozen=True)
class PassEntry:
    pass_id: int
    household: str
    display_name: str  # masked
    room: str
    role: str


@dataclass(frozen=True)
class Register:
    passes: Mapping[int, PassEntry]
    revoked: Mapping[int, str]  # pass id → reason
    quarantine: Mapping[str, datetime | None] = field(default_factory=dict)
    """Households under home quarantine → until when (None: until released)."""

    def quarantined(self, household: str, now: datetime) -> bool:
        if household not in self.quarantine:
            return False
        until = self.quarantine[household]
        return until is None or now < until

    def to_json(self) -> dict[str, Any]:
        return {
            "passes": [vars(p) for p in sorted(self.passes.values(), key=lambda p: p.pass_id)],
            "revoked": [{"pass_id": k, "reason": v} for k, v in sorted(self.revoked.items())],
            "quarantine": [
                {"household": h, "until": None if u is None else u.isoformat()}
                for h, u in sorted(self.quarantine.items())
            ],
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Register:
        try:
            passes = {
                int(p["pass_id"]): PassEntry(
                    int(p["pass_id"]),
                    str(p["household"]),
                    str(p["display_name"]),
                    str(p.get("room", "")),
                    str(p.get("role", "resident")),
                )
                for p in data.get("passes", [])
            }
            revoked = {int(r["pass_id"]): str(r.get("reason", "")) for r in data.get("revoked", [])}
            quarantine = {
                str(q["household"]): None
                if q.get("until") is None
                else datetime.fromisoformat(str(q["until"]))
                for q in data.get("quarantine", [])
            }
        except (KeyError, TypeError, ValueError) as exc:
            raise ProtocolError(f"bad register: {exc}") from None
        if any(u is not None and u.tzinfo is None for u in quarantine.values()):
            raise ProtocolError("bad register: quarantine 'until' needs a UTC offset")
        return cls(passes, revoked, quarantine)


EMPTY_REGISTER = Register({}, {})


@dataclass(frozen=True)
class RegisterDelta:
    """What changed from one register to another: for each of its tables (passes, revoked,
    quarantine) the entries put (new or changed, in `put`) and the keys dropped. Computed by
    `between`; `apply` to the first register gives the second."""

    put: Register = EMPTY_REGISTER
    dropped_passes: frozenset[int] = frozenset()
    dropped_revoked: frozenset[int] = frozenset()
    released: frozenset[str] = frozenset()
    """Households whose quarantine entry went."""

    @classmethod
    def between(cls, old: Register, new: Register) -> RegisterDelta:
        return cls(
            Register(
                _put(old.passes, new.passes),
                _put(old.revoked, new.revoked),
                _put(old.quarantine, new.quarantine),
            ),
            frozenset(old.passes.keys() - new.passes.keys()),
            frozenset(old.revoked.keys() - new.revoked.keys()),
            frozenset(old.quarantine.keys() - new.quarantine.keys()),
        )

    def apply(self, base: Register) -> Register:
        """`base` with what was dropped taken out and what was put in (replacing)."""
        return Register(
            _changed(base.passes, self.put.passes, self.dropped_passes),
            _changed(base.revoked, self.put.revoked, self.dropped_revoked),
            _changed(base.quarantine, self.put.quarantine, self.released),
        )

    def changes(self) -> int:
        """How many entries it puts or drops."""
        put = self.put
        return (
            len(put.passes)
            + len(put.revoked)
            + len(put.quarantine)
            + sum(map(len, (self.dropped_passes, self.dropped_revoked, self.released)))
        )

    def to_json(self) -> dict[str, Any]:
        return {
            "put": self.put.to_json(),
            "dropped": {
                "passes": sorted(self.dropped_passes),
                "revoked": sorted(self.dropped_revoked),
                "quarantine": sorted(self.released),
            },
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> RegisterDelta:
        """Raises ProtocolError when `data` is not what to_json makes."""
        try:
            put = Register.from_json(data["put"])
            dropped = data["dropped"]
            passes = frozenset(_whole(i) for i in dropped["passes"])
            revoked = frozenset(_whole(i) for i in dropped["revoked"])
            released = frozenset(_text(h) for h in dropped["quarantine"])
        except (KeyError, TypeError) as exc:
            raise ProtocolError(f"bad register delta: {exc}") from None
        return cls(put, passes, revoked, released)


def _put(old: Mapping[K, V], new: Mapping[K, V]) -> dict[K, V]:
    """The entries of `new` that `old` lacks or holds with another value."""
    missing = object()
    return {k: v for k, v in new.items() if old.get(k, missing) != v}


def _changed(table: Mapping[K, V], put: Mapping[K, V], gone: frozenset[K]) -> dict[K, V]:
    kept = {k: v for k, v in table.items() if k not in gone}
    kept.update(put)
    return kept


def _whole(value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{value!r} is not a pass id")
    return value


def _text(value: object) -> str:
    if not isinstance(value, str):
        raise TypeError(f"{value!r} is not a household id")
    return value
