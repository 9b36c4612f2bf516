"""The site policy that gates apply: a strict, versioned document, and its calendar.

It travels inside the signed config document (`documents`). Unknown keys are
errors, so a typo in the server's `[policy]` table is caught before rollout.
The calendar functions (local day, outing windows, auto-return) are pure:
the gate's decision core and the collector's conflict check use the same ones.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from datetime import date, datetime, time, timedelta
from functools import cache
from typing import Annotated, Any, Literal
from zoneinfo import ZoneInfo, available_timezones

from protocol.errors import ProtocolError
from protocol.schema import Range, check_ranges, from_mapping

_CLOCK_RE = re.compile(r"^([01]\d|2[0-3]):([0-5]\d)$")
_WINDOW_RE = re.compile(r"^([01]\d|2[0-4]):([0-5]\d)-([01]\d|2[0-4]):([0-5]\d)$")


NOT_SITE_ZONES = {
    "localtime": "each machine's own system zone (Debian links it to /etc/localtime),"
    " so the server and every gate could each read a different one",
    "posixrules": "a default for POSIX TZ strings, not a place",
    "Factory": "the tz database's 'zone not set', not a place",
}
"""Names zoneinfo finds that are no place's time, and why."""


@cache
def _site_zones() -> frozenset[str]:
    # available_timezones() scans the zoneinfo directories: once per process
    return frozenset(available_timezones() - NOT_SITE_ZONES.keys())


def check_timezone(name: str) -> None:
    """`name` must be an IANA zone name (e.g. "Asia/Shanghai", "UTC"), exactly as spelled in
    the tz database, that zoneinfo has here, and not one of NOT_SITE_ZONES. Raises
    ProtocolError naming it."""
    if name in NOT_SITE_ZONES:
        raise ProtocolError(
            f"timezone {name!r} is {NOT_SITE_ZONES[name]}: use the site's IANA zone name,"
            " such as 'Asia/Shanghai'"
        )
    if name not in _site_zones():
        raise ProtocolError(
            f"unknown timezone {name!r}: use an IANA name such as 'Asia/Shanghai' or 'UTC'"
        )


def parse_clock(text: str, what: str) -> time:
    m = _CLOCK_RE.match(text)
    if not m:
        raise ProtocolError(f"{what} {text!r} must be HH:MM (00:00-23:59)")
    return time(int(m[1]), int(m[2]))


def parse_window(text: str) -> tuple[int, int]:
    """'06:00-20:00' → (360, 1200) minutes after local midnight; end may be 24:00."""
    m = _WINDOW_RE.match(text)
    if not m:
        raise ProtocolError(f"outing window {text!r} must be HH:MM-HH:MM, e.g. 06:00-20:00")
    start, end = int(m[1]) * 60 + int(m[2]), int(m[3]) * 60 + int(m[4])
    if not start < end <= 24 * 60:
        raise ProtocolError(f"outing window {text!r}: start must be before end, same day")
    return start, end


@dataclass(frozen=True)
class Policy:
    fever_threshold_c: Annotated[float, Range(34, 42, "°C")] = 37.3
    """At or above: re-measure once, then deny with `fever` (or allow and alert, soft)."""
    fever_mode: Literal["hard", "soft"] = "hard"
    """hard: a confirmed fever is refused entry; soft: allowed in, alerted and flagged."""
    fever_recheck_window_s: Annotated[int, Range(10, 3600, "s")] = 300
    """A second high reading within this many seconds of the first confirms the fever."""
    household_max_out: Annotated[int, Range(0, 100)] = 1
    """Members of one household outside at once (0 = no limit). Staff and visitors exempt."""
    household_max_exits_per_day: Annotated[int, Range(0, 100)] = 2
    """Exits per household per day (0 = no limit)."""
    day_starts_at: str = "04:00"
    """Local time at which daily counters start again."""
    outing_windows: tuple[str, ...] = ("06:00-20:00",)
    """Exits only inside these local-time windows (entries are always allowed)."""
    outing_scheme: Literal["daily", "odd_even"] = "daily"
    """odd_even: a household whose id ends in an odd digit goes out on odd dates, even on even."""
    outing_weekdays: tuple[int, ...] = ()
    """Weekdays exits are allowed, 1 = Monday .. 7 = Sunday; empty = every day."""
    anti_passback: Literal["hard", "soft", "off"] = "hard"
    """A pass that is out cannot exit again before it came back in (soft: allow and flag)."""
    auto_return_at: str = "03:00"
    """Local time at which everyone counts as inside again (missed scans heal overnight)."""
    timezone: str = "Asia/Shanghai"
    max_data_age_h: Annotated[float, Range(0.1, 720, "h")] = 24.0
    """Register/policy older than this (hours): the guard confirms every passage."""
    passes_per_household_max: Annotated[int, Range(1, 50)] = 4
    """Passes a household may hold at once; enforced when a pass is issued."""

    def __post_init__(self) -> None:
        try:  # also when built in code, not only from a table (from_mapping checks those)
            check_ranges(Policy, vars(self))
        except ValueError as exc:
            raise ProtocolError(str(exc)) from None
        parse_clock(self.day_starts_at, "day_starts_at")
        parse_clock(self.auto_return_at, "auto_return_at")
        for window in self.outing_windows:
            parse_window(window)
        if any(not 1 <= d <= 7 for d in self.outing_weekdays):
            raise ProtocolError("outing_weekdays are 1 (Monday) .. 7 (Sunday)")
        check_timezone(self.timezone)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: Mapping[str, Any], where: str = "policy") -> Policy:
        return from_mapping(cls, data, where)

    # --- the calendar (pure) -------------------------------------------------------------

    @property
    def tz(self) -> ZoneInfo:
        return ZoneInfo(self.timezone)

    def local(self, now: datetime) -> datetime:
        return now.astimezone(self.tz)

    def day_of(self, now: datetime) -> date:
        """The counting day of `now`: it starts at `day_starts_at` local time."""
        start = parse_clock(self.day_starts_at, "day_starts_at")
        return (self.local(now) - timedelta(hours=start.hour, minutes=start.minute)).date()

    def last_auto_return(self, now: datetime) -> datetime:
        """The latest `auto_return_at` moment at or before `now`."""
        at = parse_clock(self.auto_return_at, "auto_return_at")
        local = self.local(now)
        moment = datetime.combine(local.date(), at, self.tz)
        return moment if moment <= local else moment - timedelta(days=1)

    def may_go_out(self, now: datetime, household: str) -> bool:
        """Is `now` inside the outing windows and day scheme for `household`?"""
        local = self.local(now)
        if self.outing_weekdays and local.isoweekday() not in self.outing_weekdays:
            return False
        if self.outing_scheme == "odd_even":
            digits = [c for c in household if c.isdigit()]
            if not digits or int(digits[-1]) % 2 != local.day % 2:
                return False
        minute = local.hour * 60 + local.minute
        return any(s <= minute < e for s, e in map(parse_window, self.outing_windows))
