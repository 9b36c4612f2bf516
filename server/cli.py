"""`menwei server ...` and `menwei pass ...`: the server directory from the command line."""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import logging
import signal
import sys
import threading
from pathlib import Path
from typing import Any

import segno

from protocol.broker import parse_broker
from protocol.errors import ProtocolError
from protocol.files import read_bounded
from protocol.output import render
from server import admin_cli
from server.collector import Collector
from server.config import MqttSection, ServerConfigError, check_share_name
from server.policy_rollout import PolicyTrial
from server.site import Site
from server.storage import events as events_db
from server.storage import gates as gates_db
from server.validity import window_json
from server.web import cli as web_cli

log = logging.getLogger("menwei.server")


def register(
    sub: argparse._SubParsersAction[argparse.ArgumentParser], trial: PolicyTrial | None = None
) -> None:
    """Add `server`, `pass`, `household` and the feature modules' commands. `trial` (the
    policy try-out over the gates' decision core, which `server` cannot import) is handed to
    the dashboard of `server run`."""
    server = sub.add_parser("server", help="the central collector and its directory")
    s = server.add_subparsers(dest="action", required=True, metavar="ACTION")

    p = s.add_parser("init", help="create a server directory (config, signing key, store)")
    p.add_argument("dir", type=Path)
    p.add_argument("--site", default="demo-site", help="site slug (default: demo-site)")
    p.add_argument(
        "--store",
        metavar="URL",
        help="where the store lives: postgresql://USER@HOST:PORT/DB (default: server.db, SQLite,"
        " in DIR); written to server.toml [store] url",
    )
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    p.set_defaults(func=cmd_init)

    p = s.add_parser("run", help="run the collector (MQTT → store, acks, documents)")
    p.add_argument("dir", type=Path)
    p.add_argument("--broker", help="mqtt://HOST:PORT (default: server.toml [mqtt] broker)")
    p.add_argument(
        "--http",
        type=web_cli.parse_http,
        metavar="HOST:PORT",
        help="also serve the operator dashboard here (e.g. 127.0.0.1:8080)",
    )
    p.add_argument(
        "--shared-group",
        metavar="NAME",
        help="share the gates' events with the other collectors of group NAME on this store"
        " (MQTT v5 $share; default: server.toml [mqtt] shared_group)",
    )
    p.add_argument(
        "--mqtt-username",
        metavar="NAME",
        help="log in to the broker as NAME (default: [mqtt] username); each collector process"
        " needs its own user with the shipped broker",
    )
    p.add_argument(
        "--mqtt-password-file",
        type=Path,
        metavar="FILE",
        help="the broker password: the first line of FILE (default: [mqtt] password)",
    )
    p.add_argument(
        "--mqtt-cert-file",
        type=Path,
        metavar="FILE",
        help="this collector's broker certificate, e.g. DIR/broker/collector-2.pem from "
        "`menwei broker add-client` (default: [mqtt] cert_file); with --mqtt-key-file",
    )
    p.add_argument(
        "--mqtt-key-file",
        type=Path,
        metavar="FILE",
        help="its private key (default: [mqtt] key_file)",
    )
    p.set_defaults(func=cmd_run, trial=trial)

    p = s.add_parser("export", help="every stored event, one JSON object per line")
    p.add_argument("dir", type=Path)
    p.add_argument("--format", choices=["jsonl"], default="jsonl")
    p.set_defaults(func=cmd_export)

    p = s.add_parser("status", help="gates, their progress and store counts")
    p.add_argument("dir", type=Path)
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_status)

    p = s.add_parser(
        "doctor",
        help="check server.toml, the store and the modes of the files holding secrets",
        description="Loads server.toml by the rules `server run` applies (a bad value: the"
        " same error, exit 2), then checks that the store answers and that server.toml, the"
        " signing keys and the SQLite store (with its -wal and -shm) are readable by their"
        " owner only. Exit 1 when a check fails. See docs/security.md.",
    )
    p.add_argument("dir", type=Path)
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_doctor)

    passes = sub.add_parser("pass", help="issue and revoke passes")
    ps = passes.add_subparsers(dest="action", required=True, metavar="ACTION")
    p = ps.add_parser("issue", help="sign a pass for a household member")
    p.add_argument("dir", type=Path)
    p.add_argument("--household", required=True, help="household id (A-Z a-z 0-9 . _ -)")
    p.add_argument("--name", required=True, help="holder's name (kept on the server only)")
    p.add_argument("--role", choices=["resident", "visitor", "staff"], default="resident")
    p.add_argument("--room", default="", help="building-unit-room shown to the guard")
    p.add_argument(
        "--valid-from",
        metavar="DATE",
        help="first valid day YYYY-MM-DD (from its start), or an exact ISO time;"
        " site timezone (default: now)",
    )
    p.add_argument(
        "--valid-until",
        metavar="DATE",
        help="last valid day YYYY-MM-DD (the whole day is included), or an exact ISO time"
        " (exclusive); site timezone (default: now + pass_days)",
    )
    p.add_argument("--png", type=Path, help="also write the QR code as a PNG image")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_pass_issue)

    p = ps.add_parser("revoke", help="revoke a pass; gates refuse it once they have the register")
    p.add_argument("dir", type=Path)
    p.add_argument("pass_id", type=int)
    p.add_argument("--reason", required=True)
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_pass_revoke)
    _register_households(sub)
    # Operator-side commands live with their features; they extend these groups.
    groups = {"root": sub, "server": s, "pass": ps}
    admin_cli.register(groups)
    web_cli.register(groups)


