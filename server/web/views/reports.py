"""Reports: the daily figures (server/reports.py) as a page, CSV and XLSX downloads."""

from __future__ import annotations

from collections.abc import Callable
from datetime import date
from typing import Any

from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from server.reports import daily_report, to_csv, to_xlsx
from server.storage import audit
from server.web import figures
from server.web.auth import require
from server.web.dashboard import Dashboard, dashboard_of

XLSX = "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet"
PREVIEW_ROWS = 200


def routes() -> list[Route]:
    return [
        Route("/reports", reports_page),
        Route("/reports/daily.csv", download_csv),
        Route("/reports/daily.xlsx", download_xlsx),
    ]


def _day(request: Request, d: Dashboard) -> date:
    text = request.query_params.get("day")
    if not text:
        return figures.today(d.policy)
    try:
        day = date.fromisoformat(text)
    except ValueError:
        raise HTTPException(400, "error.bad_request") from None
    if day == date.max:  # its counting day ends on a date Python cannot represent
        raise HTTPException(400, "error.bad_request")
    return day


def _rows(d: Dashboard, day: date) -> list[dict[str, Any]]:
    return daily_report(d.site, day)


def flat(row: dict[str, Any]) -> dict[str, Any]:
    """Nested counts (denials by reason) as one column each, as the CSV has them."""
    out: dict[str, Any] = {}
    for key, value in row.items():
        if isinstance(value, dict):
            out.update({f"{key.split('_by_')[0]}:{k}": v for k, v in value.items()})
        else:
            out[key] = value
    return out


def reports_page(request: Request) -> Response:
    session = require(request)
    d = dashboard_of(request)
    day = _day(request, d)
    rows = [flat(r) for r in _rows(d, day)]
    columns = list(dict.fromkeys(c for r in rows for c in r))
    return d.pages.render(
        request,
        "reports.html",
        session,
        day=day.isoformat(),
        columns=columns,
        rows=rows[:PREVIEW_ROWS],
    )


async def _download(
    request: Request, encoder: Callable[[list[dict[str, Any]]], bytes], media_type: str, ext: str
) -> Response:
    d = dashboard_of(request)
    session = await run_in_threadpool(require, request)
    day = _day(request, d)

    def build() -> bytes:
        data = encoder(_rows(d, day))
        with d.site.store.write() as tx:
            audit.record(tx, session.operator.name, "report_download", f"{day}.{ext}")
        return data

    data = await run_in_threadpool(build)
    name = f"menwei-{d.site.site}-{day.isoformat()}.{ext}"
    return Response(
        data,
        media_type=media_type,
        # Personal data: no browser or proxy keeps a copy (the middleware says it too).
        headers={
            "Content-Disposition": f'attachment; filename="{name}"',
            "Cache-Control": "no-store",
        },
    )


async def download_csv(request: Request) -> Response:
    return await _download(request, to_csv, "text/csv; charset=utf-8", "csv")


async def download_xlsx(request: Request) -> Response:
    return await _download(request, to_xlsx, XLSX, "xlsx")
