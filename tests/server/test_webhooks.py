"""Webhooks against a real local HTTP server: the body of each format, DingTalk's signature
(checked independently here), retries, timeouts, a full queue, masked content, and a fever
alert going from a gate's batch through the real collector to the webhook."""

from __future__ import annotations

import base64
import dataclasses
import hashlib
import hmac
import json
import threading
import time
import urllib.parse
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest

from menwei.mosquitto import MosquittoBroker
from protocol import topics
from protocol.broker import parse_broker
from protocol.events import encode_batch
from server.collector import Collector
from server.config import AlertsSection, ServerConfigError, load_server_config
from server.site import IssuedPass, Site
from server.webhooks import Notice, WebhookSender, notice_for
from tests import collected
from tests.conftest import SITE
from tests.e2e.helpers import make_event, mqtt_client, publish, wait_until

TZ = ZoneInfo("Asia/Shanghai")
FEVER = Notice(7, "fever", "high", "east", "2026-03-01T00:12:03+00:00", "1-1-101", 3, 38.4)


@dataclass
class Hook:
    """A local webhook receiver; `replies` are (status, body, delay_s) used in turn."""

    url: str
    requests: list[tuple[str, dict[str, str], bytes]] = field(default_factory=list)
    replies: list[tuple[int, bytes, float]] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def wait(self, n: int, timeout: float = 10) -> None:
        wait_until(lambda: len(self.requests) >= n, timeout, lambda: f"{self.requests}")

    def body(self, i: int = -1) -> Any:
        return json.loads(self.requests[i][2])


@pytest.fixture
def hook() -> Iterator[Hook]:
    state: dict[str, Hook] = {}

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            h = state["hook"]
            body = self.rfile.read(int(self.headers["Content-Length"]))
            with h.lock:
                h.requests.append((self.path, dict(self.headers), body))
                status, reply, delay = h.replies.pop(0) if h.replies else (200, b"{}", 0.0)
            time.sleep(delay)
            try:
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(reply)))
                self.end_headers()
                self.wfile.write(reply)
            except OSError:
                pass  # the client gave up (timeout test)

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    state["hook"] = Hook(f"http://127.0.0.1:{server.server_address[1]}/robot/send?access_token=t0k")
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield state["hook"]
    server.shutdown()
    server.server_close()


def sender(hook: Hook, **kw: Any) -> WebhookSender:
    cfg = AlertsSection(webhook_url=hook.url, **kw)
    return WebhookSender(cfg, site=SITE, tz=TZ, backoff_s=0.01)


def send_one(s: WebhookSender, notice: Notice = FEVER) -> None:
    s.start()
    try:
        assert s.submit(notice)
        wait_until(lambda: s.stats["sent"] + s.stats["failed"] == 1, 20, lambda: f"{s.stats}")
    finally:
        s.close()


# --- formats ---------------------------------------------------------------------------------


def test_plain_json_carries_the_alert_fields_and_both_languages(hook: Hook) -> None:
    s = sender(hook)
    send_one(s)
    path, headers, _ = hook.requests[0]
    assert path == "/robot/send?access_token=t0k"
    assert headers["Content-Type"].startswith("application/json")
    body = hook.body()
    assert body["site"] == SITE
    assert body["alert"] == {
        "alert_id": 7,
        "kind": "fever",
        "priority": "high",
        "gate": "east",
        "at": "2026-03-01T00:12:03+00:00",
        "household": "1-1-101",
        "pass_id": 3,
        "temperature_c": 38.4,
    }
    assert "体温异常" in body["text"]["zh"] and "38.4 °C" in body["text"]["zh"]
    assert "2026-03-01 08:12:03" in body["text"]["zh"], "local time of the site"
    assert "Fever" in body["text"]["en"] and "1-1-101" in body["text"]["en"]
    assert s.stats == {"queued": 1, "sent": 1, "failed": 0, "retries": 0, "dropped": 0}


def test_wecom_group_robot_text_message(hook: Hook) -> None:
    hook.replies.append((200, b'{"errcode":0,"errmsg":"ok"}', 0))
    s = sender(hook, webhook_format="wecom")
    send_one(s)
    body = hook.body()
    assert set(body) == {"msgtype", "text"} and body["msgtype"] == "text"
    content = body["text"]["content"]
    assert content.startswith("【门卫告警】体温异常")
    assert "[Menwei alert] Fever" in content and "门岗：east" in content
    assert len(content.encode()) <= 2048, "WeCom's limit for a text message"
    assert s.stats["sent"] == 1


