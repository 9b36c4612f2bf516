"""Register, cards, keys and reports from the command line (`menwei register|keys|report ...`,
`menwei pass issue-all|cards`)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from server.site import Site


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


def _print(result: dict[str, Any], as_json: bool) -> None:
    if as_json:
        print(json.dumps(result, ensure_ascii=False))
    else:
        for key, value in result.items():
            print(f"{key}: {value}")


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
