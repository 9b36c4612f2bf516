"""The figures the dashboard shows: passages, denials, who is outside, per day, hour and gate.

Times in the store are the gates' wall times with their UTC offset; SQLite's
julianday() reads the offset, so every range here is compared in absolute time.
A "day" is the policy's counting day (it starts at `day_starts_at`, 04:00 by
default), the same day the gates count household quotas in.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from typing import Any

from protocol.policy import Policy, parse_clock
from server.web.reading import Reader

# An accepted passage: a pass decision, an exit-button opening or a guard override.
PASSAGE = (
    "decision = 'allow' AND direction IN ('in', 'out')"
    " AND kind IN ('decision', 'exit_request', 'override')"
)
DENIAL = "kind = 'decision' AND decision = 'deny'"


@dataclass(frozen=True)
class Span:
    start: datetime
    end: datetime

    @property
    def hours(self) -> int:
        return int((self.end - self.start).total_seconds() // 3600)

    def params(self) -> list[str]:
        return [self.start.isoformat(), self.end.isoformat()]


def day_span(policy: Policy, day: date) -> Span:
    start = datetime.combine(day, parse_clock(policy.day_starts_at, "day_starts_at"), policy.tz)
    return Span(start, start + timedelta(days=1))


def today(policy: Policy, now: datetime | None = None) -> date:
    return policy.day_of(now or datetime.now(UTC))


def week_span(policy: Policy, day: date) -> Span:
    return Span(day_span(policy, day - timedelta(days=6)).start, day_span(policy, day).end)


_IN_SPAN = "julianday(at) >= julianday(?) AND julianday(at) < julianday(?)"


def passages(reader: Reader, span: Span) -> dict[str, int]:
    rows = reader.rows(
        f"SELECT direction, COUNT(*) FROM events WHERE {PASSAGE} AND {_IN_SPAN} GROUP BY direction",
        span.params(),
    )
    counts = {"in": 0, "out": 0}
    counts.update({str(d): int(n) for d, n in rows})
    return counts


def denials(reader: Reader, span: Span) -> list[tuple[str, int]]:
    rows = reader.rows(
        f"SELECT reason, COUNT(*) AS n FROM events WHERE {DENIAL} AND {_IN_SPAN}"
        " GROUP BY reason ORDER BY n DESC, reason",
        span.params(),
    )
    return [(str(r), int(n)) for r, n in rows]


def hourly(reader: Reader, span: Span) -> list[dict[str, int]]:
    """Accepted passages per hour of `span`, in and out, one dict per hour."""
    bins = [{"in": 0, "out": 0} for _ in range(span.hours)]
    rows = reader.rows(
        # julianday() is a float: an event at exactly 05:00:00 is 0.99999… hours after 04:00.
        # Whole milliseconds first (rounded), then hours, so it lands in its own hour.
        "SELECT CAST(ROUND((julianday(at) - julianday(?)) * 86400000) AS INTEGER) / 3600000 AS h,"
        " direction, COUNT(*)"
        f" FROM events WHERE {PASSAGE} AND {_IN_SPAN} GROUP BY h, direction",
        [span.start.isoformat(), *span.params()],
    )
    for h, direction, n in rows:
        if 0 <= int(h) < len(bins):
            bins[int(h)][str(direction)] = int(n)
    return bins


def per_gate(reader: Reader, span: Span) -> list[dict[str, Any]]:
    rows = reader.rows(
        "SELECT gate,"
        f" SUM({PASSAGE} AND direction = 'in'), SUM({PASSAGE} AND direction = 'out'),"
        f" SUM({DENIAL}) FROM events WHERE {_IN_SPAN} GROUP BY gate ORDER BY gate",
        span.params(),
    )
    return [
        {"gate": g, "in": int(i or 0), "out": int(o or 0), "deny": int(d or 0)}
        for g, i, o, d in rows
    ]


def outside(reader: Reader, policy: Policy, now: datetime | None = None) -> list[dict[str, Any]]:
    """Pass holders whose last accepted passage since the nightly auto-return was out."""
    since = policy.last_auto_return(now or datetime.now(UTC))
    return reader.dicts(
        "SELECT pass_id, household, at FROM ("
        "  SELECT pass_id, household, direction, at, ROW_NUMBER() OVER ("
        "   PARTITION BY pass_id ORDER BY julianday(at) DESC, seq DESC) AS k"
        f"  FROM events WHERE {PASSAGE} AND pass_id IS NOT NULL"
        "  AND julianday(at) >= julianday(?)"
        ") WHERE k = 1 AND direction = 'out' ORDER BY household, pass_id",
        [since.isoformat()],
    )


def household_exits(reader: Reader, household: str, span: Span) -> int:
    row = reader.one(
        f"SELECT COUNT(*) FROM events WHERE {PASSAGE} AND direction = 'out' AND household = ?"
        " AND COALESCE(json_extract(body, '$.role'), 'resident') NOT IN ('staff', 'visitor')"
        f" AND {_IN_SPAN}",
        [household, *span.params()],
    )
    return int(row[0]) if row else 0
