"""`menwei operator ...`: dashboard accounts from the command line.

`menwei server run DIR --http HOST:PORT` (server/cli.py) serves the dashboard
itself; `serve_in_thread` here is how it runs beside the collector.
"""

from __future__ import annotations

import argparse
import getpass
import json
import sys
import threading
import time
from pathlib import Path
from typing import Any

from server.collector import Collector
from server.live import LiveFeed
from server.policy_rollout import PolicyTrial
from server.site import Site, actor
from server.web.accounts import PASSWORD_MIN, ROLES, AccountError, AccountStore
from server.web.totp import qr_terminal, secret_of


def register(groups: dict[str, Any]) -> None:
    """Add this module's commands to the `root`, `server` and `pass` subparser groups."""
    root = groups["root"]
    op = root.add_parser("operator", help="dashboard accounts (admin, operator, viewer)")
    ops = op.add_subparsers(dest="action", required=True, metavar="ACTION")
    p = ops.add_parser("add", help="create a dashboard account (password typed twice, or stdin)")
    p.add_argument("dir", type=Path)
    p.add_argument("name")
    p.add_argument(
        "--role",
        choices=ROLES,
        required=True,
        help="viewer: reads only; operator: also acknowledges alerts and quarantines"
        " households; admin: everything",
    )
    p.add_argument(
        "--password-stdin", action="store_true", help="read the password from standard input"
    )
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_operator_add)
    p = ops.add_parser("list", help="the dashboard accounts")
    p.add_argument("dir", type=Path)
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_operator_list)
    p = ops.add_parser("totp", help="two-factor login (TOTP) of a dashboard account")
    totp_ops = p.add_subparsers(dest="totp_action", required=True, metavar="ACTION")
    p = totp_ops.add_parser(
        "enable",
        help="switch TOTP on with a new secret: prints its otpauth:// URI, a QR code for an"
        " authenticator app and one-time recovery codes (shown once; replaces a secret on)",
    )
    p.add_argument("dir", type=Path)
    p.add_argument("name")
    p.add_argument("--json", action="store_true", help="uri and recovery_codes as JSON, no QR")
    p.set_defaults(func=cmd_totp_enable)
    p = totp_ops.add_parser(
        "disable", help="switch TOTP off (an admin who lost the phone and the recovery codes)"
    )
    p.add_argument("dir", type=Path)
    p.add_argument("name")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_totp_disable)


def _read_password(from_stdin: bool) -> str:
    if from_stdin:
        return sys.stdin.readline().rstrip("\r\n")
    first = getpass.getpass(f"password (at least {PASSWORD_MIN} characters): ")
    if getpass.getpass("again: ") != first:
        raise AccountError("the two passwords differ")
    return first


def cmd_operator_add(args: argparse.Namespace) -> int:
    try:
        password = _read_password(args.password_stdin)
        with Site(args.dir) as site:
            operator = AccountStore(site.store).add(args.name, args.role, password, actor=actor())
    except AccountError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    result = {"name": operator.name, "role": operator.role, "created_at": operator.created_at}
    if args.json:
        print(json.dumps(result, ensure_ascii=False))
    else:
        print(f"operator {operator.name} ({operator.role}) added")
    return 0


def cmd_operator_list(args: argparse.Namespace) -> int:
    with Site(args.dir) as site:
        operators = AccountStore(site.store).list()
    if args.json:
        print(json.dumps([o.to_json() for o in operators], ensure_ascii=False))
    else:
        for o in operators:
            second = "totp" if o.totp else "password only"
            print(f"{o.name:24s} {o.role:9s} {second:13s} last login {o.last_login_at or 'never'}")
    return 0


def cmd_totp_enable(args: argparse.Namespace) -> int:
    try:
        with Site(args.dir) as site:
            uri, codes = AccountStore(site.store, site=site.site).enable_totp(
                args.name, actor=actor()
            )
    except AccountError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps({"name": args.name, "uri": uri, "recovery_codes": list(codes)}))
        return 0
    print(f"two-factor login is on for {args.name}. Scan this with an authenticator app:\n")
    print(qr_terminal(uri))
    print(f"or enter the secret by hand: {secret_of(uri)}\n({uri})\n")
    print("recovery codes (each logs in once in place of a code; shown only now):")
    for code in codes:
        print(f"  {code}")
    return 0


def cmd_totp_disable(args: argparse.Namespace) -> int:
    try:
        with Site(args.dir) as site:
            was_on = AccountStore(site.store).disable_totp(args.name, actor=actor())
    except AccountError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps({"name": args.name, "was_on": was_on}))
    else:
        print(f"two-factor login is off for {args.name}" + ("" if was_on else " (it was off)"))
    return 0


def parse_http(text: str) -> tuple[str, int]:
    """HOST:PORT (or [v6]:PORT) → (host, port)."""
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit() or not 0 < int(port) < 65536:
        raise argparse.ArgumentTypeError(f"{text!r} is not HOST:PORT")
    return host.strip("[]") or "127.0.0.1", int(port)


class DashboardError(RuntimeError):
    """The dashboard could not be served."""


class DashboardServer:
    """uvicorn on its own thread, with the dashboard's own Site (connections) for `directory`."""

    def __init__(
        self,
        directory: Path,
        feed: LiveFeed,
        host: str,
        port: int,
        collector: Collector | None = None,
        trial: PolicyTrial | None = None,
    ) -> None:
        import uvicorn

        from server.web.app import create_app

        self.app = create_app(directory, feed, collector, trial)
        config = uvicorn.Config(
            self.app,
            host=host,
            port=port,
            log_level="warning",
            access_log=False,
            timeout_graceful_shutdown=3,
            lifespan="on",
            # The app decides whose X-Forwarded-For to believe ([web] trusted_proxies,
            # server/web/proxies.py); uvicorn's own would believe any local process.
            proxy_headers=False,
        )
        self.server = uvicorn.Server(config)
        self.where = f"{host}:{port}"
        self.thread = threading.Thread(target=self.server.run, name="dashboard", daemon=True)

    def start(self, timeout_s: float = 15.0) -> None:
        """Start serving; raises if the server did not come up (port taken, bad host)."""
        self.thread.start()
        end = time.monotonic() + timeout_s
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() > end:
                raise DashboardError(f"the dashboard could not listen on {self.where}")
            time.sleep(0.05)

    def close(self) -> None:
        # Live streams end first, so uvicorn's graceful shutdown is not spent waiting on them.
        self.app.state.dashboard.stopping.set()
        self.server.should_exit = True
        if self.thread.is_alive():
            self.thread.join(timeout=10)

    def __enter__(self) -> DashboardServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
