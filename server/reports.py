"""Daily figures per grid and community, rolled up to street, district and the whole site.

A day is the policy's counting day: it starts at `day_starts_at` local time (04:00 by default),
so a 03:30 return belongs to the evening before. Events are attributed through their
household (or, for alerts, their pass) to the household's place in the register; events
without one (a forged pass, the exit button) count only in the site row.
"""

from __future__ import annotations

import csv
import io
from collections import Counter
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from typing import Any

from protocol.policy import parse_clock
from server.site import Site
from server.storage import reports as reports_db
from server.storage.times import instant_us

LEVELS = ("grid", "community", "street", "district", "site")
COLUMNS = (
    "date",
    "level",
    "district",
    "street",
    "community",
    "grid",
    "passages_in",
    "passages_out",
    "households_out",
    "denials",
    "fever_alerts",
    "outside_at_end",
)
# An accepted passage: a pass decision, an exit-button opening or a guard override (as the
# dashboard counts them, server/web/figures.PASSAGE).
PASSAGE_KINDS = ("decision", "exit_request", "override")


@dataclass
class _Figures:
    passages_in: int = 0
    passages_out: int = 0
    households_out: set[str] = field(default_factory=set)
    denials: Counter[str] = field(default_factory=Counter)
    fever_alerts: int = 0
    last_direction: dict[int, str] = field(default_factory=dict)  # pass id → in/out


def day_span(site: Site, day: date) -> tuple[datetime, datetime]:
    """The counting day's [start, end) as aware datetimes in the policy's timezone."""
    policy = site.published_policy().policy
    start = parse_clock(policy.day_starts_at, "day_starts_at")
    begin = datetime.combine(day, start, policy.tz)
    return begin, datetime.combine(day + timedelta(days=1), start, policy.tz)


def daily_report(site: Site, day: date) -> list[dict[str, Any]]:
    """One row per grid, community, street, district (when the register names them) and the
    site: passages in and out, distinct households out, denials (total and by reason), fever
    alerts, and people outside at the end of the day (their last passage of the day was out).
    """
    begin, end = day_span(site, day)
    with site.store.read() as tx:
        events = reports_db.placed_events(tx, instant_us(begin), instant_us(end))
    groups: dict[tuple[str, ...], _Figures] = {}
    for e in events:
        for key in _keys(_place(e)):
            f = groups.setdefault(key, _Figures())
            if e.kind in PASSAGE_KINDS and e.decision == "allow" and e.direction in ("in", "out"):
                if e.direction == "in":
                    f.passages_in += 1
                else:
                    f.passages_out += 1
                    if e.household is not None:
                        f.households_out.add(e.household)
                if e.pass_id is not None:
                    f.last_direction[e.pass_id] = str(e.direction)
            elif e.kind == "decision" and e.decision == "deny":
                f.denials[e.reason] += 1
            elif e.kind == "alert" and e.reason == "fever":
                f.fever_alerts += 1
    groups.setdefault(("site",), _Figures())
    return [_row(day, key, groups[key]) for key in sorted(groups, key=_order)]


def _place(e: reports_db.PlacedEvent) -> tuple[str, str, str, str] | None:
    """(district, street, community, grid) of the event's household, None when it has none
    or the register does not hold it."""
    if e.household is None or e.district is None:
        return None
    return e.district, e.street or "", e.community or "", e.grid or ""


def _keys(place: tuple[str, str, str, str] | None) -> list[tuple[str, ...]]:
    """The groups an event counts in: its grid and community, street and district when named,
    and the site."""
    if place is None:
        return [("site",)]
    district, street, community, grid = place
    keys: list[tuple[str, ...]] = [
        ("grid", district, street, community, grid),
        ("community", district, street, community),
    ]
    if street:
        keys.append(("street", district, street))
    if district:
        keys.append(("district", district))
    return [*keys, ("site",)]


def _order(key: tuple[str, ...]) -> tuple[int, tuple[str, ...]]:
    return LEVELS.index(key[0]), key[1:]


def _row(day: date, key: tuple[str, ...], f: _Figures) -> dict[str, Any]:
    place = [*key[1:], "", "", "", ""][:4]
    return {
        "date": day.isoformat(),
        "level": key[0],
        "district": place[0],
        "street": place[1],
        "community": place[2],
        "grid": place[3],
        "passages_in": f.passages_in,
        "passages_out": f.passages_out,
        "households_out": len(f.households_out),
        "denials": sum(f.denials.values()),
        "denials_by_reason": dict(sorted(f.denials.items())),
        "fever_alerts": f.fever_alerts,
        "outside_at_end": sum(1 for d in f.last_direction.values() if d == "out"),
    }


def _table(rows: list[dict[str, Any]]) -> list[list[Any]]:
    """Header and rows, denials by reason as one column each (`denials:<reason>`)."""
    reasons = sorted({r for row in rows for r in row.get("denials_by_reason", {})})
    header = [*COLUMNS, *(f"denials:{r}" for r in reasons)]
    body = [
        [
            *(_cell(row[c]) for c in COLUMNS),
            *(row["denials_by_reason"].get(r, 0) for r in reasons),
        ]
        for row in rows
    ]
    return [header, *body]


def _cell(value: Any) -> Any:
    """Names come from an imported register: one that starts like a formula (=, +, -, @)
    would run as one when the export is opened in Excel, so it is written as text."""
    if isinstance(value, str) and value[:1] in ("=", "+", "-", "@", "\t", "\r"):
        return "'" + value
    return value


def to_csv(rows: list[dict[str, Any]]) -> bytes:
    """UTF-8 with a BOM: Excel opens it with the Chinese names intact."""
    out = io.StringIO(newline="")
    csv.writer(out).writerows(_table(rows))
    return out.getvalue().encode("utf-8-sig")


def to_xlsx(rows: list[dict[str, Any]]) -> bytes:
    import openpyxl

    book = openpyxl.Workbook()
    sheet = book.active
    sheet.title = "daily"
    for line in _table(rows):
        sheet.append(line)
    sheet.freeze_panes = "A2"
    out = io.BytesIO()
    book.save(out)
    return out.getvalue()
