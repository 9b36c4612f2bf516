"""Login benchmark: C simultaneous dashboard logins against a real `menwei server run`.

The collector runs as an operator runs it, in its own process (`menwei server run DIR
--broker URL --http 127.0.0.1:PORT`, a private Mosquitto, a server directory made by
`menwei server init` with one admin account). This process opens C HTTP clients, each
fetches the login form (its CSRF cookie), then in each of R rounds the C clients post the
right password at once, released by a barrier. Each answer is counted: 303 logged in,
503 busy (every password check slot in use: refused without hashing), 429 limited.

`rss_idle_mb` is the collector's RSS (VmRSS) before the first round, `rss_peak_mb` its
peak (VmHWM) after the last: what the logins cost in memory. Argon2id takes 64 MiB per
check, so without a bound 40 logins at once took ~2 GiB; with `[web]
password_checks_at_once` = N (default 2, set here by `--password-checks`) the peak stays
about N × 64 MiB above idle. `checks_peak` is the most checks the server ran at once (its
/metrics). `attempts_per_s` counts answers of every kind, `logins_per_s` the 303s.

The CLI (`menwei bench login`) calls `run_login_bench`.
"""

from __future__ import annotations

import contextlib
import logging
import re
import tempfile
import threading
import time
from pathlib import Path

import httpx

from menwei.collector_process import CollectorFleet, CollectorProcessError, init_server, peak_rss_mb
from menwei.mosquitto import MosquittoBroker, free_port
from server.site import Site
from server.web.accounts import AccountStore

logging.getLogger("httpx").setLevel(logging.WARNING)  # one line per request otherwise

SITE = "bench-site"
ADMIN = "bench-admin"
PASSWORD = "bench-password-2026"


def rss_mb(pid: int) -> float:
    """The resident set size (VmRSS of /proc/PID/status) of a running process, MiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise CollectorProcessError(f"no VmRSS in /proc/{pid}/status")


def _metric(text: str, name: str) -> float:
    found = re.search(rf"(?m)^{name} (\S+)$", text)
    return float(found.group(1)) if found else float("nan")


def _wait_healthy(base: str, fleet: CollectorFleet, timeout_s: float = 30.0) -> None:
    end = time.monotonic() + timeout_s
    while time.monotonic() < end:
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(f"{base}/healthz", timeout=2).status_code == 200:
                return
        time.sleep(0.1)
    raise CollectorProcessError(f"the dashboard did not answer at {base}: {fleet.log_tail()}")


def _login_form(base: str, client: httpx.Client) -> dict[str, str]:
    """A fresh login form for `client` (its CSRF cookie; a session of the last round is
    dropped first, or the login page would redirect): the fields to post."""
    client.cookies.clear()
    page = client.get(f"{base}/login")
    token = re.search(r'name="csrf" value="([^"]+)"', page.text)
    if token is None:
        raise CollectorProcessError(f"no login form at {base}/login ({page.status_code})")
    return {"name": ADMIN, "password": PASSWORD, "csrf": token.group(1)}


def run_login_bench(
    concurrency: int = 40, rounds: int = 3, password_checks: int | None = None
) -> dict[str, object]:
    """The numbers of the module doc. Raises ValueError for bad sizes, CollectorProcessError
    or BrokerError when a part does not start."""
    if concurrency < 1 or rounds < 1:
        raise ValueError("--concurrency and --rounds must be at least 1")
    if password_checks is not None and not 1 <= password_checks <= 16:
        raise ValueError("--password-checks must be 1..16")
    with contextlib.ExitStack() as stack:
        work = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="menwei-bench-login-")))
        broker = stack.enter_context(MosquittoBroker(workdir=work))
        server_dir = work / "server"
        init_server(server_dir, SITE)
        if password_checks is not None:
            toml = server_dir / "server.toml"
            text = re.sub(
                r"(?m)^password_checks_at_once = \d+",
                f"password_checks_at_once = {password_checks}",
                toml.read_text(encoding="utf-8"),
            )
            toml.write_text(text, encoding="utf-8")
        with Site(server_dir) as site:
            AccountStore(site.store).add(ADMIN, "admin", PASSWORD, actor="bench")
            slots = site.config.web.password_checks_at_once
        port = free_port()
        base = f"http://127.0.0.1:{port}"
        fleet = stack.enter_context(
            CollectorFleet(
                server_dir,
                SITE,
                broker.url,
                log_dir=work,
                extra_args=("--http", f"127.0.0.1:{port}"),
            )
        )
        _wait_healthy(base, fleet)
        pid = fleet.procs[0].pid
        clients = [stack.enter_context(httpx.Client(timeout=300)) for _ in range(concurrency)]
        rss_idle = rss_mb(pid)
        statuses: list[int] = []
        lock = threading.Lock()
        seconds = 0.0
        for _ in range(rounds):
            forms = [_login_form(base, client) for client in clients]
            barrier = threading.Barrier(concurrency)

            def post(
                i: int,
                barrier: threading.Barrier = barrier,
                forms: list[dict[str, str]] = forms,
            ) -> None:
                barrier.wait()
                try:
                    status = clients[i].post(f"{base}/login", data=forms[i]).status_code
                except httpx.HTTPError:
                    status = 0
                with lock:
                    statuses.append(status)

            threads = [threading.Thread(target=post, args=(i,)) for i in range(concurrency)]
            t0 = time.monotonic()
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            seconds += time.monotonic() - t0
        rss_peak = peak_rss_mb(pid)
        metrics = httpx.get(f"{base}/metrics", timeout=10).text
    attempts = len(statuses)
    logged_in = statuses.count(303)
    return {
        "concurrency": concurrency,
        "rounds": rounds,
        "password_checks_at_once": slots,
        "attempts": attempts,
        "logged_in": logged_in,
        "busy": statuses.count(503),
        "limited": statuses.count(429),
        "other": attempts - logged_in - statuses.count(503) - statuses.count(429),
        "seconds": round(seconds, 3),
        "attempts_per_s": round(attempts / seconds, 1),
        "logins_per_s": round(logged_in / seconds, 1),
        "checks_peak": _metric(metrics, "menwei_dashboard_password_checks_peak"),
        "rss_idle_mb": round(rss_idle, 1),
        "rss_peak_mb": round(rss_peak, 1),
    }
