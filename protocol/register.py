"""The register as gates see it: passes with masked display data, and revocations.

Gates hold pseudonymous ids plus masked display names only (DESIGN.md,
privacy): full names and phone numbers stay on the server.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from protocol.errors import ProtocolError


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