def _register_households(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    hh = sub.add_parser("household", help="home quarantine of households")
    hs = hh.add_subparsers(dest="action", required=True, metavar="ACTION")
    p = hs.add_parser("quarantine", help="put a household under home quarantine (no exits)")
    p.add_argument("dir", type=Path)
    p.add_argument("household")
    p.add_argument(
        "--until", help="YYYY-MM-DD or ISO time, site timezone (default: until released)"
    )
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_quarantine)
    p = hs.add_parser("release", help="end a household's home quarantine")
    p.add_argument("dir", type=Path)
    p.add_argument("household")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_release)


def cmd_quarantine(args: argparse.Namespace) -> int:
    with Site(args.dir) as site:
        until = site.parse_time(args.until) if args.until else None
        site.set_quarantine(args.household, until)
    _print(
        {
            "household": args.household,
            "quarantined": True,
            "until": until.isoformat() if until else None,
        },
        args.json,
    )
    return 0


def cmd_release(args: argparse.Namespace) -> int:
    with Site(args.dir) as site:
        site.set_quarantine(args.household, None, on=False)
    _print({"household": args.household, "quarantined": False}, args.json)
    return 0


def _print(result: dict[str, Any], as_json: bool) -> None:
    print(render(result, as_json))


def cmd_init(args: argparse.Namespace) -> int:
    with Site.init(args.dir, args.site, store=args.store) as site:
        _print(site.summary(), args.json)
    return 0


def cmd_pass_issue(args: argparse.Namespace) -> int:
    with Site(args.dir) as site:
        start = site.parse_time(args.valid_from) if args.valid_from else None
        end = site.parse_time(args.valid_until, end=True) if args.valid_until else None
        issued = site.issue_pass(args.household, args.name, args.role, start, end, args.room)
        tz = site.config.tz
    if args.png:
        write_qr_png(issued.qr, args.png)
    _print(
        {
            "pass_id": issued.pass_id,
            "household": issued.household,
            "role": issued.role,
            **window_json(issued.valid_from, issued.valid_until, tz),
            "qr": issued.qr,
        },
        args.json,
    )
    return 0


def write_qr_png(text: str, path: Path, scale: int = 8) -> None:
    # Level M exactly (boost_error off), alphanumeric mode: the contract's QR version <= 7.
    segno.make(text, error="m", boost_error=False).save(str(path), scale=scale, border=4)


