"""The site policy that gates apply: a strict, versioned document.

It travels inside the signed config document (`documents`). Unknown keys are
errors, so a typo in the server's `[policy]` table is caught before rollout.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any

from protocol.errors import ProtocolError
from protocol.schema import from_mapping


@dataclass(frozen=True)
class Policy:
    fever_threshold_c: float = 37.3
    """At or above: re-measure once, then deny with `fever`."""
    fever_recheck_window_s: int = 300
    """A second high reading within this many seconds of the first denies entry."""
    max_data_age_h: float = 24.0
    """Register/policy older than this (hours): the guard confirms every passage."""

    def __post_init__(self) -> None:
        if not 34.0 <= self.fever_threshold_c <= 42.0:
            raise ProtocolError("fever_threshold_c must be between 34.0 and 42.0 °C")
        if not 10 <= self.fever_recheck_window_s <= 3600:
            raise ProtocolError("fever_recheck_window_s must be 10..3600 seconds")
        if not 0 < self.max_data_age_h <= 24 * 30:
            raise ProtocolError("max_data_age_h must be > 0 and at most 720 hours")

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: Mapping[str, Any], where: str = "policy") -> Policy:
        return from_mapping(cls, data, where)
