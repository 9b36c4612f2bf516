"""The guard's screen: a kiosk page on the gate's display, and the recorded manual override.

Glanceable: the last decision in big green or red, the reason in Chinese and
English, the holder's masked name and room, the temperature; below it the
gate's health (sync, camera, thermometer, clock, data age, storage) and the
last decisions; a storage fault takes the verdict area, with what to do. The
override opens the gate only with the guard's name and a reason, and is logged
like every decision (refused while a storage fault stops logging). Served by
uvicorn on its own thread; bind it to localhost (the kiosk browser runs on the
gate).
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from importlib import resources
from typing import Any

import uvicorn
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, Response
from starlette.routing import Route

MAX_FIELD = 200


def create_app(
    state: Callable[[], dict[str, Any]],
    override: Callable[[str, str, str], dict[str, str] | None],
    metrics: CollectorRegistry | None = None,
) -> Starlette:
    """`override(guard, reason, direction)` queues the override, or returns why it is refused
    ({"zh", "en"}): the page then answers 503 with that text."""
    page = resources.files("edge").joinpath("guard_page.html").read_text(encoding="utf-8")

    async def index(_: Request) -> Response:
        return HTMLResponse(page)

    async def api_state(_: Request) -> Response:
        return JSONResponse(state())

    async def api_override(request: Request) -> Response:
        try:
            data = await request.json()
            guard = str(data.get("guard", "")).strip()[:MAX_FIELD]
            reason = str(data.get("reason", "")).strip()[:MAX_FIELD]
            direction = str(data.get("direction", "in"))
        except (ValueError, AttributeError):
            return JSONResponse({"error": "expected a JSON object"}, status_code=400)
        if not guard or len(reason) < 2 or direction not in ("in", "out"):
            return JSONResponse(
                {
                    "error": "guard name, a reason and direction in|out are required",
                    "zh": "请填写门卫姓名和放行原因",
                },
                status_code=400,
            )
        refused = override(guard, reason, direction)
        if refused is not None:
            return JSONResponse({"error": refused["en"], "zh": refused["zh"]}, status_code=503)
        return JSONResponse({"ok": True})

    def prometheus(_: Request) -> Response:  # sync: Starlette runs it in its thread pool
        assert metrics is not None
        return Response(generate_latest(metrics), media_type=CONTENT_TYPE_LATEST)

    routes = [
        Route("/", index),
        Route("/api/state", api_state),
        Route("/api/override", api_override, methods=["POST"]),
    ]
    if metrics is not None:
        routes.append(Route("/metrics", prometheus))
    return Starlette(routes=routes)


class GuardServer:
    """uvicorn on its own thread; `close()` stops it. Idempotent."""

    def __init__(self, app: Starlette, host: str, port: int) -> None:
        self.server = uvicorn.Server(
            uvicorn.Config(app, host=host, port=port, log_level="warning", lifespan="off")
        )
        self._thread = threading.Thread(target=self.server.run, name="guard-page", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def close(self) -> None:
        self.server.should_exit = True
        if self._thread.is_alive():
            self._thread.join(timeout=5)
