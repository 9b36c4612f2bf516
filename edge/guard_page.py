"""The guard's screen: a kiosk page on the gate's display, and the recorded manual override.

Glanceable: the last decision in big green or red, the reason in Chinese and
English, the holder's masked name and room, the temperature; below it the
gate's health (sync, camera, thermometer, clock, data age, storage) and the
last decisions; a storage fault takes the verdict area, with what to do. The
override opens the gate only with an enrolled guard's name and PIN and a reason
(checked by the daemon: edge/guards.py), and is logged like every decision
(refused while a storage fault stops logging). Served by uvicorn on its own
thread; bind it to localhost (the kiosk browser runs on the gate: edge/listen.py).

What a web page elsewhere, or a process on the gate, cannot do here:
- every response: a strict Content-Security-Policy (no inline script: the page's
  script and style are /static files), no framing (`frame-ancestors 'none'`,
  `X-Frame-Options: DENY`), `nosniff`, `Referrer-Policy: no-referrer`, and `Cache-Control:
  no-store` on everything but /static;
- a request whose `Host` is not loopback's, an IP address or the configured host is
  refused (400): a DNS-rebinding page cannot become "same-origin";
- `POST /api/override` needs, in this order, an `Origin` equal to the page's own (and
  `Sec-Fetch-Site: same-origin` when the browser sends it), `Content-Type:
  application/json` (a cross-site "simple" text/plain request never reaches the daemon),
  a body of at most MAX_BODY bytes, the page's CSRF token in `X-CSRF-Token` (issued in the
  page, an HMAC under a key made at start), and then the guard's PIN.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import json
import secrets
import threading
from collections.abc import Callable
from importlib import resources
from typing import Any

import uvicorn
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import Headers
from starlette.middleware import Middleware
from starlette.requests import ClientDisconnect, Request
from starlette.responses import HTMLResponse, JSONResponse, PlainTextResponse, Response
from starlette.routing import Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from edge.guards import OverrideRefused

MAX_FIELD = 200
MAX_BODY = 4096
SECURITY_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self';"
        " connect-src 'self'; object-src 'none'; base-uri 'none'; form-action 'self';"
        " frame-ancestors 'none'"
    ),
    "X-Frame-Options": "DENY",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
}
STATIC = {
    "guard_page.js": "text/javascript; charset=utf-8",
    "guard_page.css": "text/css; charset=utf-8",
}

Override = Callable[[str, str, str, str], OverrideRefused | None]


def _refuse(code: str, zh: str, en: str, status: int) -> JSONResponse:
    return JSONResponse({"error": code, "zh": zh, "en": en}, status_code=status)


def create_app(
    state: Callable[[], dict[str, Any]],
    override: Override,
    metrics: CollectorRegistry | None = None,
    *,
    host: str = "127.0.0.1",
) -> Starlette:
    """`override(guard, pin, reason, direction)` checks the PIN and queues the override, or
    returns why not (the page answers with its status and text). `host` is the configured
    listening host: requests naming it (besides loopback and IP addresses) are served."""
    files = resources.files("edge")
    page = files.joinpath("guard_page.html").read_text(encoding="utf-8")
    static = {name: files.joinpath(name).read_bytes() for name in STATIC}
    key = secrets.token_bytes(32)  # CSRF tokens live as long as this process
    instance = secrets.token_hex(8)

    def token() -> str:
        nonce = secrets.token_urlsafe(16)
        return f"{nonce}.{hmac.new(key, nonce.encode(), hashlib.sha256).hexdigest()}"

    def token_ok(given: str | None) -> bool:
        nonce, _, mac = (given or "").partition(".")
        want = hmac.new(key, nonce.encode(), hashlib.sha256).hexdigest()
        return bool(nonce) and hmac.compare_digest(mac.encode(), want.encode())

    async def index(_: Request) -> Response:
        return HTMLResponse(page.replace("__CSRF__", token()))

    async def static_file(request: Request) -> Response:
        name = request.path_params["name"]
        if name not in static:
            return PlainTextResponse("not found", status_code=404)
        return Response(static[name], media_type=STATIC[name])

    async def api_state(_: Request) -> Response:
        return JSONResponse({**state(), "instance": instance})

    async def api_override(request: Request) -> Response:
        if not same_origin(request.headers):
            return _refuse("origin", "请求来源不符，已拒绝", "Refused: not from this page", 403)
        media = request.headers.get("content-type", "").partition(";")[0].strip().lower()
        if media != "application/json":
            return _refuse(
                "content_type", "请求格式不符", "Refused: JSON (application/json) only", 415
            )
        body = await _body(request)
        if body is None:
            return _refuse("too_large", "请求过大", "Refused: request too large", 413)
        if not token_ok(request.headers.get("x-csrf-token")):
            return _refuse(
                "csrf",
                "页面已过期，正在刷新，请重新提交",
                "This page expired: it reloads, then submit again",
                403,
            )
        try:
            data = json.loads(body)
            guard = str(data.get("guard", "")).strip()[:MAX_FIELD]
            pin = str(data.get("pin", ""))[:MAX_FIELD]
            reason = str(data.get("reason", "")).strip()[:MAX_FIELD]
            direction = str(data.get("direction", "in"))
        except (ValueError, AttributeError, RecursionError):  # [[[[…: deeper than json goes
            return _refuse("bad_request", "请求无法解析", "expected a JSON object", 400)
        if not guard or not pin or len(reason) < 2 or direction not in ("in", "out"):
            return _refuse(
                "bad_request",
                "请填写门卫姓名、PIN 和放行原因",
                "guard name, PIN, a reason and direction in|out are required",
                400,
            )
        refused = await run_in_threadpool(override, guard, pin, reason, direction)
        if refused is not None:
            headers = {"Retry-After": str(refused.retry_after_s)} if refused.retry_after_s else None
            return JSONResponse(refused.to_json(), status_code=refused.status, headers=headers)
        return JSONResponse({"ok": True})

    async def favicon(_: Request) -> Response:  # the browser asks; nothing to show, no 404
        return Response(status_code=204)

    def prometheus(_: Request) -> Response:  # sync: Starlette runs it in its thread pool
        assert metrics is not None
        return Response(generate_latest(metrics), media_type=CONTENT_TYPE_LATEST)

    routes = [
        Route("/", index),
        Route("/static/{name}", static_file),
        Route("/favicon.ico", favicon),
        Route("/api/state", api_state),
        Route("/api/override", api_override, methods=["POST"]),
    ]
    if metrics is not None:
        routes.append(Route("/metrics", prometheus))
    return Starlette(routes=routes, middleware=[Middleware(Shield, configured_host=host)])


def same_origin(headers: Headers) -> bool:
    """Is this request from a page of this server? `Origin` must be present and name the
    host the request was sent to; `Sec-Fetch-Site`, when sent, must say same-origin."""
    site = headers.get("sec-fetch-site")
    if site is not None and site != "same-origin":
        return False
    origin, host = headers.get("origin"), headers.get("host")
    return bool(origin and host) and origin in (f"http://{host}", f"https://{host}")


def host_allowed(host_header: str, configured: str) -> bool:
    """Loopback names, IP addresses and the configured host: never another DNS name (a
    rebinding attacker's page names its own domain)."""
    if host_header.startswith("["):  # [v6]:port
        name = host_header[1:].partition("]")[0]
    else:
        name = host_header.partition(":")[0]
    name = name.lower().rstrip(".")
    if name in ("localhost", configured.lower()):
        return True
    try:
        ipaddress.ip_address(name)
    except ValueError:
        return False
    return True


async def _body(request: Request) -> bytes | None:
    """The request body, or None past MAX_BODY bytes (read no further)."""
    length = request.headers.get("content-length") or "0"
    if not length.isdigit() or int(length) > MAX_BODY:
        return None
    chunks: list[bytes] = []
    size = 0
    try:
        async for chunk in request.stream():
            size += len(chunk)
            if size > MAX_BODY:
                return None
            chunks.append(chunk)
    except ClientDisconnect:
        return None
    return b"".join(chunks)


class Shield:
    """Pure ASGI: refuses a foreign Host (400) and adds SECURITY_HEADERS, and `Cache-Control:
    no-store` outside /static, to every response."""

    def __init__(self, app: ASGIApp, configured_host: str) -> None:
        self.app = app
        self.configured_host = configured_host

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        cacheable = scope["path"].startswith("/static/")

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = [
                    (k, v)
                    for k, v in message.get("headers", [])
                    if k.lower() not in (b"cache-control",)
                ]
                headers += [(k.lower().encode(), v.encode()) for k, v in SECURITY_HEADERS.items()]
                headers.append((b"cache-control", b"max-age=60" if cacheable else b"no-store"))
                message = {**message, "headers": headers}
            await send(message)

        host = Headers(scope=scope).get("host", "")
        if not host_allowed(host, self.configured_host):
            response = PlainTextResponse("unknown host", status_code=400)
            await response(scope, receive, send_with_headers)
            return
        await self.app(scope, receive, send_with_headers)


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
