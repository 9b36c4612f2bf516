"""Register, cards, keys and reports from the command line (`menwei register|keys|report ...`,
`menwei pass issue-all|cards`)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from protocol.output import render
from server.site import Site, actor
from server.storage import audit
from server.validity import window_json


def register(groups: dict[str, Any]) -> None:
    """Add this module's commands to the `root`, `server` and `pass` subparser groups."""
    root: argparse._SubParsersAction[argparse.ArgumentParser] = groups["root"]

    reg = root.add_parser("register", help="the household register (households and persons)")
    rs = reg.add_subparsers(dest="action", required=True, metavar="ACTION")
    p = rs.add_parser(
        "import",
        help="import or update households and persons from CSV (UTF-8 or GB18030) or XLSX",
        description="Columns: household_id, building, unit, room, grid, name, phone, role;"
        " optional: community, street, district. Bad rows are rejected with their row number,"
        " the others are imported.",
    )
    p.add_argument("dir", type=Path)
    p.add_argument("file", type=Path, help="register file (.csv or .xlsx)")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_register_import)

    keys = root.add_parser("keys", help="the site's signing keys")
    ks = keys.add_subparsers(dest="action", required=True, metavar="ACTION")
    p = ks.add_parser(
        "rotate",
        help="make a new signing key; passes signed by the old one stay valid until retired",
    )
    p.add_argument("dir", type=Path)
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_keys_rotate)
    p = ks.add_parser(
        "retire",
        help="stop trusting an old key (not the signing key) and take its private key away",
        description="Makes the next trust root without KEY_ID (gates that see it accept"
        " nothing the key signs: no document, no pass), signs every document anew under it,"
        " then overwrites and removes the key's private key file from the server directory,"
        " or with --archive moves it to PATH (outside the server directory; made 0700, the"
        " file 0600). Public keys stay in the store. Audited.",
    )
    p.add_argument("dir", type=Path)
    p.add_argument("key_id", type=int)
    p.add_argument(
        "--archive",
        type=Path,
        metavar="PATH",
        help="move the private key to this directory (e.g. an offline USB stick) instead of"
        " removing it",
    )
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_keys_retire)
    p = ks.add_parser(
        "resign",
        help="sign the published config and the register again, now (after the server's clock"
        " ran ahead: gates' clock floors follow documents' issue times)",
        description="Signs the published policy and the register again as new versions with the"
        " server's current time; nothing else changes. Use it after a server clock that ran"
        " ahead had signed documents: every gate's clock floor follows the newest document it"
        " holds. Then stop each gate and run `menwei gate clock --config gate.toml"
        " --reset-floor` (docs/hardware.md, Clock). Audited.",
    )
    p.add_argument("dir", type=Path)
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_keys_resign)

    report = root.add_parser("report", help="daily figures per community and grid")
    rps = report.add_subparsers(dest="action", required=True, metavar="ACTION")
    p = rps.add_parser("daily", help="one counting day (starts at day_starts_at local time)")
    p.add_argument("dir", type=Path)
    p.add_argument("--date", help="YYYY-MM-DD (default: the current counting day)")
    p.add_argument("--format", choices=["csv", "xlsx", "json"], required=True)
    p.add_argument("--out", type=Path, required=True, help="file to write")
    p.set_defaults(func=cmd_report_daily)

    _register_visitor(root)

    passes: argparse._SubParsersAction[argparse.ArgumentParser] = groups["pass"]
    p = passes.add_parser(
        "issue-all",
        help="issue a pass to every registered resident/staff member without a valid one",
    )
    p.add_argument("dir", type=Path)
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_issue_all)

    p = passes.add_parser("cards", help="print pass cards: A4 PDF, 8 per page, cut marks")
    p.add_argument("dir", type=Path)
    p.add_argument("--out", type=Path, required=True, help="PDF file to write")
    p.add_argument("--household", help="only this household's passes")
    p.add_argument("--png-dir", type=Path, help="also write one PNG per card here")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_cards)


def _register_visitor(root: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    visitor = root.add_parser("visitor", help="visitors registered by the guard (short passes)")
    vs = visitor.add_subparsers(dest="action", required=True, metavar="ACTION")
    p = vs.add_parser(
        "register",
        help="register a visitor and issue a visitor pass for the host household",
        description="The visitor may enter once and leave once while the pass is valid. A"
        " temperature at or above the policy's fever threshold gets no pass (fever clinic).",
    )
    p.add_argument("dir", type=Path)
    p.add_argument("--name", required=True, help="visitor's name (kept on the server only)")
    p.add_argument("--phone", required=True, help="mainland mobile or landline")
    p.add_argument("--reason", required=True, help="reason of the visit")
    p.add_argument("--host", required=True, help="host household id (must be in the register)")
    p.add_argument("--temperature", type=float, required=True, help="measured, in °C")
    p.add_argument("--hours", type=int, default=4, help="validity from now, 1..24 (default 4)")
    p.add_argument("--png", type=Path, help="also write the QR code as a PNG image")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_visitor_register)
    p = vs.add_parser(
        "purge",
        help="erase name and phone of visitors whose pass expired more than N days ago",
    )
    p.add_argument("dir", type=Path)
    p.add_argument("--older-than-days", type=int, required=True, metavar="N")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_visitor_purge)


