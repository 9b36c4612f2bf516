"""Logging in and out: the password, then (for an operator with TOTP, or an admin who must
enrol) a code, then the session cookie."""

from __future__ import annotations

from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response
from starlette.routing import Route

from server.web.accounts import SESSION_ABSOLUTE, LoginResult
from server.web.auth import (
    LOGIN_CSRF_COOKIE,
    SESSION_COOKIE,
    checked_form,
    current,
    new_login_token,
    tokens_match,
)
from server.web.dashboard import dashboard_of
from server.web.totp import qr_svg, secret_of

RETRY_BUSY_S = 2


def routes() -> list[Route]:
    return [
        Route("/login", login_page, methods=["GET"]),
        Route("/login", login_submit, methods=["POST"]),
        Route("/login/code", code_submit, methods=["POST"]),
        Route("/logout", logout, methods=["POST"]),
    ]


def _safe_next(target: str | None) -> str:
    """`target` when it is a path of this app, else "/": it must start with one "/" followed
    by neither "/" nor "\\", and hold no backslash and no control character anywhere.
    Browsers read "\\" as "/" and drop tabs and newlines, so "/\\evil.example" and
    "/<tab>/evil.example" are "//evil.example", another host: never an open redirect (the
    Location after a login, the link on the recovery codes page)."""
    if (
        not target
        or not target.startswith("/")
        or target[1:2] == "/"
        or "\\" in target
        or any(ord(c) < 0x20 or ord(c) == 0x7F for c in target)
    ):
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


def client_of(request: Request) -> str:
    """The client's address (after server/web/proxies.py judged the forwarded headers)."""
    return request.client.host if request.client else "unknown"


async def _login_form_data(request: Request) -> tuple[dict[str, str], str]:
    """The login form's fields, after its double-submit CSRF token is checked (403)."""
    form = await request.form()
    given = form.get("csrf")
    token = request.cookies.get(LOGIN_CSRF_COOKIE)
    if not tokens_match(given if isinstance(given, str) else None, token):
        raise HTTPException(403, "error.csrf")
    assert token is not None
    return {k: str(v) for k, v in form.items() if isinstance(v, str)}, token


async def login_submit(request: Request) -> Response:
    form, csrf = await _login_form_data(request)
    accounts = dashboard_of(request).accounts
    result = await run_in_threadpool(
        accounts.login, form.get("name", ""), form.get("password", ""), client_of(request)
    )
    return _answer(request, result, form.get("next"), csrf)


async def code_submit(request: Request) -> Response:
    form, csrf = await _login_form_data(request)
    accounts = dashboard_of(request).accounts
    result = await run_in_threadpool(
        accounts.second_step,
        form.get("challenge", ""),
        form.get("code", ""),
        client_of(request),
    )
    if result.expired:
        return _login_form(request, 401, "login.code_expired")
    return _answer(request, result, form.get("next"), csrf, error="login.code_failed")


def _answer(
    request: Request,
    result: LoginResult,
    next_page: str | None,
    csrf: str,
    error: str = "login.failed",
) -> Response:
    """The page for one step's LoginResult: refused, a code due, or logged in."""
    if result.busy:
        busy = _login_form(request, 503, "login.busy")
        busy.headers["Retry-After"] = str(RETRY_BUSY_S)
        return busy
    if result.limited:
        return _login_form(request, 429, "login.limited")
    target = _safe_next(next_page)
    if result.challenge is not None:
        fresh = request.url.path == "/login"  # the first page of the code step: no error
        return dashboard_of(request).pages.render(
            request,
            "login.html",
            None,
            status=200 if fresh else 401,
            login_csrf=csrf,
            challenge=result.challenge,
            error=None if fresh else error,
            next=target,
            qr=qr_svg(result.uri) if result.uri else None,
            secret=secret_of(result.uri) if result.uri else None,
        )
    if result.token is None:
        return _login_form(request, 401, error)
    if result.recovery_codes:
        response: Response = dashboard_of(request).pages.render(
            request,
            "recovery_codes.html",
            None,
            recovery_codes=result.recovery_codes,
            next=target,
        )
    else:
        response = RedirectResponse(target, status_code=303)
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
