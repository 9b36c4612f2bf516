"""Alerts: high priority first, then newest; operators acknowledge them with a note."""

from __future__ import annotations

from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response
from starlette.routing import Route

from server.alerts import Alert
from server.web.auth import checked_form, require
from server.web.dashboard import dashboard_of

NOTE_MAX = 1000


def routes() -> list[Route]:
    return [
        Route("/alerts", alerts_page),
        Route("/alerts/{alert_id:int}/ack", acknowledge, methods=["POST"]),
    ]


def ordered(alerts: list[Alert]) -> list[Alert]:
    """Open before acknowledged, high before normal, newest first within each."""
    return sorted(alerts, key=lambda a: (a.acked_at is not None, a.priority != "high", -a.id))


def alerts_page(request: Request) -> Response:
    session = require(request)
    d = dashboard_of(request)
    show_all = request.query_params.get("all") == "1"
    return d.pages.render(
        request,
        "alerts.html",
        session,
        alerts=ordered(d.site.alerts.list(open_only=not show_all, limit=500)),
        show_all=show_all,
        done=request.query_params.get("done"),
    )


async def acknowledge(request: Request) -> Response:
    session, form = await checked_form(request, "operator")
    alert_id = int(request.path_params["alert_id"])
    note = str(form.get("note", "")).strip()[:NOTE_MAX]
    d = dashboard_of(request)
    ok = await run_in_threadpool(d.site.alerts.acknowledge, alert_id, session.operator.name, note)
    if not ok:
        raise HTTPException(404, "error.not_found")
    return RedirectResponse("/alerts?done=ack", status_code=303)
