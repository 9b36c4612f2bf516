"""Register import: CSV in the encodings Excel writes, XLSX, every rejection with its row number,
Unicode names kept exactly, updates on re-import, the pass cap; the JSON contract via the CLI."""

from __future__ import annotations

import json
from pathlib import Path

import openpyxl
import pytest
from sqlalchemy import select

from server import register_import as ri
from server.register_import import RegisterImportError, import_register
from server.site import Site
from server.storage import schema
from tests.conftest import run_menwei

HEADER = "household_id,building,unit,room,grid,name,phone,role"
GOOD = [
    "H101,1,1,101,网格一,张三丰,13812345678,resident",
    "H101,1,1,101,网格一,阿卜杜拉·买买提,010-12345678,resident",
    "H102,1,2,202,网格二,Zoë,+86 139 1234 5678,staff",
]


def write_csv(path: Path, lines: list[str], encoding: str = "utf-8") -> Path:
    path.write_bytes("\r\n".join(lines).encode(encoding) + b"\r\n")
    return path


def persons(site: Site) -> dict[tuple[str, str], tuple[str, str]]:
    with site.store.read() as tx:
        p = schema.persons.c
        rows = tx.execute(select(p.household, p.name, p.phone, p.role))
        return {(h, n): (p, r) for h, n, p, r in rows}


EXPECTED = {
    ("H101", "张三丰"): ("13812345678", "resident"),
    ("H101", "阿卜杜拉·买买提"): ("010-12345678", "resident"),
    ("H102", "Zoë"): ("13912345678", "staff"),
}


@pytest.mark.parametrize("encoding", ["utf-8", "utf-8-sig", "gb18030"])
def test_csv_in_every_encoding_keeps_names_exactly(site: Site, tmp_path: Path, encoding: str):
    # GB18030 covers every Unicode character (Zoë, the middle dot of Uyghur names) too.
    f = write_csv(tmp_path / "reg.csv", [HEADER, *GOOD], encoding)
    result = import_register(site, f)
    assert (result.imported, result.updated, result.rejected) == (3, 0, ())
    assert persons(site) == EXPECTED
    hh = site.registry.household("H101")
    assert hh is not None and (hh.building, hh.unit, hh.room, hh.grid) == (
        "1",
        "1",
        "101",
        "网格一",
    )


def test_xlsx_with_numeric_cells_and_roll_up_columns(site: Site, tmp_path: Path):
    book = openpyxl.Workbook()
    sheet = book.active
    assert sheet is not None
    sheet.append([*HEADER.split(","), "community", "street", "district"])
    # Excel stores phones and rooms typed as numbers as numbers.
    sheet.append(
        ["H101", 1, 1, 101, "网格一", "张三丰", 13812345678, "居民", "阳光社区", "东街道", "南区"]
    )
    sheet.append([None] * 8)  # trailing blank row: skipped, not rejected
    sheet.append(
        ["H102", 1, 2, 202, "网格二", "Zoë", 13912345678.0, "staff", "阳光社区", "东街道", "南区"]
    )
    book.save(tmp_path / "reg.xlsx")
    result = import_register(site, tmp_path / "reg.xlsx")
    assert (result.imported, result.updated, result.rejected) == (2, 0, ())
    assert persons(site)[("H101", "张三丰")] == ("13812345678", "resident")
    hh = site.registry.household("H102")
    assert hh is not None
    assert (hh.room, hh.community, hh.street, hh.district) == ("202", "阳光社区", "东街道", "南区")