def test_robot_error_code_is_a_failed_attempt(hook: Hook) -> None:
    hook.replies += [(200, b'{"errcode":93000,"errmsg":"invalid webhook url"}', 0)] * 3
    s = sender(hook, webhook_format="wecom")
    send_one(s)
    assert len(hook.requests) == 3
    assert s.stats["failed"] == 1 and s.stats["sent"] == 0 and s.stats["retries"] == 2


def test_dingtalk_text_message_signed_with_the_secret(hook: Hook) -> None:
    secret = "SEC0123456789abcdef+/="
    hook.replies.append((200, b'{"errcode":0,"errmsg":"ok"}', 0))
    before = int(time.time() * 1000)
    s = sender(hook, webhook_format="dingtalk", webhook_secret=secret)
    send_one(s)
    path, _, _ = hook.requests[0]
    parts = urllib.parse.urlsplit(path)
    assert parts.path == "/robot/send"
    query = urllib.parse.parse_qs(parts.query, strict_parsing=True)
    assert query["access_token"] == ["t0k"]
    (ts,) = query["timestamp"]
    assert before <= int(ts) <= int(time.time() * 1000)
    expected = base64.b64encode(
        hmac.new(secret.encode(), f"{ts}\n{secret}".encode(), hashlib.sha256).digest()
    ).decode()
    assert query["sign"] == [expected]
    body = hook.body()
    assert body["msgtype"] == "text" and "【门卫告警】" in body["text"]["content"]


def test_dingtalk_without_a_secret_is_not_signed(hook: Hook) -> None:
    hook.replies.append((200, b'{"errcode":0}', 0))
    send_one(sender(hook, webhook_format="dingtalk"))
    assert hook.requests[0][0] == "/robot/send?access_token=t0k"


# --- delivery --------------------------------------------------------------------------------


def test_server_errors_are_retried_until_it_works(hook: Hook) -> None:
    hook.replies += [(500, b"oops", 0), (502, b"bad gateway", 0)]
    s = sender(hook)
    send_one(s)
    assert len(hook.requests) == 3
    assert hook.body(0) == hook.body(2), "the same message every attempt"
    assert s.stats["sent"] == 1 and s.stats["retries"] == 2 and s.stats["failed"] == 0


def test_a_webhook_that_does_not_answer_times_out_and_is_counted(hook: Hook) -> None:
    hook.replies += [(200, b"{}", 1.0)] * 3
    s = sender(hook, webhook_timeout_s=0.2)
    s.start()
    t0 = time.monotonic()
    assert s.submit(FEVER)
    assert time.monotonic() - t0 < 0.05, "submit never waits for the network"
    wait_until(lambda: s.stats["failed"] == 1, 10, lambda: f"{s.stats}")
    s.close()
    assert len(hook.requests) == 3 and s.stats["sent"] == 0


def test_unreachable_webhook_fails_after_three_attempts() -> None:
    cfg = AlertsSection(webhook_url="http://127.0.0.1:9/hook", webhook_timeout_s=0.5)
    s = WebhookSender(cfg, site=SITE, tz=TZ, backoff_s=0.01)
    assert s.deliver(FEVER) is False
    assert s.stats["failed"] == 1 and s.stats["retries"] == 2


def test_a_full_queue_drops_and_counts(hook: Hook) -> None:
    s = sender(hook, webhook_queue=2)
    results = [s.submit(dataclasses.replace(FEVER, alert_id=i)) for i in range(4)]
    assert results == [True, True, False, False]
    assert s.stats["dropped"] == 2 and s.stats["queued"] == 2
    s.start()
    wait_until(lambda: s.stats["sent"] == 2, 10, lambda: f"{s.stats}")
    s.close()
    assert sorted(hook.body(i)["alert"]["alert_id"] for i in range(2)) == [0, 1]


def test_kinds_select_what_is_pushed(site: Site, hook: Hook) -> None:
    fever = site.alerts.raise_alert("k1", "fever", gate="east")
    forged = site.alerts.raise_alert("k2", "forged", gate="east")
    offline = site.alerts.raise_alert("k3", "gate_offline", gate="east")
    assert fever and forged and offline
    only_fever = sender(hook)
    assert [only_fever.wants(a) for a in (fever, forged, offline)] == [True, False, False]
    high = sender(hook, webhook_kinds=("high", "gate_offline"))
    assert [high.wants(a) for a in (fever, forged, offline)] == [True, True, True]


