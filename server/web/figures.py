"""The figures the dashboard shows: passages, denials, who is outside, per day, hour and gate.

Times in the store are the gates' wall times with their UTC offset, and beside them the
same instants in µs UTC (server/storage/times.py), which every range here is compared in.
A "day" is the policy's counting day (it starts at `day_starts_at`, 04:00 by
default), the same day the gates count household quotas in. Each function reads in the
caller's transaction (`store.read()`), so one page's figures agree with one another.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from typing import Any

from protocol.policy import Policy, parse_clock
from server.storage import Tx
from server.storage import dashboard as stored
from server.storage.times import instant_us


@dataclass(frozen=True)
class Span:
    start: datetime
    end: datetime

    @property
    def hours(self) -> int:
        return int((self.end - self.start).total_seconds() // 3600)

    def us(self) -> tuple[int, int]:
        """`[start, end)` in µs since the epoch, UTC."""
        return instant_us(self.start), instant_us(self.end)


def day_span(policy: Policy, day: date) -> Span:
    start = datetime.combine(day, parse_clock(policy.day_starts_at, "day_starts_at"), policy.tz)
    return Span(start, start + timedelta(days=1))


def today(policy: Policy, now: datetime | None = None) -> date:
    return policy.day_of(now or datetime.now(UTC))


def week_span(policy: Policy, day: date) -> Span:
    return Span(day_span(policy, day - timedelta(days=6)).start, day_span(policy, day).end)


def passages(tx: Tx, span: Span) -> dict[str, int]:
    """Accepted passages in `span`: {"in": n, "out": n}."""
    return stored.passages(tx, *span.us())


def denials(tx: Tx, span: Span) -> list[tuple[str, int]]:
    """Denied pass decisions in `span` per reason code, most frequent first."""
    return stored.denials(tx, *span.us())


def hourly(tx: Tx, span: Span) -> list[dict[str, int]]:
    """Accepted passages per hour of `span`, in and out, one dict per hour. An event at
    exactly 05:00:00 is in the hour that starts then (whole µs, no float rounding)."""
    bins = [{"in": 0, "out": 0} for _ in range(span.hours)]
    for h, direction, n in stored.passages_per_hour(tx, *span.us()):
        if 0 <= h < len(bins):
            bins[h][direction] = n
    return bins


def per_gate(tx: Tx, span: Span) -> list[dict[str, Any]]:
    """Per gate seen in `span`: {"gate", "in", "out", "deny"}."""
    return stored.per_gate(tx, *span.us())


def outside(tx: Tx, policy: Policy, now: datetime | None = None) -> list[dict[str, Any]]:
    """Pass holders whose last accepted passage since the nightly auto-return was out:
    {"pass_id", "household", "at"}."""
    since = policy.last_auto_return(now or datetime.now(UTC))
    return stored.outside(tx, instant_us(since))


def household_exits(tx: Tx, household: str, span: Span) -> int:
    """Exits of `household`'s residents in `span` (what its daily quota counts)."""
    return stored.household_exits(tx, household, *span.us())
