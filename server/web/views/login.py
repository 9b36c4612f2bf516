"""Logging in and out."""

from __future__ import annotations

from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response
from starlette.routing import Route

from server.web.accounts import SESSION_ABSOLUTE
from server.web.auth import (
    LOGIN_CSRF_COOKIE,
    SESSION_COOKIE,
    checked_form,
    current,
    new_login_token,
    tokens_match,
)
from server.web.dashboard import dashboard_of


def routes() -> list[Route]:
    return [
        Route("/login", login_page, methods=["GET"]),
        Route("/login", login_submit, methods=["POST"]),
        Route("/logout", logout, methods=["POST"]),
    ]


def _safe_next(target: str | None) -> str:
    # Only paths of this app: never an open redirect to another host.
    if not target or not target.startswith("/") or target.startswith("//"):
        return "/"
    return target


def _login_form(request: Request, status: int = 200, error: str | None = None) -> Response:
    token = new_login_token()
    response = dashboard_of(request).pages.render(
        request,
        "login.html",
        None,
        status=status,
        login_csrf=token,
        error=error,
        expired=request.query_params.get("expired") == "1",
        next=_safe_next(request.query_params.get("next")),
    )
    response.set_cookie(LOGIN_CSRF_COOKIE, token, httponly=True, samesite="strict")
    return response


async def login_page(request: Request) -> Response:
    if await run_in_threadpool(current, request) is not None:
        return RedirectResponse(_safe_next(request.query_params.get("next")), status_code=303)
    return _login_form(request)


async def login_submit(request: Request) -> Response:
    form = await request.form()
    given = form.get("csrf")
    if not tokens_match(
        given if isinstance(given, str) else None, request.cookies.get(LOGIN_CSRF_COOKIE)
    ):
        raise HTTPException(403, "error.csrf")
    name, password = str(form.get("name", "")), str(form.get("password", ""))
    address = request.client.host if request.client else "unknown"
    result = await run_in_threadpool(dashboard_of(request).accounts.login, name, password, address)
    if result.limited:
        return _login_form(request, 429, "login.limited")
    if result.token is None:
        return _login_form(request, 401, "login.failed")
    response = RedirectResponse(_safe_next(str(form.get("next", "/"))), status_code=303)
    response.set_cookie(
        SESSION_COOKIE,
        result.token,
        max_age=int(SESSION_ABSOLUTE.total_seconds()),
        httponly=True,
        samesite="lax",
        secure=request.url.scheme == "https",
    )
    response.delete_cookie(LOGIN_CSRF_COOKIE)
    return response


async def logout(request: Request) -> Response:
    await checked_form(request, "viewer")
    token = request.cookies.get(SESSION_COOKIE)
    if token:
        await run_in_threadpool(dashboard_of(request).accounts.logout, token)
    response = RedirectResponse("/login", status_code=303)
    response.delete_cookie(SESSION_COOKIE)
    return response