def test_a_gate_that_lost_its_history_is_a_high_alert_naming_the_range(
    site: Site, hook: Hook
) -> None:
    collected.insert_events(
        site.store, "east", [make_event(SITE, "east", s, epoch="aa") for s in (1, 2, 3)]
    )
    detail = {
        "priority": "high",
        "epoch": "aa",
        "new_epoch": "bb",
        "confirmed_seq": 1,
        "last_seq": 1,
        "collector_seq": 3,
        "moved": 0,
    }
    lost = make_event(
        SITE, "east", 1, epoch="bb", kind="alert", decision=None, reason="gate_history_lost",
        direction=None, pass_id=None, household=None, role=None, detail=detail,
    )  # fmt: skip
    collected.insert_events(site.store, "east", [lost])
    alert = site.alerts.from_event(lost)
    assert alert is not None and (alert.kind, alert.priority) == ("gate_history_lost", "high")
    assert alert.detail.startswith("epoch aa seq 2..3 held by the collector, not by the gate")
    assert sender(hook, webhook_kinds=("high",)).wants(alert)
    assert not sender(hook).wants(alert)  # fever only, by default


# --- masked content, end to end ----------------------------------------------------------------


def fever_batch(resident: IssuedPass, gate: str = "east") -> bytes:
    p = resident.pass_id
    denial = make_event(
        SITE, gate, 1, decision="deny", reason="fever", direction="in", pass_id=p,
        household="1-1-101", temperature_c=38.6,
    )  # fmt: skip
    alert = make_event(
        SITE, gate, 2, kind="alert", decision=None, reason="fever", direction="in", pass_id=p,
        household=None, role=None, detail={"priority": "high"},
    )  # fmt: skip
    return encode_batch(gate, [denial, alert])


def test_fever_alert_through_the_collector_reaches_the_webhook_masked(
    site: Site, resident: IssuedPass, broker: MosquittoBroker, hook: Hook
) -> None:
    alerts = AlertsSection(webhook_url=hook.url, webhook_format="wecom")
    site.config = dataclasses.replace(site.config, alerts=alerts)
    hook.replies.append((200, b'{"errcode":0,"errmsg":"ok"}', 0))
    with Collector(site, parse_broker(broker.url)) as collector:
        collector.start()
        wait_until(collector.connected.is_set, 15, "collector did not connect")
        gate = mqtt_client(broker.url)
        try:
            publish(gate, topics.events(SITE, "east"), fever_batch(resident))
            hook.wait(1)
        finally:
            gate.disconnect()
            gate.loop_stop()
        assert collector.webhooks is not None
        wait_until(lambda: collector.webhooks and collector.webhooks.stats["sent"] == 1, 10, "sent")
    content = hook.body()["text"]["content"]
    assert "38.6 °C" in content and "1-1-101" in content and "east" in content
    assert "张" not in content and "三丰" not in content, "no names"
    (alert,) = site.alerts.list()
    notice = notice_for(alert, site.store)
    assert notice.temperature_c == 38.6 and notice.household == "1-1-101"


# --- configuration -----------------------------------------------------------------------------


def write_alerts(site: Site, table: str) -> Path:
    path = site.dir / "server.toml"
    text = path.read_text(encoding="utf-8")
    start = text.index("[alerts]")
    path.write_text(text[:start] + table, encoding="utf-8")
    return site.dir


def test_default_server_toml_documents_the_alerts_defaults(site: Site) -> None:
    assert load_server_config(site.dir).alerts == AlertsSection()


def test_alerts_section_is_read_strictly(site: Site) -> None:
    d = write_alerts(
        site,
        '[alerts]\nwebhook_url = "https://oapi.dingtalk.com/robot/send?access_token=x"\n'
        'webhook_format = "dingtalk"\nwebhook_secret = "SECabc"\nwebhook_kinds = ["high"]\n'
        "gate_offline_after_min = 2\n",
    )
    a = load_server_config(d).alerts
    assert a.webhook_format == "dingtalk" and a.webhook_kinds == ("high",)
    assert a.gate_offline_after_min == 2.0 and a.webhook_secret == "SECabc"
    bad = {
        'webhook_format = "slack"': "webhook_format",
        'webhook_url = "ftp://x"': "http",
        "webhook_timeout_s = 0": "webhook_timeout_s",
        "webhook_kinds = []": "webhook_kinds",
        'webhook_secret = "s"': "dingtalk",
        "gate_offline_after_min = 0": "gate_offline_after_min",
        "webhook_queue = 0": "webhook_queue",
        "webhok_url = 1": "unknown key",
    }
    for line, why in bad.items():
        write_alerts(site, f"[alerts]\n{line}\n")
        with pytest.raises(ServerConfigError, match=why):
            load_server_config(d)
