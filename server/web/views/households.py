"""Households: search by room or name; members, passes, who is out, today's quota, quarantine.

Households may be known from the imported register (with their place) or only
from the passes issued to them; both are found. Viewers see masked names and
phone numbers; operators and admins see the register as it is.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response
from starlette.routing import Route

from protocol.errors import ProtocolError
from protocol.register import mask_name
from server.storage import dashboard as stored
from server.validity import from_text, until_text
from server.web import figures
from server.web.auth import checked_form, require
from server.web.dashboard import Dashboard, dashboard_of

LIMIT = 50
RECENT = 20  # the household's newest passages and denials shown
RECENT_KINDS = ("decision", "override")


def routes() -> list[Route]:
    return [
        Route("/households", search_page),
        Route("/households/{household}", detail_page),
        Route("/households/{household}/quarantine", quarantine, methods=["POST"]),
    ]


def search(d: Dashboard, query: str) -> list[dict[str, Any]]:
    with d.store.read() as tx:
        return stored.search_households(tx, query, LIMIT)


def search_page(request: Request) -> Response:
    session = require(request)
    d = dashboard_of(request)
    query = request.query_params.get("q", "").strip()[:100]
    results = search(d, query) if query else search(d, "")
    return d.pages.render(request, "households.html", session, query=query, results=results)


def mask_phone(phone: str) -> str:
    return phone[:3] + "****" + phone[-4:] if len(phone) >= 8 else "****"


def pass_state(row: dict[str, Any], now: float) -> str:
    """A pass's state at `now` (Unix seconds), as the gate judges its window: `revoked`,
    `not_yet_valid` (it starts after now), `expired` (its exclusive end is past) or `active`.
    `row`: a passes row (`revoked_at`, `valid_from`/`valid_until` in Unix seconds)."""
    if row["revoked_at"]:
        return "revoked"
    if now < row["valid_from"]:
        return "not_yet_valid"
    if now >= row["valid_until"]:
        return "expired"
    return "active"


def detail(d: Dashboard, household: str, full: bool) -> dict[str, Any]:
    policy = d.policy
    span = figures.day_span(policy, figures.today(policy))
    with d.store.read() as tx:
        place = stored.household_place(tx, household)
        passes = stored.household_passes(tx, household)
        members = stored.household_members(tx, household)
        outside = figures.outside(tx, policy, datetime.now(UTC))
        exits_today = figures.household_exits(tx, household, span)
        recent = stored.household_events(tx, household, RECENT_KINDS, RECENT)
    if not place and not passes and not members:
        raise HTTPException(404, "error.not_found")
    tz = d.site.config.tz
    now = d.site.now().timestamp()
    for p in passes:
        p["state"] = pass_state(p, now)
        p["holder"] = p["name"] if full else mask_name(p["name"])
        p["from"] = from_text(datetime.fromtimestamp(p["valid_from"], tz), tz)
        p["until"] = until_text(datetime.fromtimestamp(p["valid_until"], tz), tz)
    for m in members:
        m["name"] = m["name"] if full else mask_name(m["name"])
        m["phone"] = m["phone"] if full else mask_phone(m["phone"] or "")
    holder_of = {p["pass_id"]: p["holder"] for p in passes}
    out = [
        {**o, "holder": holder_of.get(o["pass_id"], str(o["pass_id"]))}
        for o in outside
        if o["household"] == household
    ]
    for r in recent:
        r["holder"] = holder_of.get(r["pass_id"], "")
    info = place or {}
    room = "-".join(
        x for x in (info.get("building"), info.get("unit"), info.get("room")) if x
    ) or next((p["room"] for p in passes if p["room"]), "")
    return {
        "household": household,
        "room": room,
        "grid": info.get("grid", ""),
        "quarantined": bool(info.get("quarantined")),
        "quarantine_until": info.get("quarantine_until"),
        "passes": passes,
        "members": members,
        "outside": out,
        "exits_today": exits_today,
        "exits_max": policy.household_max_exits_per_day,
        "out_max": policy.household_max_out,
        "recent": recent,
    }


def detail_page(request: Request) -> Response:
    session = require(request)
    d = dashboard_of(request)
    household = request.path_params["household"]
    return d.pages.render(
        request,
        "household.html",
        session,
        h=detail(d, household, full=session.operator.can("operator")),
        done=request.query_params.get("done"),
    )


async def quarantine(request: Request) -> Response:
    """Quarantine (action=on, optional `until` date) or release (action=off); audited."""
    session, form = await checked_form(request, "operator")
    d = dashboard_of(request)
    household = request.path_params["household"]
    on = form.get("action") == "on"
    until_text = str(form.get("until", "")).strip()

    def apply() -> None:
        until = d.site.parse_time(until_text) if on and until_text else None
        d.site.set_quarantine(household, until, on=on, by=session.operator.name, note="dashboard")

    try:
        await run_in_threadpool(apply)
    except (ProtocolError, ValueError) as exc:
        raise HTTPException(400, str(exc)) from None
    done = "quarantine" if on else "release"
    return RedirectResponse(f"/households/{household}?done={done}", status_code=303)
