"""Login limits under attack: simultaneous guesses, many concurrent logins, forged
X-Forwarded-For. Against real stores (SQLite and PostgreSQL) and the dashboard served by
real uvicorn on a loopback port (DashboardServer, as `menwei server run --http` runs it).

The attacks are the ones that got through before: 24 simultaneous wrong guesses were all
checked before the limit cut in; 40 concurrent logins took ~2 GiB (Argon2id, 64 MiB
each); rotating X-Forwarded-For from 127.0.0.1 escaped the per-address limit.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest

from menwei.mosquitto import free_port
from server.config import ServerConfigError, load_server_config
from server.live import LiveFeed
from server.site import Site
from server.storage import Store
from server.storage import accounts as stored
from server.storage import dashboard as stored_dashboard
from server.web.accounts import (
    FAILS_PER_ACCOUNT_AND_ADDRESS,
    FAILS_PER_ADDRESS,
    AccountStore,
    LoginResult,
)
from server.web.cli import DashboardServer
from server.web.password_checks import PasswordChecks
from server.web.proxies import client_address, parse_networks

PASSWORD = "correct horse battery"
ADDRESS = "198.51.100.7"


def concurrently(n: int, act: Callable[[int], Any]) -> list[Any]:
    """`act(i)` for i in 0..n-1, each on its own thread, released together; their results."""
    barrier = threading.Barrier(n)
    results: list[Any] = [None] * n
    errors: list[BaseException] = []

    def run(i: int) -> None:
        barrier.wait()
        try:
            results[i] = act(i)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=240)
    assert not errors, errors
    return results


def failures(store: Store, account: str, address: str) -> tuple[int, int]:
    with store.read() as tx:
        return stored.failures_since(tx, account, address, "2000-01-01T00:00:00+00:00")


# --- attempts are counted before the password is hashed ---------------------------------


def test_simultaneous_wrong_guesses_are_counted_before_any_is_hashed(store_url: str) -> None:
    """24 wrong guesses at once, through two AccountStores on two connections to the store
    (two collector processes sharing one database): at most the limit are hashed."""
    with Store(store_url) as one, Store(store_url) as other:
        fronts = [
            AccountStore(s, checks=PasswordChecks(16)) for s in (one, other)
        ]  # slots enough for every guess: only the limit may stop them
        fronts[0].add("olga", "operator", PASSWORD, actor="test")

        results: list[LoginResult] = concurrently(
            24, lambda i: fronts[i % 2].login("olga", f"guess {i}", ADDRESS)
        )
        hashed = sum(f.checks.checked for f in fronts)
        assert hashed <= FAILS_PER_ACCOUNT_AND_ADDRESS
        assert sum(r.limited for r in results) == 24 - hashed
        assert not any(r.token or r.challenge for r in results)
        assert failures(one, "olga", ADDRESS) == (hashed, hashed)
        # the lockout holds: the right password is not even checked now
        assert fronts[1].login("olga", PASSWORD, ADDRESS).limited
        assert sum(f.checks.checked for f in fronts) == hashed
        # another address is not locked out
        assert fronts[0].login("olga", PASSWORD, "203.0.113.1").token


def test_spraying_many_accounts_at_once_stops_at_the_address_limit(store_url: str) -> None:
    """An address 3 failures short of its limit sprays 12 account names at once: 3 hashed."""
    with Store(store_url) as store:
        accounts = AccountStore(store, checks=PasswordChecks(12))
        now = accounts.clock().isoformat(timespec="seconds")
        with store.write() as tx:
            for i in range(FAILS_PER_ADDRESS - 3):
                stored.add_failure(tx, f"earlier{i}", ADDRESS, now)
        results = concurrently(12, lambda i: accounts.login(f"user{i}", "guess", ADDRESS))
        assert accounts.checks.checked == 3
        assert sum(r.limited for r in results) == 9
        assert failures(store, "user0", ADDRESS)[1] == FAILS_PER_ADDRESS


# --- the dashboard, served ---------------------------------------------------------------


def set_web(directory: Path, **values: str) -> None:
    """Set keys of server.toml's [web] table (values as TOML text)."""
    path = directory / "server.toml"
    text = path.read_text(encoding="utf-8")
    for key, value in values.items():
        text, n = re.subn(rf"(?m)^{key} = .*$", f"{key} = {value}", text)
        assert n == 1, key
    path.write_text(text, encoding="utf-8")


@contextmanager
def served(site: Site) -> Iterator[tuple[str, DashboardServer]]:
    """The dashboard of `site` on real uvicorn, 127.0.0.1 and a free port."""
    server = DashboardServer(site.dir, LiveFeed(), "127.0.0.1", free_port())
    server.start()
    try:
        yield f"http://{server.where}", server
    finally:
        server.close()


def login(base: str, client: httpx.Client, name: str, password: str, **headers: str) -> Any:
    page = client.get(f"{base}/login")
    csrf = re.search(r'name="csrf" value="([^"]+)"', page.text)
    assert csrf
    return client.post(
        f"{base}/login",
        data={"name": name, "password": password, "csrf": csrf.group(1), "next": "/"},
        headers=headers,
    )


def audit(site: Site, action: str) -> list[dict[str, Any]]:
    with site.store.read() as tx:
        entries = stored_dashboard.audit_entries(tx, 10_000)
    return [e for e in reversed(entries) if e["action"] == action]


