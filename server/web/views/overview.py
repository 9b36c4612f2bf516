"""Overview: every gate's health from its retained status, and today's figures."""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from protocol.events import readable_status
from server.storage import dashboard as stored
from server.web import figures, i18n
from server.web.auth import require
from server.web.dashboard import Dashboard, dashboard_of

T = TypeVar("T")


def routes() -> list[Route]:
    return [Route("/", overview)]


def gate_rows(dashboard: Dashboard) -> list[dict[str, Any]]:
    """One row per gate from its last retained status (the Last Will says offline). A gate
    that says online but has not been heard from for `gate_offline_after_min` is silent:
    its status is stale (the collector lost the broker, or the Will never came)."""
    silence = timedelta(minutes=dashboard.site.config.alerts.gate_offline_after_min)
    now = datetime.now(UTC)
    rows = []
    with dashboard.store.read() as tx:
        seen = stored.gates_seen(tx)
    for gate in seen:
        last_seen = gate.last_seen
        status = stored_status(gate.status)
        clock = status.get("clock") or {}
        camera = status.get("camera") or {}
        storage = status.get("storage") or {}
        versions = status.get("versions") or {}
        state = status.get("state", "unknown")
        if state == "online" and last_seen and now - datetime.fromisoformat(last_seen) > silence:
            state = "silent"
        age = data_age(status, now, dashboard.policy.max_data_age_h)
        rows.append(
            {
                "gate": gate.gate,
                "state": state,
                "last_seen": last_seen,
                "status_at": status.get("at"),
                "direction": status.get("direction"),
                "backlog": status.get("backlog"),
                "clock_trusted": _of(bool, clock.get("trusted")),
                "config": versions.get("config"),
                "register": versions.get("register"),
                "camera": _of(str, camera.get("state")),
                "camera_error": _of(str, camera.get("error")),
                "data_age": age,
                "storage": _of(str, storage.get("kind"))
                if storage.get("state") == "fault"
                else _of(str, storage.get("state")),
                "storage_error": _of(str, storage.get("error")),
            }
        )
    return rows


def stored_status(raw: str | None) -> dict[str, Any]:
    """A gate's stored status with fields of the wrong shape left out: statuses stored before
    the collector checked shapes may hold `"versions": "x"`; a page must still render."""
    try:
        return readable_status(json.loads(raw)) if raw else {}
    except ValueError:
        return {}


def _of(kind: type[T], value: object) -> T | None:
    """`value` when it is a `kind`, else None (a field inside a stored status's object)."""
    return value if isinstance(value, kind) else None


@dataclass(frozen=True)
class DataAge:
    """A gate's data age on the overview: from the `data_as_of` its status carries, so the
    age keeps growing while a gate is silent; the limit is the `max_data_age_h` the gate
    holds (it may not have the newest policy yet), else the published one."""

    hours: float
    as_of: str | None
    limit_h: float

    @property
    def stale(self) -> bool:
        return self.hours > self.limit_h

    def text(self, lang: str) -> str:
        """Minutes under an hour ("12 分钟"), else hours with one decimal ("1.5 小时")."""
        if self.hours < 1:
            return f"{int(self.hours * 60)} {i18n.text(lang, 'gate.minutes')}"
        return f"{self.hours:.1f} {i18n.text(lang, 'gate.hours')}"


def data_age(status: dict[str, Any], now: datetime, published_limit_h: float) -> DataAge | None:
    """None when the gate reported no age (not provisioned, or a Last Will)."""
    limit = status.get("max_data_age_h")
    limit_h = float(limit) if isinstance(limit, int | float) and limit > 0 else published_limit_h
    raw = status.get("data_as_of")
    try:
        moment = datetime.fromisoformat(raw) if isinstance(raw, str) else None
    except ValueError:
        moment = None
    if moment is not None and moment.tzinfo is not None:
        hours = max(0.0, (now - moment).total_seconds() / 3600)
        return DataAge(hours, moment.isoformat(), limit_h)
    reported = status.get("data_age_h")  # gates from before freshness statements
    if isinstance(reported, int | float) and not isinstance(reported, bool):
        return DataAge(max(0.0, float(reported)), None, limit_h)
    return None


def overview(request: Request) -> Response:
    session = require(request)
    d = dashboard_of(request)
    day = figures.today(d.policy)
    span = figures.day_span(d.policy, day)
    alerts_open = d.site.alerts.open_counts()
    policy = d.policy
    with d.store.read() as tx:
        passages = figures.passages(tx, span)
        outside = figures.outside(tx, policy, datetime.now(UTC))
        denials = figures.denials(tx, span)
    return d.pages.render(
        request,
        "overview.html",
        session,
        gates=gate_rows(d),
        day=day.isoformat(),
        passages=passages,
        outside=len(outside),
        denials=denials,
        alerts_open=sorted(alerts_open.items(), key=lambda kv: -kv[1]),
        alerts_total=sum(alerts_open.values()),
    )
