"""Rendering a page: the template, the operator, the language, and the helpers templates use."""

from __future__ import annotations

from datetime import datetime
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

from jinja2 import Environment, FileSystemLoader, select_autoescape
from starlette.requests import Request
from starlette.responses import HTMLResponse

from protocol.register import mask_name
from server.web import i18n
from server.web.accounts import Session
from server.web.auth import LANG_COOKIE, lang_of

TEMPLATES = Path(__file__).with_name("templates")
LANG_COOKIE_AGE_S = 365 * 86400

NAV = (
    "overview",
    "feed",
    "alerts",
    "households",
    "visitors",
    "charts",
    "reports",
    "policy",
    "audit",
)


def environment() -> Environment:
    env = Environment(
        loader=FileSystemLoader(TEMPLATES),
        autoescape=select_autoescape(["html"]),
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters["mask"] = mask_name
    return env


class Pages:
    def __init__(self, tz: ZoneInfo, site: str) -> None:
        self.env = environment()
        self.tz = tz
        self.site = site

    def when(self, iso: str | None, with_date: bool = True) -> str:
        """A stored ISO time as the site's local time (MM-DD HH:MM:SS); the text as stored
        when it is not an ISO time or has no local time (year 9999 overflows there)."""
        if not iso:
            return "—"
        try:
            t = datetime.fromisoformat(iso)
            if t.tzinfo is not None:
                t = t.astimezone(self.tz)
        except (ValueError, TypeError, OverflowError):
            return str(iso)
        return t.strftime("%m-%d %H:%M:%S" if with_date else "%H:%M:%S")

    def render(
        self,
        request: Request,
        template: str,
        session: Session | None,
        status: int = 200,
        **context: Any,
    ) -> HTMLResponse:
        lang = lang_of(request)
        page = self.env.get_template(template).render(
            request=request,
            lang=lang,
            html_lang=i18n.HTML_LANG[lang],
            t=lambda key: i18n.text(lang, key),
            reason=lambda code: i18n.reason_text(lang, code),
            alert_kind=lambda kind: i18n.alert_kind(lang, kind),
            when=self.when,
            session=session,
            operator=session.operator if session else None,
            csrf=session.csrf if session else "",
            nav=NAV,
            site=self.site,
            other_lang="en" if lang == "zh" else "zh",
            **context,
        )
        response = HTMLResponse(page, status_code=status)
        response.headers["Cache-Control"] = "no-store"
        asked = request.query_params.get("lang")
        if asked in i18n.LANGS:
            response.set_cookie(
                LANG_COOKIE, asked, max_age=LANG_COOKIE_AGE_S, httponly=True, samesite="lax"
            )
        return response
