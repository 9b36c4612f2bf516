"""Alerts pushed to a webhook: plain JSON, or a WeCom (企业微信) or DingTalk (钉钉) group robot.

`submit` never blocks: alerts wait in a bounded queue (a full queue drops the
new alert and counts it) and one sender thread POSTs them with urllib, three
attempts with backoff, so a slow or dead webhook never delays the collector.
Messages carry masked data only: kind, gate, time, temperature, household id
and pass id; never a name or a phone number.

Formats (the text of both robots is "msgtype": "text"):
- json: {"site", "alert": {...}, "text": {"zh", "en"}}
- wecom: {"msgtype": "text", "text": {"content": ...}}; success is errcode 0
- dingtalk: the same body; with `webhook_secret`, "&timestamp=<ms>&sign=<s>" is
  appended to the URL, s = urlencode(base64(HMAC-SHA256(secret, f"{ts}\\n{secret}"))).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import logging
import queue
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, tzinfo
from typing import Any

from server.alerts import Alert
from server.config import AlertsSection
from server.storage import Store
from server.storage import alerts as alerts_db
from server.storage.times import instant_us

log = logging.getLogger("menwei.webhooks")

ATTEMPTS = 3

KIND_TEXT: dict[str, tuple[str, str]] = {
    "fever": ("体温异常（发热）", "Fever"),
    "forged": ("伪造或未知密钥的通行证", "Forged or unknown-key pass"),
    "revoked": ("已吊销的通行证被使用", "Revoked pass used"),
    "conflict": ("跨门岗冲突", "Cross-gate conflict"),
    "door_forced": ("门被强行打开", "Door forced open"),
    "door_held_open": ("门长时间未关", "Door held open"),
    "camera_lost": ("摄像头故障", "Camera lost"),
    "gate_offline": ("门岗离线", "Gate offline"),
    "gate_history_lost": ("门岗丢失已提交记录", "Gate lost committed records"),
    "guard_locked": ("门卫 PIN 多次错误，人工放行已锁定", "Guard PIN guessed: overrides locked"),
    "document_too_large": (
        "名册或配置过大，无法下发到门岗",
        "Register or config too large to send to the gates",
    ),
}


@dataclass(frozen=True)
class Notice:
    """What a webhook may say about an alert: masked, no personal data."""

    alert_id: int
    kind: str
    priority: str
    gate: str | None
    at: str
    """When it happened (the gate's event time, else when the alert was raised)."""
    household: str | None = None
    pass_id: int | None = None
    temperature_c: float | None = None

    def to_json(self) -> dict[str, Any]:
        return dict(self.__dict__)


def notice_for(alert: Alert, store: Store) -> Notice:
    """The alert's notice; a fever alert gets the temperature and household of the
    gate's denial it follows (the alert event itself carries only the pass id): the
    latest decision for its pass at its gate at or before the alert's event time."""
    household, temperature = alert.household, None
    try:
        when: int | None = instant_us(alert.event_at or alert.at)
    except ValueError:  # a time that is not ISO 8601 follows no decision
        when = None
    if alert.pass_id is not None and alert.gate is not None and when is not None:
        with store.read() as tx:
            reading = alerts_db.last_decision(tx, alert.pass_id, alert.gate, when)
        if reading is not None:
            household = household or reading.household
            temperature = reading.temperature_c
    return Notice(
        alert.id,
        alert.kind,
        alert.priority,
        alert.gate,
        alert.event_at or alert.at,
        household,
        alert.pass_id,
        temperature,
    )


def texts(notice: Notice, site: str, tz: tzinfo) -> tuple[str, str]:
    """The message in zh-CN and en."""
    zh_kind, en_kind = KIND_TEXT.get(notice.kind, (notice.kind, notice.kind))
    try:
        when = datetime.fromisoformat(notice.at).astimezone(tz).strftime("%Y-%m-%d %H:%M:%S")
    except ValueError:
        when = notice.at
    zh = [f"【门卫告警】{zh_kind}", f"小区：{site}", f"门岗：{notice.gate or '-'}", f"时间：{when}"]
    en = [f"[Menwei alert] {en_kind}", f"Site: {site}", f"Gate: {notice.gate or '-'}"]
    en.append(f"Time: {when}")
    if notice.temperature_c is not None:
        zh.append(f"体温：{notice.temperature_c:.1f} °C")
        en.append(f"Temperature: {notice.temperature_c:.1f} °C")
    if notice.household:
        zh.append(f"户号：{notice.household}")
        en.append(f"Household: {notice.household}")
    if notice.kind == "fever":
        zh.append("请联系该户并安排前往发热门诊。")
        en.append("Please contact the household and arrange a fever clinic visit.")
    return "\n".join(zh), "\n".join(en)


def dingtalk_sign(secret: str, timestamp_ms: int) -> str:
    """DingTalk's 加签: url-encoded base64 of HMAC-SHA256(secret, "timestamp\\nsecret")."""
    digest = hmac.new(
        secret.encode(), f"{timestamp_ms}\n{secret}".encode(), hashlib.sha256
    ).digest()
    return urllib.parse.quote_plus(base64.b64encode(digest))


def render(
    notice: Notice, cfg: AlertsSection, site: str, tz: tzinfo, now_ms: int
) -> tuple[str, bytes]:
    """The URL and body of one delivery attempt."""
    zh, en = texts(notice, site, tz)
    url = cfg.webhook_url or ""
    if cfg.webhook_format == "json":
        texts_ = {"zh": zh, "en": en}
        body: dict[str, Any] = {"site": site, "alert": notice.to_json(), "text": texts_}
    else:
        body = {"msgtype": "text", "text": {"content": f"{zh}\n\n{en}"}}
        if cfg.webhook_format == "dingtalk" and cfg.webhook_secret:
            sep = "&" if "?" in url else "?"
            url += f"{sep}timestamp={now_ms}&sign={dingtalk_sign(cfg.webhook_secret, now_ms)}"
    return url, json.dumps(body, ensure_ascii=False).encode()


class DeliveryError(Exception):
    """One attempt failed (the message says why, without the URL's key or token)."""


def _post(url: str, body: bytes, timeout_s: float, robot: bool) -> None:
    req = urllib.request.Request(
        url, data=body, method="POST", headers={"Content-Type": "application/json; charset=utf-8"}
    )
    try:
        with urllib.request.urlopen(req, timeout=timeout_s) as resp:
            reply = resp.read(64 * 1024)
    except urllib.error.HTTPError as exc:
        raise DeliveryError(f"HTTP {exc.code}") from None
    except (urllib.error.URLError, TimeoutError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        raise DeliveryError(f"{type(exc).__name__}: {reason}") from None
    if robot:  # WeCom and DingTalk answer 200 with an error code in the body
        try:
            code = json.loads(reply).get("errcode")
        except (ValueError, AttributeError):
            raise DeliveryError("reply is not a JSON object") from None
        if code != 0:
            raise DeliveryError(f"errcode {code}")


class WebhookSender:
    """The sender thread; `stats` counts queued, sent, failed (after all attempts),
    retried attempts and dropped (queue full) alerts."""

    def __init__(
        self,
        cfg: AlertsSection,
        *,
        site: str,
        tz: tzinfo,
        backoff_s: float = 1.0,
        clock_ms: Callable[[], int] = lambda: int(time.time() * 1000),
    ) -> None:
        if not cfg.webhook_url:
            raise ValueError("no webhook_url configured")
        self.cfg = cfg
        self.site = site
        self.tz = tz
        self.backoff_s = backoff_s
        self._clock_ms = clock_ms
        self._queue: queue.Queue[Notice] = queue.Queue(cfg.webhook_queue)
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self.stats = {"queued": 0, "sent": 0, "failed": 0, "retries": 0, "dropped": 0}
        self._thread = threading.Thread(target=self._run, name="webhooks", daemon=True)
        host = urllib.parse.urlsplit(cfg.webhook_url).hostname or "?"
        self._where = f"{cfg.webhook_format} webhook at {host}"  # never log the key/token

    def wants(self, alert: Alert) -> bool:
        kinds = self.cfg.webhook_kinds
        return alert.kind in kinds or ("high" in kinds and alert.priority == "high")

    def submit(self, notice: Notice) -> bool:
        """Queue a notice without blocking; False (and counted) when the queue is full."""
        try:
            self._queue.put_nowait(notice)
        except queue.Full:
            self._count("dropped")
            log.warning("%s: queue full, alert %d not sent", self._where, notice.alert_id)
            return False
        self._count("queued")
        return True

    def start(self) -> None:
        self._thread.start()

    def close(self, drain_s: float = 2.0) -> None:
        """Give queued alerts `drain_s` to go out, then stop the thread."""
        end = time.monotonic() + drain_s
        while self._queue.unfinished_tasks and time.monotonic() < end:
            time.sleep(0.02)
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=self.cfg.webhook_timeout_s + 1)

    def _count(self, what: str) -> None:
        with self._lock:
            self.stats[what] += 1

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                notice = self._queue.get(timeout=0.2)
            except queue.Empty:
                continue
            try:
                self.deliver(notice)
            except Exception:  # a bug in formatting must not kill the sender
                self._count("failed")
                log.exception("%s: alert %d", self._where, notice.alert_id)
            finally:
                self._queue.task_done()

    def deliver(self, notice: Notice) -> bool:
        """Up to three attempts with backoff (1 s, 2 s by default). True when delivered."""
        robot = self.cfg.webhook_format != "json"
        for attempt in range(1, ATTEMPTS + 1):
            url, body = render(notice, self.cfg, self.site, self.tz, self._clock_ms())
            try:
                _post(url, body, self.cfg.webhook_timeout_s, robot)
            except DeliveryError as exc:
                log.warning(
                    "%s: alert %d attempt %d/%d failed: %s",
                    self._where,
                    notice.alert_id,
                    attempt,
                    ATTEMPTS,
                    exc,
                )
                if attempt == ATTEMPTS or self._stop.wait(self.backoff_s * 2 ** (attempt - 1)):
                    break
                self._count("retries")
                continue
            self._count("sent")
            return True
        self._count("failed")
        log.error("%s: alert %d not delivered", self._where, notice.alert_id)
        return False