def cmd_pass_revoke(args: argparse.Namespace) -> int:
    with Site(args.dir) as site:
        site.revoke_pass(args.pass_id, args.reason)
    _print({"pass_id": args.pass_id, "revoked": True, "reason": args.reason}, args.json)
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    with Site(args.dir) as site, site.store.read() as tx:
        for event in events_db.bodies(tx):
            sys.stdout.write(json.dumps(event, ensure_ascii=False) + "\n")
    return 0


def cmd_status(args: argparse.Namespace) -> int:
    with Site(args.dir) as site, site.store.read() as tx:
        result = {
            "site": site.site,
            "events": events_db.count_events(tx),
            "rejected_messages": events_db.rejected_count(tx),
            "conflicts": events_db.conflicts(tx),
            "gates": gates_db.listing(tx),
        }
    _print(result, args.json)
    return 0


def cmd_doctor(args: argparse.Namespace) -> int:
    from server.doctor import run_doctor

    findings = run_doctor(args.dir)
    ok = all(f.ok for f in findings)
    if args.json:
        print(json.dumps({"ok": ok, "checks": [f.to_json() for f in findings]}, ensure_ascii=False))
    else:
        print("\n".join(f.line() for f in findings))
    return 0 if ok else 1


def run_settings(configured: MqttSection, args: argparse.Namespace) -> MqttSection:
    """server.toml's [mqtt] with `server run`'s --shared-group, --mqtt-username,
    --mqtt-password-file, --mqtt-cert-file and --mqtt-key-file for this process. Raises
    ServerConfigError for a bad group name, a password file that cannot be read, or a
    certificate without its key."""
    changes: dict[str, str] = {}
    if args.shared_group is not None:
        changes["shared_group"] = check_share_name(args.shared_group)
    if args.mqtt_username is not None:
        changes["username"] = args.mqtt_username
    if args.mqtt_password_file is not None:
        path: Path = args.mqtt_password_file
        try:
            lines = read_bounded(path, "password").decode("utf-8").splitlines()
        except (OSError, UnicodeDecodeError, ProtocolError) as exc:
            raise ServerConfigError(f"--mqtt-password-file {path}: cannot read: {exc}") from None
        if not lines or not lines[0]:
            raise ServerConfigError(f"--mqtt-password-file {path}: the first line is empty")
        changes["password"] = lines[0]
    if (args.mqtt_cert_file is None) != (args.mqtt_key_file is None):
        raise ServerConfigError("--mqtt-cert-file and --mqtt-key-file go together")
    if args.mqtt_cert_file is not None:
        changes["cert_file"] = str(args.mqtt_cert_file.resolve())
        changes["key_file"] = str(args.mqtt_key_file.resolve())
    try:
        return dataclasses.replace(configured, **changes)
    except ValueError as exc:
        raise ServerConfigError(f"[mqtt] with the options of server run: {exc}") from None


def cmd_run(args: argparse.Namespace) -> int:
    with Site(args.dir) as site:
        broker = parse_broker(args.broker or site.config.mqtt.broker)
        settings = run_settings(site.config.mqtt, args)
        stop = threading.Event()
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, lambda *_: stop.set())
        with Collector(site, broker, settings=settings) as collector, contextlib.ExitStack() as web:
            collector.start()
            group = f" in shared group {settings.shared_group}" if settings.shared_group else ""
            log.info("collector for site %s on %s%s", site.site, broker, group)
            print(f"collector running for site {site.site} on {broker}{group}", flush=True)
            if args.http:
                host, port = args.http
                # Its own Site and connections: pages never wait on the collector's lock.
                dashboard = web.enter_context(
                    web_cli.DashboardServer(
                        args.dir, collector.feed, host, port, collector, trial=args.trial
                    )
                )
                dashboard.start()
                print(f"dashboard on http://{host}:{port}/", flush=True)
            stop.wait()
    return 0