def test_forty_concurrent_logins_hash_at_most_the_bound_and_the_rest_are_told_busy(
    site: Site,
) -> None:
    AccountStore(site.store).add("ada", "admin", PASSWORD, actor="test")
    with served(site) as (base, server):
        clients = [httpx.Client(timeout=120) for _ in range(40)]
        csrfs = []
        for c in clients:
            page = c.get(f"{base}/login")
            csrfs.append(re.search(r'name="csrf" value="([^"]+)"', page.text).group(1))  # type: ignore[union-attr]

        def post(i: int) -> httpx.Response:
            data = {"name": "ada", "password": PASSWORD, "csrf": csrfs[i], "next": "/"}
            return clients[i].post(f"{base}/login", data=data)

        answers = concurrently(40, post)
        metrics = httpx.get(f"{base}/metrics").text
        for c in clients:
            c.close()
    checks = server.app.state.dashboard.accounts.checks
    statuses = [r.status_code for r in answers]
    busy = [r for r in answers if r.status_code == 503]
    assert set(statuses) <= {303, 503}
    assert busy, "40 logins at once with 2 slots: some must have been told to wait"
    assert all(r.headers["retry-after"] == "2" for r in busy)
    assert all("正在处理其他登录" in r.text for r in busy)
    assert checks.peak <= checks.slots == 2
    assert checks.checked == statuses.count(303)
    assert checks.busy == len(busy)
    assert f"menwei_dashboard_password_checks_peak {float(checks.peak)}" in metrics
    assert f"menwei_dashboard_logins_busy_total {float(len(busy))}" in metrics
    # a busy answer is no attempt: nothing counted against ada
    assert failures(site.store, "ada", "127.0.0.1") == (0, 0)


def test_rotating_x_forwarded_for_from_an_untrusted_peer_changes_nothing(site: Site) -> None:
    AccountStore(site.store).add("olga", "operator", PASSWORD, actor="test")
    with served(site) as (base, _server), httpx.Client(timeout=60) as client:
        codes = [
            login(base, client, "olga", "guess", **{"X-Forwarded-For": f"10.1.2.{i}"}).status_code
            for i in range(8)
        ]
        right = login(base, client, "olga", PASSWORD, **{"X-Forwarded-For": "10.9.9.9"})
    assert codes == [401] * FAILS_PER_ACCOUNT_AND_ADDRESS + [429] * 3
    assert right.status_code == 429
    assert {e["target"] for e in audit(site, "login_failed")} == {"127.0.0.1"}


def test_behind_a_trusted_proxy_the_rightmost_untrusted_address_is_the_client(
    site: Site,
) -> None:
    AccountStore(site.store).add("olga", "operator", PASSWORD, actor="test")
    set_web(site.dir, trusted_proxies='["127.0.0.1", "10.0.0.0/8"]')
    with served(site) as (base, _server), httpx.Client(timeout=60) as client:
        # The client writes whatever it likes on the left; our proxies append what they saw.
        codes = [
            login(
                base,
                client,
                "olga",
                "guess",
                **{"X-Forwarded-For": f"192.0.2.{i}, 203.0.113.5, 10.0.0.2"},
            ).status_code
            for i in range(7)
        ]
        other = login(base, client, "olga", PASSWORD, **{"X-Forwarded-For": "203.0.113.6"})
        secure = other.headers["set-cookie"]
    assert codes == [401] * FAILS_PER_ACCOUNT_AND_ADDRESS + [429] * 2
    assert {e["target"] for e in audit(site, "login_failed")} == {"203.0.113.5"}
    assert other.status_code == 303  # another client behind the proxy is not locked out
    assert [e["target"] for e in audit(site, "login")] == ["203.0.113.6"]
    assert "secure" not in secure.lower()  # no X-Forwarded-Proto: plain http

    with served(site) as (base, _server), httpx.Client(timeout=60) as client:
        https = login(
            base,
            client,
            "olga",
            PASSWORD,
            **{"X-Forwarded-For": "203.0.113.7", "X-Forwarded-Proto": "https"},
        )
    assert https.status_code == 303 and "secure" in https.headers["set-cookie"].lower()


def test_client_address_walks_forwarded_for_from_the_right() -> None:
    trusted = parse_networks(["127.0.0.1", "10.0.0.0/8", "::1"])
    assert client_address("192.0.2.9", ["1.2.3.4"], trusted) == "192.0.2.9"  # untrusted peer
    assert client_address("127.0.0.1", [], trusted) == "127.0.0.1"
    assert client_address("127.0.0.1", ["1.1.1.1, 203.0.113.5"], trusted) == "203.0.113.5"
    assert client_address("127.0.0.1", ["1.1.1.1", "203.0.113.5, 10.2.3.4"], trusted) == (
        "203.0.113.5"
    )
    assert client_address("::1", ["2001:db8::7"], trusted) == "2001:db8::7"
    assert client_address("127.0.0.1", ["[2001:db8::7]:4711"], trusted) == "2001:db8::7"
    assert client_address("127.0.0.1", ["203.0.113.5:4711"], trusted) == "203.0.113.5"
    # only trusted hops: the left-most is the client
    assert client_address("127.0.0.1", ["10.0.0.3, 10.0.0.2"], trusted) == "10.0.0.3"
    # garbage where an address must be: the last trusted hop, never the garbage
    assert client_address("127.0.0.1", ["1.1.1.1, evil"], trusted) == "127.0.0.1"
    assert client_address("127.0.0.1", ["evil, 10.0.0.2"], trusted) == "10.0.0.2"


def test_a_trusted_proxy_that_is_no_address_is_a_config_error(site: Site) -> None:
    set_web(site.dir, trusted_proxies='["127.0.0.1", "proxy.example"]')
    with pytest.raises(ServerConfigError, match=r"proxy\.example"):
        load_server_config(site.dir)
    set_web(site.dir, trusted_proxies='["10.0.0.0/8"]', password_checks_at_once="0")
    with pytest.raises(ServerConfigError, match="password_checks_at_once"):
        load_server_config(site.dir)
