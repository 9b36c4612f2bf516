"""Visitors (访客登记): the guard or an operator registers a visitor; the pass is shown large.

Registering is for operators and admins (it issues a pass, like quarantining a household).
Today's list shows viewers masked names and phone numbers, like the households pages;
operators see them as registered, since they are who calls a visitor back when a case is
traced. The pass page (its QR is a credential) is for operators only: the visitor photographs
the QR on the screen or takes the printout (print button, print stylesheet; no inline script).
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response
from starlette.routing import Route

from protocol.register import mask_name
from server.cards import qr_symbol
from server.register import place_label
from server.storage import dashboard as stored
from server.validity import from_text, until_text
from server.visitors import HOURS_DEFAULT, HOURS_MAX, VisitorError, VisitorStore, register_visitor
from server.web import figures
from server.web.auth import checked_form, require
from server.web.dashboard import Dashboard, dashboard_of
from server.web.views.households import mask_phone

FIELDS = ("name", "phone", "reason", "host", "temperature", "hours")
LIMIT = 500  # visitors listed on the page


def routes() -> list[Route]:
    return [
        Route("/visitors", visitors_page),
        Route("/visitors", register, methods=["POST"]),
        Route("/visitors/{visitor_id:int}", pass_page),
    ]


def today(d: Dashboard, full: bool) -> list[dict[str, Any]]:
    start = figures.day_span(d.policy, figures.today(d.policy)).start
    with d.store.read() as tx:
        rows = stored.visitors_since(tx, start, LIMIT)
    tz = d.site.config.tz
    now = datetime.now(tz)
    for r in rows:
        if not full:
            r["name"] = mask_name(r["name"])
            r["phone"] = mask_phone(r["phone"]) if r["phone"] else ""
        r["valid"] = r["revoked_at"] is None and r["valid_until"] > now.timestamp()
        # Today's list: an end today shows its time only, one on another day its date too.
        r["until"] = until_text(datetime.fromtimestamp(r["valid_until"], tz), tz, now.date())
    return rows


def _render(
    request: Request,
    status: int = 200,
    error: str | None = None,
    values: dict[str, str] | None = None,
) -> Response:
    session = require(request)
    d = dashboard_of(request)
    full = session.operator.can("operator")
    return d.pages.render(
        request,
        "visitors.html",
        session,
        status=status,
        visitors=today(d, full),
        error=error,
        values=values or {"hours": str(HOURS_DEFAULT)},
        hours_max=HOURS_MAX,
        threshold=d.policy.fever_threshold_c,
    )


def visitors_page(request: Request) -> Response:
    return _render(request)


async def register(request: Request) -> Response:
    session, form = await checked_form(request, "operator")
    d = dashboard_of(request)
    values = {k: str(form.get(k, "")).strip()[:200] for k in FIELDS}
    try:
        temperature = float(values["temperature"])
    except ValueError:
        return await run_in_threadpool(_render, request, 400, "visitor.err.temperature", values)
    try:
        hours = int(values["hours"] or HOURS_DEFAULT)
    except ValueError:
        return await run_in_threadpool(_render, request, 400, "visitor.err.hours", values)

    def apply() -> int:
        visitor, _ = register_visitor(
            d.site,
            values["name"],
            values["phone"],
            values["reason"],
            values["host"],
            temperature,
            hours,
            by=session.operator.name,
        )
        return visitor.id

    try:
        visitor_id = await run_in_threadpool(apply)
    except VisitorError as exc:
        return await run_in_threadpool(_render, request, 400, exc.key, values)
    return RedirectResponse(f"/visitors/{visitor_id}", status_code=303)


def pass_page(request: Request) -> Response:
    session = require(request, "operator")
    d = dashboard_of(request)
    visitor = VisitorStore(d.site.store).get(int(request.path_params["visitor_id"]))
    if visitor is None:
        raise HTTPException(404, "error.not_found")
    with d.store.read() as tx:
        card = stored.pass_card(tx, visitor.pass_id)
    host = d.site.registry.household(visitor.host_household)
    tz = d.site.config.tz
    now = datetime.now(tz).timestamp()
    valid = card is not None and card["revoked_at"] is None and card["valid_until"] > now
    return d.pages.render(
        request,
        "visitor_pass.html",
        session,
        v=visitor,
        display_name=mask_name(visitor.name) if visitor.name else "—",
        place=place_label(host.building, host.unit, host.room) if host else "",
        valid=valid,
        svg=qr_symbol(card["qr"]).svg_inline(scale=1, border=4, omitsize=True, svgclass="qr")
        if valid and card is not None
        else "",
        valid_from=from_text(datetime.fromtimestamp(card["valid_from"], tz), tz) if card else "",
        valid_until=until_text(datetime.fromtimestamp(card["valid_until"], tz), tz) if card else "",
    )