def cmd_visitor_register(args: argparse.Namespace) -> int:
    from server.cli import write_qr_png
    from server.site import actor
    from server.visitors import register_visitor

    with Site(args.dir) as site:
        visitor, issued = register_visitor(
            site,
            args.name,
            args.phone,
            args.reason,
            args.host,
            args.temperature,
            args.hours,
            by=actor(),
        )
        tz = site.config.tz
    if args.png:
        write_qr_png(issued.qr, args.png)
    _print(
        {
            "visitor_id": visitor.id,
            "pass_id": issued.pass_id,
            "host": issued.household,
            **window_json(issued.valid_from, issued.valid_until, tz),
            "qr": issued.qr,
        },
        args.json,
    )
    return 0


def cmd_visitor_purge(args: argparse.Namespace) -> int:
    from server.site import actor
    from server.visitors import purge_visitors

    with Site(args.dir) as site:
        purged = purge_visitors(site, args.older_than_days, by=actor())
    _print({"purged": purged, "older_than_days": args.older_than_days}, args.json)
    return 0


def _print(result: dict[str, Any], as_json: bool) -> None:
    print(render(result, as_json))


def cmd_register_import(args: argparse.Namespace) -> int:
    from server.register_import import import_register

    with Site(args.dir) as site:
        result = import_register(site, args.file)
    if args.json:
        print(json.dumps(result.to_json(), ensure_ascii=False))
    else:
        print(f"imported: {result.imported}\nupdated: {result.updated}")
        print(f"rejected: {len(result.rejected)}")
        for r in result.rejected:
            print(f"  row {r.row}: {r.reason}")
    return 0


def cmd_issue_all(args: argparse.Namespace) -> int:
    with Site(args.dir) as site:
        counts = site.issue_all()
    _print(dict(counts), args.json)
    return 0


def cmd_cards(args: argparse.Namespace) -> int:
    from server.cards import cards_for, write_pdf, write_pngs

    with Site(args.dir) as site:
        cards = cards_for(site, args.household)
    pages = write_pdf(cards, args.out)
    pngs = write_pngs(cards, args.png_dir) if args.png_dir else []
    result: dict[str, Any] = {"cards": len(cards), "pages": pages, "pdf": str(args.out)}
    if args.png_dir:
        result["png"] = [str(p) for p in pngs]
    _print(result, args.json)
    return 0


def cmd_keys_rotate(args: argparse.Namespace) -> int:
    with Site(args.dir) as site:
        previous, new = site.rotate_key()
        summary = site.summary()
    result = {"key_id": new, "previous": previous, "trust_keys": summary["keys"]}
    _print(result | {"root": summary["root"]}, args.json)
    return 0


def cmd_keys_resign(args: argparse.Namespace) -> int:
    """Nothing changes but the documents' versions and issue times; audited."""
    with Site(args.dir) as site:
        config = site.publish_config()
        register = site.publish_register(snapshot=True)
        with site.store.write() as tx:
            audit.record(tx, actor(), "documents_resign", site.site, f"config v{config.version}")
        result = {
            "config": config.version,
            "register": register.version,
            "issued_at": register.issued_at,
        }
    _print(result, args.json)
    return 0


def cmd_keys_retire(args: argparse.Namespace) -> int:
    with Site(args.dir) as site:
        retired = site.retire_key(args.key_id, archive=args.archive)
        summary = site.summary()
    result: dict[str, Any] = {
        "retired": args.key_id,
        "trust_keys": summary["keys"],
        "root": retired.root,
    }
    disposed = retired.private_key
    _print(
        result | {"private_key": disposed.to_json() if args.json else disposed.describe()},
        args.json,
    )
    return 0


def cmd_report_daily(args: argparse.Namespace) -> int:
    from datetime import UTC, date, datetime

    from server.reports import daily_report, to_csv, to_xlsx
    from server.site import SiteError

    with Site(args.dir) as site:
        try:
            day = (
                date.fromisoformat(args.date)
                if args.date
                else site.published_policy().policy.day_of(datetime.now(UTC))
            )
        except ValueError:
            raise SiteError(f"--date {args.date!r} is not YYYY-MM-DD") from None
        rows = daily_report(site, day)
    if args.format == "csv":
        data = to_csv(rows)
    elif args.format == "xlsx":
        data = to_xlsx(rows)
    else:
        data = json.dumps(rows, ensure_ascii=False, indent=1).encode()
    args.out.write_bytes(data)
    print(f"{args.out}: {len(rows)} rows for {day.isoformat()}")
    return 0