def test_each_bad_row_is_rejected_with_its_row_number_and_the_rest_imports(
    site: Site, tmp_path: Path
):
    cap = site.config.policy.passes_per_household_max
    lines = [
        HEADER,
        "H1,1,1,101,g1,张三,13812345678,resident",  # row 2 ok
        "H1,1,1,101,g1,,13812345679,resident",  # row 3 missing name
        "H1,1,1,101,g1,李四,12345,resident",  # row 4 bad phone
        "H1,1,1,101,g1,张三,13812345670,resident",  # row 5 duplicate of row 2
        "H1,1,1,101,g1,王五,13812345671,landlord",  # row 6 unknown role
        "H 1,1,1,101,g1,赵六,13812345672,resident",  # row 7 bad household id
        "H1,1,1,102,g1,钱七,13812345673,resident",  # row 8 household at another room
        "H1,1,1,101,g1,访客甲,13812345674,visitor",  # row 9 ok: visitors are not capped
    ]
    # Fill H2 up to its cap, then one more.
    lines += [f"H2,2,1,201,g2,成员{i},1390000000{i},resident" for i in range(cap + 1)]
    f = write_csv(tmp_path / "reg.csv", lines)
    result = import_register(site, f)
    reasons = {r.row: r.reason for r in result.rejected}
    assert sorted(reasons) == [3, 4, 5, 6, 7, 8, 10 + cap]
    assert reasons[3] == "missing field: name"
    assert "bad phone '12345'" in reasons[4]
    assert "duplicate person" in reasons[5] and "row 2" in reasons[5]
    assert "unknown role 'landlord'" in reasons[6]
    assert "household id 'H 1'" in reasons[7]
    assert "is at 1-1-101 in row 2, here 1-1-102" in reasons[8]
    assert "over its pass cap" in reasons[10 + cap]
    assert result.imported == 2 + cap and result.updated == 0
    assert ("H1", "访客甲") in persons(site)


def test_reimport_updates_and_the_cap_counts_stored_members(site: Site, tmp_path: Path):
    cap = site.config.policy.passes_per_household_max
    first = [HEADER] + [f"H9,9,1,901,g,人{i},1370000000{i},resident" for i in range(cap)]
    assert import_register(site, write_csv(tmp_path / "a.csv", first)).imported == cap
    # The same people again with a new phone: updates, not over the cap. A new member is.
    again = [HEADER, "H9,9,1,901,g,人0,13799999999,staff", "H9,9,1,901,g,新人,13611111111,resident"]
    result = import_register(site, write_csv(tmp_path / "b.csv", again))
    assert (result.imported, result.updated) == (0, 1)
    assert [r.row for r in result.rejected] == [3]
    assert persons(site)[("H9", "人0")] == ("13799999999", "staff")
    # Moving a member to a role without a pass frees a place for the new one.
    swap = [HEADER, "H9,9,1,901,g,人0,13799999999,visitor", "H9,9,1,901,g,新人,13611111111,staff"]
    result = import_register(site, write_csv(tmp_path / "c.csv", swap))
    assert (result.imported, result.updated, result.rejected) == (1, 1, ())


def test_whole_file_refusals(site: Site, tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    with pytest.raises(RegisterImportError, match="header lacks phone, role"):
        import_register(
            site, write_csv(tmp_path / "h.csv", ["household_id,building,unit,room,grid,name"])
        )
    with pytest.raises(RegisterImportError, match="not UTF-8 or GB18030"):
        (tmp_path / "bin.csv").write_bytes(b"\xff\xfe\x00\x81\x30\xff" * 10)
        import_register(site, tmp_path / "bin.csv")
    big = tmp_path / "big.csv"
    with big.open("wb") as f:
        f.truncate(ri.MAX_BYTES + 1)
    with pytest.raises(RegisterImportError, match="over the 20 MiB cap for register files"):
        import_register(site, big)
    monkeypatch.setattr(ri, "MAX_ROWS", 3)
    lines = [HEADER] + [f"H{i},1,1,1,g,n{i},1380000000{i},resident" for i in range(4)]
    with pytest.raises(RegisterImportError, match="more than 3 rows"):
        import_register(site, write_csv(tmp_path / "many.csv", lines))
    assert persons(site) == {}  # nothing half-imported


def test_cli_json_contract(site: Site, tmp_path: Path):
    f = write_csv(
        tmp_path / "reg.csv", [HEADER, *GOOD, "H103,1,3,303,g,某人,999,resident"], "utf-8-sig"
    )
    site.close()  # the subprocess opens the directory itself
    out = run_menwei("register", "import", str(site.dir), str(f), "--json")
    assert json.loads(out.stdout) == {
        "imported": 3,
        "updated": 0,
        "rejected": [
            {
                "row": 5,
                "reason": "bad phone '999': expected a mainland mobile (11 digits, 1[3-9]…)"
                " or a landline such as 010-12345678",
            }
        ],
    }
    again = json.loads(run_menwei("register", "import", str(site.dir), str(f), "--json").stdout)
    assert (again["imported"], again["updated"]) == (0, 3)
    refused = run_menwei(
        "register", "import", str(site.dir), str(tmp_path / "none.csv"), check=False
    )
    assert refused.returncode == 2 and "cannot read" in refused.stderr
