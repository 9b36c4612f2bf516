"""Importing a household register from CSV or XLSX, the files communities keep it in.

Columns (header row, any order): ``household_id, building, unit, room, grid, name, phone,
role`` and optionally ``community, street, district`` (for roll-ups in reports). Chinese
headers (户号, 楼栋, 单元, 房号, 网格, 姓名, 电话, 角色, 社区, 街道, 区) are read as the same
columns; other columns are ignored.

Each bad row is rejected with its row number as a spreadsheet shows it (header = row 1) and
the reason; every other row is imported in one transaction. CSV may be UTF-8 (with or without
the BOM Excel writes) or GB18030 (which includes GBK, what Excel writes on Chinese Windows).
Names are stored exactly as given (only surrounding whitespace is removed).
"""

from __future__ import annotations

import csv
import io
import re
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import date, datetime
from pathlib import Path
from typing import Any

from protocol.errors import ProtocolError
from protocol.files import FILE_CAPS, read_bounded
from protocol.passes import Role, check_household
from server.register import CAPPED_ROLES, RegisterRow, place_label
from server.site import Site, actor
from server.storage import audit

MAX_BYTES = FILE_CAPS["register"]
"""Files larger than this are refused before they are read (20 MiB)."""
MAX_ROWS = 100_000
"""Data rows (blank rows not counted) above this are refused: split the file."""
MAX_NAME = 64

REQUIRED = ("household_id", "building", "unit", "room", "grid", "name", "phone", "role")
OPTIONAL = ("community", "street", "district")
HEADER_ALIASES = {
    "户号": "household_id",
    "楼栋": "building",
    "楼号": "building",
    "单元": "unit",
    "房号": "room",
    "房间": "room",
    "网格": "grid",
    "姓名": "name",
    "电话": "phone",
    "手机": "phone",
    "手机号": "phone",
    "角色": "role",
    "社区": "community",
    "街道": "street",
    "区": "district",
}
ROLE_ALIASES = {"居民": "resident", "工作人员": "staff", "访客": "visitor"}

_MOBILE = re.compile(r"^(?:\+?86)?(1[3-9]\d{9})$")
_LANDLINE = re.compile(r"^0\d{2,3}-?\d{7,8}$")


class RegisterImportError(ProtocolError):
    """The whole file cannot be imported (unreadable, too large, header incomplete)."""


@dataclass(frozen=True)
class Rejection:
    row: int
    reason: str


@dataclass(frozen=True)
class ImportResult:
    imported: int
    updated: int
    rejected: tuple[Rejection, ...] = field(default_factory=tuple)

    def to_json(self) -> dict[str, Any]:
        return {
            "imported": self.imported,
            "updated": self.updated,
            "rejected": [{"row": r.row, "reason": r.reason} for r in self.rejected],
        }


def import_register(site: Site, path: Path) -> ImportResult:
    """Read `path`, check every row, and upsert the valid ones in one transaction."""
    header, records = read_table(path)
    columns = _columns(header, path)
    rows = [(n, {c: _cell(values, i) for c, i in columns.items()}) for n, values in records]
    households = {r["household_id"] for _, r in rows if r.get("household_id")}
    checker = RowChecker(
        site.registry.member_roles(households),
        site.published_policy().policy.passes_per_household_max,
    )
    accepted: list[RegisterRow] = []
    rejected: list[Rejection] = []
    for n, values in rows:
        try:
            accepted.append(checker.check(n, values))
        except ValueError as exc:
            rejected.append(Rejection(n, str(exc)))
    imported, updated = site.registry.apply_import(accepted)
    with site.store.write() as tx:
        audit.record(
            tx,
            actor(),
            "register_import",
            path.name,
            f"imported {imported}, updated {updated}, rejected {len(rejected)}",
        )
    return ImportResult(imported, updated, tuple(rejected))


class RowChecker:
    """Checks rows in file order; remembers what earlier rows claimed (persons, places,
    members holding counted passes) so duplicates and households over the cap are caught."""

    def __init__(self, existing: dict[str, dict[str, str]], cap: int) -> None:
        self.cap = cap
        # Household → names of members whose role holds a counted pass (stored or accepted).
        self.capped: dict[str, set[str]] = {
            h: {name for name, role in members.items() if role in CAPPED_ROLES}
            for h, members in existing.items()
        }
        self.seen: dict[tuple[str, str], int] = {}
        self.places: dict[str, tuple[str, int]] = {}

    def check(self, n: int, v: dict[str, str]) -> RegisterRow:
        """The row as a RegisterRow, or ValueError with the reason it is rejected."""
        missing = [c for c in REQUIRED if not v.get(c)]
        if missing:
            raise ValueError(f"missing field: {', '.join(missing)}")
        hh, name = v["household_id"], v["name"]
        try:
            check_household(hh)
        except ProtocolError as exc:
            raise ValueError(str(exc)) from None
        if len(name) > MAX_NAME:
            raise ValueError(f"name longer than {MAX_NAME} characters")
        phone = normalize_phone(v["phone"])
        role = ROLE_ALIASES.get(v["role"], v["role"].lower())
        if role not in {r.label for r in Role}:
            raise ValueError(f"unknown role {v['role']!r} (resident, staff or visitor)")
        if (hh, name) in self.seen:
            raise ValueError(
                f"duplicate person: {name} of household {hh} is already in row "
                f"{self.seen[hh, name]}"
            )
        place = place_label(v["building"], v["unit"], v["room"])
        first = self.places.get(hh)
        if first is not None and first[0] != place:
            raise ValueError(f"household {hh} is at {first[0]} in row {first[1]}, here {place}")
        members = self.capped.setdefault(hh, set())
        if role in CAPPED_ROLES and name not in members and len(members) >= self.cap:
            raise ValueError(
                f"household {hh} over its pass cap: already {len(members)} members with "
                f"passes (passes_per_household_max = {self.cap})"
            )
        # Accepted: only now does the row count for later rows.
        if role in CAPPED_ROLES:
            members.add(name)
        else:
            members.discard(name)
        self.seen[hh, name] = n
        self.places.setdefault(hh, (place, n))
        return RegisterRow(
            n,
            hh,
            v["building"],
            v["unit"],
            v["room"],
            v["grid"],
            name,
            phone,
            role,
            v.get("community"),
            v.get("street"),
            v.get("district"),
        )


