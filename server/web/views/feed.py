"""The live feed: recent passages and denials, then new ones as Server-Sent Events.

The stream reads the collector's LiveFeed through a bounded subscription and
polls it without blocking (a viewer never holds a thread or a lock the
collector needs); a comment line every 15 s keeps proxies and the browser
from closing an idle stream. Names are the register's masked display names;
the reason is the message in the viewer's language.
"""

from __future__ import annotations

import asyncio
import json
import queue
import time
from collections.abc import AsyncIterator
from typing import Any

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response, StreamingResponse
from starlette.routing import Route

from protocol.register import mask_name
from server.storage import dashboard as stored
from server.web import i18n
from server.web.auth import SESSION_COOKIE, current, lang_of, require
from server.web.dashboard import Dashboard, dashboard_of

HEARTBEAT_S = 15.0
POLL_S = 0.2
RECHECK_SESSION_S = 60.0
FEED_KINDS = ("decision", "exit_request", "override")
RECENT = 50


def routes() -> list[Route]:
    return [Route("/feed", feed_page), Route("/feed/stream", stream)]


def _filters(request: Request) -> tuple[str, str]:
    gate = request.query_params.get("gate", "")
    decision = request.query_params.get("decision", "")
    return gate, decision if decision in ("allow", "deny") else ""


def holders(d: Dashboard, pass_ids: set[int]) -> dict[int, tuple[str, str]]:
    """pass id → (masked name, room), as the register shows them to gates."""
    if not pass_ids:
        return {}
    with d.store.read() as tx:
        found = stored.pass_holders(tx, pass_ids)
    return {p: (mask_name(name), room) for p, (name, room) in found.items()}


def shape(
    d: Dashboard, lang: str, event: dict[str, Any], names: dict[int, tuple[str, str]]
) -> dict[str, Any]:
    pass_id = event.get("pass_id")
    name, room = names.get(pass_id, ("", "")) if isinstance(pass_id, int) else ("", "")
    return {
        "uuid": event.get("uuid"),
        "at": event.get("at"),
        "time": d.pages.when(event.get("at")),
        "gate": event.get("gate"),
        "decision": event.get("decision") or "deny",
        "decision_text": i18n.text(lang, f"decision.{event.get('decision') or 'deny'}"),
        "direction": event.get("direction") or "",
        "direction_text": (
            i18n.text(lang, f"direction.{event['direction']}") if event.get("direction") else ""
        ),
        "reason": event.get("reason"),
        "message": i18n.reason_text(lang, str(event.get("reason"))),
        "holder": name,
        "household": room or event.get("household") or "",
        "temperature": event.get("temperature_c"),
    }


def recent(d: Dashboard, lang: str, gate: str, decision: str) -> list[dict[str, Any]]:
    with d.store.read() as tx:
        events = stored.recent_events(tx, FEED_KINDS, RECENT, gate=gate, decision=decision)
    names = holders(d, {e["pass_id"] for e in events if isinstance(e.get("pass_id"), int)})
    return [shape(d, lang, e, names) for e in events]


def feed_page(request: Request) -> Response:
    session = require(request)
    d = dashboard_of(request)
    gate, decision = _filters(request)
    lang = lang_of(request)
    with d.store.read() as tx:
        gates = stored.gate_names(tx)
    return d.pages.render(
        request,
        "feed.html",
        session,
        rows=recent(d, lang, gate, decision),
        gates=gates,
        gate=gate,
        decision=decision,
    )


def _sse(kind: str, data: dict[str, Any]) -> str:
    return f"event: {kind}\ndata: {json.dumps(data, ensure_ascii=False)}\n\n"


async def stream(request: Request) -> Response:
    """text/event-stream of `passage` (filtered), `status`, `alert` and `dropped` events."""
    # EventSource retries forever on a redirect to the login page; 401 makes it stop.
    session = await run_in_threadpool(current, request)
    if session is None:
        return PlainTextResponse("login required", status_code=401)
    d = dashboard_of(request)
    gate, decision = _filters(request)
    lang = lang_of(request)
    token = request.cookies.get(SESSION_COOKIE)

    def still_logged_in() -> bool:
        return d.accounts.session(token) is not None

    async def events() -> AsyncIterator[str]:
        with d.feed.subscribe() as sub:
            yield "retry: 2000\n\n"
            beat = checked = time.monotonic()
            dropped = 0
            while not d.stopping.is_set():
                try:
                    item = sub.queue.get_nowait()
                except queue.Empty:
                    now = time.monotonic()
                    if now - checked > RECHECK_SESSION_S:
                        checked = now
                        if not await run_in_threadpool(still_logged_in):
                            yield _sse("logout", {})
                            return
                    if now - beat > HEARTBEAT_S:
                        beat = now
                        yield ": heartbeat\n\n"
                    await asyncio.sleep(POLL_S)
                    continue
                if sub.dropped != dropped:
                    dropped = sub.dropped
                    yield _sse("dropped", {"dropped": dropped})
                message = await run_in_threadpool(_message, d, lang, item, gate, decision)
                if message is not None:
                    beat = time.monotonic()
                    yield message

    return StreamingResponse(
        events(),
        media_type="text/event-stream",
        headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"},
    )


def _message(d: Dashboard, lang: str, item: dict[str, Any], gate: str, decision: str) -> str | None:
    kind = item.get("type")
    if kind == "status":
        return _sse(
            "status",
            {
                "gate": item.get("gate"),
                "state": item.get("state"),
                "state_text": i18n.text(lang, f"gate.{item.get('state', 'unknown')}"),
                "backlog": item.get("backlog"),
                "time": d.pages.when(item.get("at")),
                "data_as_of": item.get("data_as_of"),
                "max_data_age_h": item.get("max_data_age_h"),
            },
        )
    if kind == "alert":
        return _sse(
            "alert",
            {
                "id": item.get("id"),
                "kind": item.get("kind"),
                "kind_text": i18n.alert_kind(lang, str(item.get("kind"))),
                "priority": item.get("priority"),
                "gate": item.get("gate"),
            },
        )
    if kind != "event" or item.get("kind") not in FEED_KINDS:
        return None
    if (gate and item.get("gate") != gate) or (decision and item.get("decision") != decision):
        return None
    pass_id = item.get("pass_id")
    names = holders(d, {pass_id} if isinstance(pass_id, int) else set())
    return _sse("passage", shape(d, lang, item, names))
