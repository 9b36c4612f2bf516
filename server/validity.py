"""Validity dates as operators type them and as people read them.

Typed (`menwei pass issue --valid-from/--valid-until`, the dashboard): a bare date
(`2026-12-31`, any ISO-8601 date form) names a whole local day of the site (`[server]
timezone`). As the first day of a pass it means that day's first instant; as the last day, the
pass runs to the first instant of the next day, so the whole day is included. A full ISO time
(`2026-12-31T18:00`, site local time unless it carries an offset) is exact.

Kept: the pass holds exact instants, its end exclusive (protocol/passes.py); a gate lets it
through while `valid_from <= now < valid_until`. Nothing about days reaches the gate.

Read (the card, the dashboard, `pass issue` output): an end at the first instant of a local day
reads as the day before, the last valid day (`2026-12-31`); an end during a day reads as the
local time it ends, to the minute (`2026-12-01 18:30`). Starts read the same way: a date when
the pass starts as a day starts, else the time.

A day's first instant comes from zoneinfo, so days of 23 or 25 hours (DST) begin and end
where the local calendar says, and a midnight that a DST jump skips begins at the jump.
"""

from __future__ import annotations

from datetime import UTC, date, datetime, time, timedelta, tzinfo


def day_start(day: date, tz: tzinfo) -> datetime:
    """The first instant of local `day` in `tz`, aware, in `tz`.

    A wall-clock midnight inside a DST gap (fold 0 takes the offset before the jump) is the
    instant of the jump; the round trip through a timestamp names it as clocks then show it."""
    wall = datetime.combine(day, time()).replace(tzinfo=tz)
    return datetime.fromtimestamp(wall.timestamp(), tz)


def read_time(text: str, tz: tzinfo, *, end: bool = False) -> datetime:
    """An operator's date or time as an aware instant.

    `text`: a bare ISO date → the first instant of that local day, or with `end` of the next
    day (the pass includes the whole named day; the end is exclusive); an ISO-8601 time →
    exactly that, in `tz` when it has no offset.
    Raises ValueError with a message for people: not a date or time, or out of range."""
    text = text.strip()
    try:
        day = date.fromisoformat(text)
    except ValueError:
        pass
    else:
        try:
            return day_start(day + timedelta(days=1) if end else day, tz)
        except (OverflowError, ValueError):
            raise ValueError(f"{text!r} is out of range") from None
    try:
        t = datetime.fromisoformat(text)
    except ValueError:
        raise ValueError(f"{text!r} is not a date (YYYY-MM-DD) or ISO-8601 time") from None
    return t if t.tzinfo else t.replace(tzinfo=tz)


def starts_a_day(instant: datetime, tz: tzinfo) -> bool:
    """Whether `instant` (aware) is the first instant of a local day in `tz`."""
    return instant.timestamp() == day_start(instant.astimezone(tz).date(), tz).timestamp()


def last_valid_day(valid_until: datetime, tz: tzinfo) -> date:
    """The last local day on which a pass is valid at all: the day of its last second (pass
    times are whole seconds, the end exclusive)."""
    # In UTC: arithmetic on a zoned datetime moves its wall clock, which DST gaps break.
    return (valid_until.astimezone(UTC) - timedelta(seconds=1)).astimezone(tz).date()


def from_text(valid_from: datetime, tz: tzinfo) -> str:
    """The start as people read it: `2026-12-01` when the pass starts as that local day
    starts, else `2026-12-01 08:30` (local)."""
    if starts_a_day(valid_from, tz):
        return valid_from.astimezone(tz).date().isoformat()
    return f"{valid_from.astimezone(tz):%Y-%m-%d %H:%M}"


def until_text(valid_until: datetime, tz: tzinfo, today: date | None = None) -> str:
    """The end as people read it: the last valid day (`2026-12-31`) when the pass ends as a
    local day ends, else the local time it ends (`2026-12-01 18:30`, valid before it; only
    `18:30` when that is on `today`)."""
    if starts_a_day(valid_until, tz):
        return last_valid_day(valid_until, tz).isoformat()
    local = valid_until.astimezone(tz)
    return f"{local:%H:%M}" if local.date() == today else f"{local:%Y-%m-%d %H:%M}"


def local_text(instant: datetime, tz: tzinfo) -> str:
    """`instant` as the site's clocks show it, to the minute (`2026-12-05 08:30`), with the
    seconds when it has some; its ISO text when it has no local time (year 9999 overflows)."""
    try:
        local = instant.astimezone(tz)
    except OverflowError:
        return instant.isoformat()
    return f"{local:%Y-%m-%d %H:%M:%S}" if local.second else f"{local:%Y-%m-%d %H:%M}"


def typed_text(instant: datetime, tz: tzinfo, *, end: bool = False) -> str:
    """A validity bound in a message to the operator, in the words they typed it: a start at
    the beginning of a day as that day (`2026-12-05`); an `end` at the beginning of a day as
    the last valid day and the instant it ends (`2026-12-04 (the whole day, ends 2026-12-05
    00:00)`); any other instant as local_text. Never raises."""
    try:
        if starts_a_day(instant, tz):
            if not end:
                return instant.astimezone(tz).date().isoformat()
            day = last_valid_day(instant, tz)
            return f"{day.isoformat()} (the whole day, ends {local_text(instant, tz)})"
    except (OverflowError, ValueError):
        return instant.isoformat()
    return local_text(instant, tz)


def window_json(valid_from: datetime, valid_until: datetime, tz: tzinfo) -> dict[str, str]:
    """The validity fields of `pass issue --json` and `visitor register --json`:
    `valid_from`, `valid_until` (exact ISO-8601 instants, the end exclusive), `valid_through`
    (the end as the card prints it, see until_text) and `last_valid_day` (YYYY-MM-DD, local,
    inclusive)."""
    return {
        "valid_from": valid_from.isoformat(),
        "valid_until": valid_until.isoformat(),
        "valid_through": until_text(valid_until, tz),
        "last_valid_day": last_valid_day(valid_until, tz).isoformat(),
    }
