"""`menwei broker setup|renew|add-client|add-gate|revoke`: the site's TLS broker and its
credentials (menwei/broker_setup.py; docs/configuration.md, "The site's broker")."""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from menwei import broker_setup


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    broker = sub.add_parser(
        "broker",
        help="the site's broker over TLS: CA, certificates for the broker, gates, collectors",
        description="A site CA in DIR (e.g. the server directory's broker/) signs the broker's"
        " certificate and a client certificate per gate and collector; the broker takes a"
        " client's identity from its certificate. The CA's key stays in DIR.",
    )
    bs = broker.add_subparsers(dest="action", required=True, metavar="ACTION")

    p = bs.add_parser(
        "setup",
        help="make the site CA, the broker's and the collector's certificates, the Mosquitto"
        " config and ACL; print how to install them",
    )
    p.add_argument("dir", type=Path, help="the broker folder, e.g. SERVER_DIR/broker")
    p.add_argument("--site", help="site slug (default: that of the server directory DIR is in)")
    _hosts(p)
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=_command(lambda a: broker_setup.setup(a.dir, a.site, a.host), _setup_lines))

    p = bs.add_parser(
        "renew", help="a new certificate for the broker (new host names, or before it expires)"
    )
    p.add_argument("dir", type=Path, help="the broker folder")
    _hosts(p)
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=_command(lambda a: broker_setup.renew(a.dir, a.host), _renew_lines))

    p = bs.add_parser(
        "add-client", help="a certificate for one more collector (collector-2, collector-3, ...)"
    )
    p.add_argument("dir", type=Path, help="the broker folder")
    p.add_argument("name", help="collector-N")
    p.add_argument("--json", action="store_true")
    p.set_defaults(
        func=_command(lambda a: broker_setup.add_client(a.dir, a.name), _add_client_lines)
    )

    p = bs.add_parser(
        "add-gate",
        help="a gate's credentials into a folder to carry to it (its `gate init --credentials`)",
    )
    p.add_argument("dir", type=Path, help="the broker folder")
    p.add_argument("gate", help="gate slug")
    p.add_argument("--out", type=Path, required=True, help="folder to write (e.g. on a USB stick)")
    p.add_argument("--json", action="store_true")
    p.set_defaults(
        func=_command(lambda a: broker_setup.add_gate(a.dir, a.gate, a.out), _add_gate_lines)
    )

    p = bs.add_parser(
        "revoke", help="revoke a gate's or collector's certificates (a lost or retired device)"
    )
    p.add_argument("dir", type=Path, help="the broker folder")
    p.add_argument("name", help="gate slug or collector name")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=_command(lambda a: broker_setup.revoke(a.dir, a.name), _revoke_lines))


def _hosts(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--host",
        action="append",
        default=[],
        metavar="NAME_OR_IP",
        help="a name gates reach the broker by (repeat; default: this machine's host name);"
        " localhost and 127.0.0.1 are always added",
    )


Result = dict[str, Any]


def _command(
    run: Callable[[argparse.Namespace], Result], lines: Callable[[Result], list[str]]
) -> Callable[[argparse.Namespace], int]:
    """A command: `run` does it, its result printed as JSON (--json) or as `lines`."""

    def command(args: argparse.Namespace) -> int:
        result = run(args)
        print(json.dumps(result, ensure_ascii=False) if args.json else "\n".join(lines(result)))
        return 0

    return command


def _install(r: Result) -> list[str]:
    return [f"  {c}" for c in r["install"]]


def _setup_lines(r: Result) -> list[str]:
    return [
        f"site CA of {r['site']} made in {r['dir']}",
        f"the broker's certificate is valid for: {', '.join(r['hosts'])}",
        f"gates will connect to {r['broker']}",
        f"keep {r['ca_key']} in this folder only (back it up offline): it signs every credential",
        "install on the broker's machine (as root):",
        *_install(r),
        "the collector's server.toml [mqtt]:",
        *[f"  {line}" for line in str(r["server_toml"]).splitlines()],
        "each gate: `menwei gate init GATE_DIR --server SERVER_DIR --gate SLUG` issues its"
        f" certificate (or `menwei broker add-gate {r['dir']} SLUG --out FOLDER` to carry)",
    ]


def _renew_lines(r: Result) -> list[str]:
    return [
        f"new broker certificate for: {', '.join(r['hosts'])}",
        "install it on the broker's machine (as root):",
        *_install(r),
    ]


def _add_client_lines(r: Result) -> list[str]:
    return [
        f"{r['name']}: {r['cert_file']}, {r['key_file']}",
        f"run it with `menwei server run SERVER_DIR --mqtt-cert-file {r['cert_file']}"
        f" --mqtt-key-file {r['key_file']}`",
        "install the new ACL on the broker's machine (as root):",
        *_install(r),
    ]


def _add_gate_lines(r: Result) -> list[str]:
    return [
        f"gate {r['gate']}'s credentials in {r['out']}: {', '.join(r['files'])}",
        f"at the gate: `menwei gate init GATE_DIR --server BUNDLE --gate {r['gate']}"
        f" --credentials {r['out']}`; then wipe the folder",
    ]


def _revoke_lines(r: Result) -> list[str]:
    return [
        f"{r['name']}: {len(r['revoked'])} certificate(s) revoked",
        "install the new CRL and ACL on the broker's machine (as root):",
        *_install(r),
    ]
