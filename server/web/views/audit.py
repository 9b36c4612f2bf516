"""The audit log: every administrative action, login, and every guard override at a gate."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from server.storage import dashboard as stored
from server.web.auth import require
from server.web.dashboard import dashboard_of

LIMIT = 500


def routes() -> list[Route]:
    return [Route("/audit", audit_page)]


def audit_page(request: Request) -> Response:
    session = require(request)
    d = dashboard_of(request)
    with d.store.read() as tx:
        entries = stored.audit_entries(tx, LIMIT)
        overrides = stored.overrides(tx, LIMIT)
    return d.pages.render(request, "audit.html", session, entries=entries, overrides=overrides)
