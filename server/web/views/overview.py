"""Overview: every gate's health from its retained status, and today's figures."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from typing import Any

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from server.web import figures
from server.web.auth import require
from server.web.dashboard import Dashboard, dashboard_of


def routes() -> list[Route]:
    return [Route("/", overview)]


def gate_rows(dashboard: Dashboard) -> list[dict[str, Any]]:
    """One row per gate from its last retained status (the Last Will says offline). A gate
    that says online but has not been heard from for `gate_offline_after_min` is silent:
    its status is stale (the collector lost the broker, or the Will never came)."""
    silence = timedelta(minutes=dashboard.site.config.alerts.gate_offline_after_min)
    now = datetime.now(UTC)
    rows = []
    for gate, last_seen, raw in dashboard.reader.rows(
        "SELECT gate, last_seen, status FROM gates ORDER BY gate"
    ):
        status: dict[str, Any] = json.loads(raw) if raw else {}
        clock = status.get("clock") or {}
        camera = status.get("camera") or {}
        storage = status.get("storage") or {}
        versions = status.get("versions") or {}
        state = status.get("state", "unknown")
        if state == "online" and last_seen and now - datetime.fromisoformat(last_seen) > silence:
            state = "silent"
        age = data_age_hours(status, now)
        rows.append(
            {
                "gate": gate,
                "state": state,
                "last_seen": last_seen,
                "status_at": status.get("at"),
                "direction": status.get("direction"),
                "backlog": status.get("backlog"),
                "clock_trusted": clock.get("trusted"),
                "config": versions.get("config"),
                "register": versions.get("register"),
                "camera": camera.get("state"),
                "camera_error": camera.get("error"),
                "storage": storage.get("kind")
                if storage.get("state") == "fault"
                else storage.get("state"),
                "storage_error": storage.get("error"),
                "data_age_h": age,
                "data_stale": age is not None and age > dashboard.policy.max_data_age_h,
            }
        )
    return rows


def data_age_hours(status: dict[str, Any], now: datetime) -> float | None:
    """Hours since the gate last had signed proof that its documents are current: from the
    `data_as_of` its status carries (so the age keeps growing while a gate is silent), or
    the `data_age_h` it reported (gates from before freshness statements)."""
    as_of = status.get("data_as_of")
    try:
        moment = datetime.fromisoformat(as_of) if isinstance(as_of, str) else None
    except ValueError:
        moment = None
    if moment is not None and moment.tzinfo is not None:
        return round(max(0.0, (now - moment).total_seconds() / 3600), 1)
    reported = status.get("data_age_h")
    return round(float(reported), 1) if isinstance(reported, int | float) else None


def overview(request: Request) -> Response:
    session = require(request)
    d = dashboard_of(request)
    day = figures.today(d.policy)
    span = figures.day_span(d.policy, day)
    alerts_open = d.site.alerts.open_counts()
    return d.pages.render(
        request,
        "overview.html",
        session,
        gates=gate_rows(d),
        day=day.isoformat(),
        passages=figures.passages(d.reader, span),
        outside=len(figures.outside(d.reader, d.policy, datetime.now(UTC))),
        denials=figures.denials(d.reader, span),
        alerts_open=sorted(alerts_open.items(), key=lambda kv: -kv[1]),
        alerts_total=sum(alerts_open.values()),
    )
