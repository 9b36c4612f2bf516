"""The dashboard application: `create_app(site_dir or Site, feed)` → a Starlette app.

It runs in the collector's process (on uvicorn's own thread) but shares nothing
with the collector except the LiveFeed: it opens its own Site, whose store gives
pages their own read transactions (SQLite in WAL mode: readers never wait for the
collector's writer nor hold it up; PostgreSQL: MVCC), so neither a slow page nor
many open live feeds delay the acknowledgements the collector sends to gates.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import quote

from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.applications import Starlette
from starlette.datastructures import MutableHeaders
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import PlainTextResponse, RedirectResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from server.live import LiveFeed
from server.metrics import server_registry
from server.policy_rollout import PolicyTrial
from server.site import Site
from server.web import i18n
from server.web.auth import LANG_COOKIE, LoginRequired, current, lang_of
from server.web.dashboard import Dashboard
from server.web.proxies import ClientAddress
from server.web.views import (
    account,
    alerts,
    audit,
    charts,
    households,
    login,
    overview,
    policy,
    reports,
    visitors,
)
from server.web.views import feed as feed_view

if TYPE_CHECKING:
    from server.collector import Collector

STATIC = Path(__file__).with_name("static")
SECURITY_HEADERS = {
    # No CDN, no inline script: the page runs only what this app serves.
    "Content-Security-Policy": (
        "default-src 'self'; img-src 'self' data:; style-src 'self'; script-src 'self';"
        " connect-src 'self'; frame-ancestors 'none'; form-action 'self'; base-uri 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",
    "X-Frame-Options": "DENY",
}
NO_STORE = "no-store"
"""Every response but the static files': pages, downloads and API answers hold personal
data or a session's CSRF token, which no browser cache or proxy may keep."""


def create_app(
    site: Site | Path,
    feed: LiveFeed | None = None,
    collector: Collector | None = None,
    trial: PolicyTrial | None = None,
) -> Starlette:
    """The dashboard for a server directory (opened here, closed at shutdown) or an open Site.
    `collector` (read only, for /metrics) adds its in-memory counters to the store's figures.
    `trial` runs the policy page's try-out (the command line injects the gates' decision core;
    without it the page says the try-out is unavailable)."""
    owns = not isinstance(site, Site)
    opened = Site(Path(site)) if not isinstance(site, Site) else site
    dashboard = Dashboard(
        opened, feed if feed is not None else LiveFeed(), owns_site=owns, trial=trial
    )

    @asynccontextmanager
    async def lifespan(_app: Starlette) -> AsyncIterator[None]:
        try:
            yield
        finally:
            dashboard.close()

    registry = server_registry(
        opened.store, lambda: overview.gate_rows(dashboard), dashboard.feed, collector
    )
    registry.register(dashboard.accounts.checks)

    def metrics(_request: Request) -> Response:
        # No login: Prometheus scrapes it. Sync, so the store reads run in the thread pool.
        return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)

    routes = [
        *login.routes(),
        *account.routes(),
        *overview.routes(),
        *feed_view.routes(),
        *alerts.routes(),
        *households.routes(),
        *visitors.routes(),
        *charts.routes(),
        *reports.routes(),
        *audit.routes(),
        *policy.routes(),
        Route("/healthz", healthz),
        Route("/metrics", metrics),
        Mount("/static", StaticFiles(directory=STATIC), name="static"),
    ]
    app = Starlette(
        routes=routes,
        lifespan=lifespan,
        middleware=[
            Middleware(ClientAddress, trusted=opened.config.web.trusted_proxies),
            Middleware(SecurityHeaders),
        ],
        exception_handlers={LoginRequired: _login_required, HTTPException: _http_error},
    )
    app.state.dashboard = dashboard

    return app


class SecurityHeaders:
    """Adds SECURITY_HEADERS to every HTTP response, and `Cache-Control: no-store` to every
    one outside /static/ that does not set its own (pure ASGI: streams pass through)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        static = scope["path"].startswith("/static/")

        async def with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = MutableHeaders(scope=message)
                for name, value in SECURITY_HEADERS.items():
                    headers.setdefault(name, value)
                if not static:
                    headers.setdefault("Cache-Control", NO_STORE)
            await send(message)

        await self.app(scope, receive, with_headers)


async def healthz(_request: Request) -> Response:
    return PlainTextResponse("ok")


async def _login_required(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, LoginRequired)
    if request.method != "GET":
        return PlainTextResponse(i18n.text(lang_of(request), "login.expired"), status_code=401)
    target = request.url.path + (f"?{request.url.query}" if request.url.query else "")
    query = f"?next={quote(target, safe='/')}" + ("&expired=1" if exc.expired else "")
    response = RedirectResponse(f"/login{query}", status_code=303)
    asked = request.query_params.get("lang")
    if asked in i18n.LANGS:
        response.set_cookie(LANG_COOKIE, asked, httponly=True, samesite="lax")
    return response


async def _http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    key = exc.detail if exc.detail in i18n.STRINGS else _generic(exc.status_code)
    dashboard: Dashboard = request.app.state.dashboard
    if request.headers.get("accept", "").startswith("text/event-stream"):
        return PlainTextResponse(i18n.text(lang_of(request), key), status_code=exc.status_code)
    return dashboard.pages.render(
        request,
        "error.html",
        current(request),
        status=exc.status_code,
        message_key=key,
        detail=None if exc.detail in i18n.STRINGS else exc.detail,
    )


def _generic(status: int) -> str:
    return {
        403: "error.forbidden",
        404: "error.not_found",
        429: "login.limited",
        503: "login.busy",
    }.get(status, "error.bad_request")