def normalize_phone(text: str) -> str:
    """A mainland mobile (1[3-9] and 9 digits, +86 and separators allowed) → its 11 digits;
    a landline such as 010-12345678 as written. ValueError otherwise."""
    compact = re.sub(r"\s", "", text)
    mobile = _MOBILE.match(compact.replace("-", ""))
    if mobile:
        return mobile.group(1)
    if _LANDLINE.match(compact):
        return compact
    raise ValueError(
        f"bad phone {text!r}: expected a mainland mobile (11 digits, 1[3-9]…) or a landline"
        " such as 010-12345678"
    )


# --- reading files ------------------------------------------------------------------------


def read_table(path: Path) -> tuple[list[str], list[tuple[int, list[Any]]]]:
    """The header and the non-blank data rows with their row numbers (header = row 1)."""
    try:
        raw = read_bounded(path, "register")
    except OSError as exc:
        raise RegisterImportError(f"{path}: cannot read: {exc.strerror}") from None
    except ProtocolError as exc:  # not a regular file, or over the cap
        raise RegisterImportError(f"{exc}; split the register into several files") from None
    rows = _xlsx_rows(path, raw) if raw.startswith(b"PK\x03\x04") else _csv_rows(path, raw)
    header: list[str] | None = None
    data: list[tuple[int, list[Any]]] = []
    for n, values in enumerate(rows, start=1):
        if header is None:
            header = ["" if c is None else str(c) for c in values]
            continue
        if all(_text(c) == "" for c in values):
            continue  # spreadsheets end with blank rows
        data.append((n, list(values)))
        if len(data) > MAX_ROWS:
            raise RegisterImportError(
                f"{path}: more than {MAX_ROWS} rows; split the register into several files"
            )
    if header is None:
        raise RegisterImportError(f"{path}: empty file (no header row)")
    return header, data


def _csv_rows(path: Path, raw: bytes) -> Iterator[list[str]]:
    text = None
    for encoding in ("utf-8-sig", "gb18030"):
        try:
            text = raw.decode(encoding)
            break
        except UnicodeDecodeError:
            continue
    if text is None:
        raise RegisterImportError(f"{path}: not UTF-8 or GB18030 text; save it as CSV UTF-8")
    try:
        yield from csv.reader(io.StringIO(text, newline=""))
    except csv.Error as exc:
        raise RegisterImportError(f"{path}: not a readable CSV file: {exc}") from None


def _xlsx_rows(path: Path, raw: bytes) -> Iterator[tuple[Any, ...]]:
    import openpyxl
    from openpyxl.utils.exceptions import InvalidFileException

    try:
        book = openpyxl.load_workbook(io.BytesIO(raw), read_only=True, data_only=True)
    except (InvalidFileException, zipfile.BadZipFile, KeyError, OSError) as exc:
        raise RegisterImportError(f"{path}: not a readable XLSX workbook: {exc}") from None
    try:
        sheet = book.worksheets[0]
        yield from sheet.iter_rows(values_only=True)
    finally:
        book.close()


def _columns(header: list[str], path: Path) -> dict[str, int]:
    """Column name → index, for the known columns present."""
    found: dict[str, int] = {}
    for i, raw in enumerate(header):
        name = raw.strip().lstrip("\ufeff").lower().replace(" ", "_")
        name = HEADER_ALIASES.get(name, name)
        if name not in REQUIRED and name not in OPTIONAL:
            continue
        if name in found:
            raise RegisterImportError(f"{path}: column {name!r} appears twice in the header")
        found[name] = i
    missing = [c for c in REQUIRED if c not in found]
    if missing:
        raise RegisterImportError(
            f"{path}: header lacks {', '.join(missing)} (expected columns: {', '.join(REQUIRED)})"
        )
    return found


def _cell(values: list[Any], i: int) -> str:
    return _text(values[i]) if i < len(values) else ""


def _text(value: Any) -> str:
    """A cell as text: spreadsheet numbers lose their '.0' (13812345678.0 is a phone)."""
    if value is None:
        return ""
    if isinstance(value, bool):
        return str(value)
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    if isinstance(value, datetime | date):
        return value.isoformat()
    return str(value).strip()
