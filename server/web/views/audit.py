"""The audit log: every administrative action, login, and every guard override at a gate."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from server.web.auth import require
from server.web.dashboard import dashboard_of

LIMIT = 500


def routes() -> list[Route]:
    return [Route("/audit", audit_page)]


def audit_page(request: Request) -> Response:
    session = require(request)
    d = dashboard_of(request)
    entries = d.reader.dicts(
        "SELECT id, at, actor, action, target, detail FROM audit ORDER BY id DESC LIMIT ?",
        [LIMIT],
    )
    overrides = d.reader.dicts(
        "SELECT gate, seq, at, reason, direction, json_extract(body, '$.detail') AS detail"
        " FROM events WHERE kind = 'override' ORDER BY julianday(at) DESC LIMIT ?",
        [LIMIT],
    )
    return d.pages.render(request, "audit.html", session, entries=entries, overrides=overrides)
