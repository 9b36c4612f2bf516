"""Charts: passages per hour in and out (today and the last 7 days), denials, per gate."""

from __future__ import annotations

from datetime import timedelta

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from server.web import figures, i18n, svg
from server.web.auth import lang_of, require
from server.web.dashboard import dashboard_of


def routes() -> list[Route]:
    return [Route("/charts", charts_page)]


def charts_page(request: Request) -> Response:
    session = require(request)
    d = dashboard_of(request)
    lang = lang_of(request)

    def t(key: str) -> str:
        return i18n.text(lang, key)

    day = figures.today(d.policy)
    span = figures.day_span(d.policy, day)
    start = span.start
    week = figures.week_span(d.policy, day)
    with d.store.read() as tx:
        hours = figures.hourly(tx, span)
        week_hours = figures.hourly(tx, week)
        gates = figures.per_gate(tx, span)
        denials = figures.denials(tx, span)
    day_labels = [f"{(start + timedelta(hours=h)).hour:02d}" for h in range(len(hours))]
    week_labels = [
        (week.start + timedelta(hours=h)).strftime("%m-%d") for h in range(len(week_hours))
    ]

    def series(bins: list[dict[str, int]]) -> list[tuple[str, str, list[int]]]:
        return [
            ("s-in", t("charts.in"), [b["in"] for b in bins]),
            ("s-out", t("charts.out"), [b["out"] for b in bins]),
        ]

    charts = {
        "day": svg.grouped_bars(day_labels, series(hours), t("charts.day"), label_every=2),
        "week": svg.lines(week_labels, series(week_hours), t("charts.week"), label_every=24),
        "reasons": svg.hbars(
            [(i18n.reason_text(lang, r), n) for r, n in denials], t("charts.reasons")
        ),
        "gates": svg.grouped_bars(
            [g["gate"] for g in gates],
            [
                ("s-in", t("charts.in"), [g["in"] for g in gates]),
                ("s-out", t("charts.out"), [g["out"] for g in gates]),
                ("s-deny", t("charts.deny"), [g["deny"] for g in gates]),
            ],
            t("charts.gates"),
        ),
    }
    return d.pages.render(
        request,
        "charts.html",
        session,
        charts=charts,
        day=day.isoformat(),
        has_denials=bool(denials),
        has_gates=bool(gates),
    )
