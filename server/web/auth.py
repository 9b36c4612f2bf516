"""Who is asking, and may they: the session cookie, roles, and CSRF tokens on every POST.

Pages call `require(request, role)`; a request without a live session gets the
login page (GET) or 401 (anything else). Forms carry the session's CSRF token
in a hidden field `csrf` (or the `X-CSRF-Token` header); a POST without the
right token is refused with 403 before anything is changed. The login form,
which has no session yet, uses a double-submit cookie instead.
"""

from __future__ import annotations

import hmac
import secrets

from starlette.datastructures import FormData
from starlette.exceptions import HTTPException
from starlette.requests import Request

from server.web import i18n
from server.web.accounts import AccountStore, Session

SESSION_COOKIE = "menwei_session"
LANG_COOKIE = "menwei_lang"
LOGIN_CSRF_COOKIE = "menwei_login_csrf"


class LoginRequired(Exception):
    """No live session: GET requests are sent to the login page."""

    def __init__(self, expired: bool) -> None:
        super().__init__("login required")
        self.expired = expired


def lang_of(request: Request) -> str:
    return i18n.pick(request.query_params.get("lang") or request.cookies.get(LANG_COOKIE))


def accounts_of(request: Request) -> AccountStore:
    accounts: AccountStore = request.app.state.dashboard.accounts
    return accounts


def current(request: Request) -> Session | None:
    return accounts_of(request).session(request.cookies.get(SESSION_COOKIE))


def require(request: Request, role: str = "viewer") -> Session:
    session = current(request)
    if session is None:
        raise LoginRequired(expired=SESSION_COOKIE in request.cookies)
    if not session.operator.can(role):
        raise HTTPException(403, "error.forbidden")
    return session


def tokens_match(given: str | None, expected: str | None) -> bool:
    if not given or not expected:
        return False
    return hmac.compare_digest(given.encode(), expected.encode())


async def checked_form(request: Request, role: str) -> tuple[Session, FormData]:
    """A POST's session and form, after the CSRF token and then the role are checked."""
    session = current(request)
    if session is None:
        raise HTTPException(401, "login.expired")
    form = await request.form()
    given = form.get("csrf") or request.headers.get("x-csrf-token")
    if not tokens_match(given if isinstance(given, str) else None, session.csrf):
        raise HTTPException(403, "error.csrf")
    if not session.operator.can(role):
        raise HTTPException(403, "error.forbidden")
    return session, form


def new_login_token() -> str:
    return secrets.token_urlsafe(24)
