"""The signed-in operator's own account: switching the TOTP second factor on and off.

Switching on: "set up" keeps a new secret pending and shows it as a QR code (SVG) and as
text; it is switched on only when a first code from the app is entered, and the new
recovery codes are then shown once. Switching off takes a current code or a recovery
code. Every code entered here counts against the login limits, as at login.
"""

from __future__ import annotations

from typing import Any

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response
from starlette.routing import Route

from server.web.accounts import CodeResult, Session
from server.web.auth import checked_form, require
from server.web.dashboard import dashboard_of
from server.web.totp import qr_svg, secret_of
from server.web.views.login import client_of


def routes() -> list[Route]:
    return [
        Route("/account", account_page),
        Route("/account/totp/setup", setup, methods=["POST"]),
        Route("/account/totp/confirm", confirm, methods=["POST"]),
        Route("/account/totp/disable", disable, methods=["POST"]),
    ]


def _page(request: Request, session: Session, status: int = 200, **context: Any) -> Response:
    d = dashboard_of(request)
    state = d.accounts.totp_status(session.operator.name)
    uri = None if state.enabled else state.uri
    return d.pages.render(
        request,
        "account.html",
        session,
        status=status,
        status_totp=state,
        qr=qr_svg(uri) if uri else None,
        secret=secret_of(uri) if uri else None,
        **context,
    )


def account_page(request: Request) -> Response:
    session = require(request)
    return _page(request, session, done=_DONE.get(request.query_params.get("done", "")))


_DONE = {"off": "totp.disabled"}


async def setup(request: Request) -> Response:
    session, _form = await checked_form(request, "viewer")
    await run_in_threadpool(dashboard_of(request).accounts.start_enrolment, session.operator.name)
    return RedirectResponse("/account", status_code=303)


async def confirm(request: Request) -> Response:
    session, form = await checked_form(request, "viewer")
    result = await run_in_threadpool(
        dashboard_of(request).accounts.confirm_enrolment,
        session.operator.name,
        str(form.get("code", "")),
        client_of(request),
    )
    if result.ok:
        return dashboard_of(request).pages.render(
            request,
            "recovery_codes.html",
            session,
            recovery_codes=result.recovery_codes,
            next="/account",
        )
    return await run_in_threadpool(_refused, request, session, result)


async def disable(request: Request) -> Response:
    session, form = await checked_form(request, "viewer")
    result = await run_in_threadpool(
        dashboard_of(request).accounts.disable_with_code,
        session.operator.name,
        str(form.get("code", "")),
        client_of(request),
    )
    if result.ok:
        return RedirectResponse("/account?done=off", status_code=303)
    return await run_in_threadpool(_refused, request, session, result)


def _refused(request: Request, session: Session, result: CodeResult) -> Response:
    if result.limited:
        return _page(request, session, 429, error="login.limited")
    return _page(request, session, 400, error="login.code_failed")
