"""Daily report: counting days that start at 04:00 local, figures per grid and community, roll-up
to street, district and site, CSV (BOM) and XLSX exports, the CLI."""

from __future__ import annotations

import csv
import io
import json
import uuid
from datetime import date, datetime
from pathlib import Path

import openpyxl

from protocol.events import Event
from server.register_import import import_register
from server.reports import COLUMNS, daily_report, to_csv, to_xlsx
from server.site import Site
from tests import collected
from tests.conftest import SITE, run_menwei

DAY = date(2026, 3, 10)


def at(text: str) -> str:
    """Local Shanghai time → the UTC ISO text the store holds."""
    return datetime.fromisoformat(text + "+08:00").astimezone().isoformat()


def event(seq: int, when: str, kind: str, reason: str, **kw: object) -> Event:
    fields: dict[str, object] = {
        "decision": None,
        "direction": None,
        "pass_id": None,
        "household": None,
        "role": None,
        **kw,
    }
    return Event(
        site=SITE,
        gate="east",
        seq=seq,
        uuid=str(uuid.uuid4()),
        at=at(when),
        clock_trusted=True,
        kind=kind,
        reason=reason,
        temperature_c=None,
        **fields,  # type: ignore[arg-type]
    )


def setup(site: Site, tmp_path: Path) -> dict[str, int]:
    f = tmp_path / "reg.csv"
    f.write_text(
        "household_id,building,unit,room,grid,name,phone,role,community,street,district\n"
        "H1,1,1,101,网格一,张三,13800000001,resident,阳光社区,东街道,南区\n"
        "H2,1,1,102,网格二,李四,13800000002,resident,阳光社区,东街道,南区\n"
        "H3,9,1,901,网格九,王五,13800000003,resident,月亮社区,东街道,南区\n",
        encoding="utf-8",
    )
    assert import_register(site, f).rejected == ()
    site.issue_all()
    return {hh: int(p["pass_id"]) for hh in ("H1", "H2", "H3") for p in site.registry.passes(hh)}


def passage(seq: int, when: str, direction: str, pid: int, hh: str) -> Event:
    return event(
        seq, when, "decision", "ok", decision="allow", direction=direction, pass_id=pid,
        household=hh, role="resident",
    )  # fmt: skip


def test_daily_figures_day_boundaries_and_roll_up(site: Site, tmp_path: Path):
    p = setup(site, tmp_path)
    collected.insert_events(
        site.store,
        "east",
        [
            passage(1, "2026-03-10T03:59:59", "out", p["H1"], "H1"),  # the day before
            passage(2, "2026-03-10T04:00:00", "out", p["H1"], "H1"),
            passage(3, "2026-03-10T09:00:00", "in", p["H1"], "H1"),
            passage(4, "2026-03-10T10:00:00", "out", p["H2"], "H2"),  # still out at the end
            event(
                5,
                "2026-03-10T11:00:00",
                "decision",
                "outside_window",
                decision="deny",
                direction="out",
                pass_id=p["H1"],
                household="H1",
            ),
            event(
                6,
                "2026-03-10T12:00:00",
                "decision",
                "fever",
                decision="deny",
                direction="in",
                pass_id=p["H1"],
                household="H1",
            ),
            event(7, "2026-03-10T12:00:00", "alert", "fever", pass_id=p["H1"]),
            passage(8, "2026-03-11T03:59:00", "out", p["H3"], "H3"),  # still the 10th
            passage(9, "2026-03-11T04:00:00", "in", p["H3"], "H3"),  # the 11th
            event(10, "2026-03-10T13:00:00", "decision", "unknown_key", decision="deny"),
        ],
    )
    rows = {
        (r["level"], r["community"], r["grid"]): r for r in daily_report(site, DAY)
    }  # fmt: skip
    assert sorted(rows) == [
        ("community", "月亮社区", ""),
        ("community", "阳光社区", ""),
        ("district", "", ""),
        ("grid", "月亮社区", "网格九"),
        ("grid", "阳光社区", "网格一"),
        ("grid", "阳光社区", "网格二"),
        ("site", "", ""),
        ("street", "", ""),
    ]
    g1 = rows["grid", "阳光社区", "网格一"]
    assert (g1["passages_in"], g1["passages_out"], g1["households_out"]) == (1, 1, 1)
    assert g1["denials_by_reason"] == {"fever": 1, "outside_window": 1}
    assert (g1["fever_alerts"], g1["outside_at_end"]) == (1, 0)
    sun = rows["community", "阳光社区", ""]
    assert (sun["passages_out"], sun["households_out"], sun["outside_at_end"]) == (2, 2, 1)
    street = rows["street", "", ""]
    assert (street["street"], street["district"]) == ("东街道", "南区")
    assert (street["passages_in"], street["passages_out"], street["outside_at_end"]) == (1, 3, 2)
    whole = rows["site", "", ""]
    assert whole["denials_by_reason"] == {"fever": 1, "outside_window": 1, "unknown_key": 1}
    assert whole["denials"] == 3
    # The 9th holds only the 03:59 exit; the 11th only the 04:00 return.
    (ninth,) = [r for r in daily_report(site, date(2026, 3, 9)) if r["level"] == "site"]
    assert (ninth["passages_out"], ninth["passages_in"]) == (1, 0)
    (eleventh,) = [r for r in daily_report(site, date(2026, 3, 11)) if r["level"] == "site"]
    assert (eleventh["passages_out"], eleventh["passages_in"]) == (0, 1)


def test_exports_keep_chinese_for_excel(site: Site, tmp_path: Path):
    p = setup(site, tmp_path)
    collected.insert_events(
        site.store, "east", [passage(1, "2026-03-10T08:00:00", "out", p["H1"], "H1")]
    )
    rows = daily_report(site, DAY)
    raw = to_csv(rows)
    assert raw.startswith(b"\xef\xbb\xbf")
    table = list(csv.DictReader(io.StringIO(raw.decode("utf-8-sig"))))
    assert [r["level"] for r in table] == [r["level"] for r in rows]
    assert table[0]["community"] == "阳光社区" and table[0]["passages_out"] == "1"
    book = openpyxl.load_workbook(io.BytesIO(to_xlsx(rows)))
    sheet = book.worksheets[0]
    values = list(sheet.iter_rows(values_only=True))
    assert values[0][:4] == ("date", "level", "district", "street")
    assert values[1][4] == "阳光社区" and len(values) == len(rows) + 1


def test_cli_daily_report(site: Site, tmp_path: Path):
    p = setup(site, tmp_path)
    collected.insert_events(
        site.store, "east", [passage(1, "2026-03-10T08:00:00", "out", p["H2"], "H2")]
    )
    site.close()
    out = tmp_path / "r.json"
    run_menwei("report", "daily", str(site.dir), "--date", "2026-03-10", "--format", "json",
               "--out", str(out))  # fmt: skip
    rows = json.loads(out.read_text(encoding="utf-8"))
    assert [r["passages_out"] for r in rows if r["level"] == "site"] == [1]
    run_menwei("report", "daily", str(site.dir), "--format", "xlsx", "--out",
               str(tmp_path / "r.xlsx"))  # fmt: skip
    assert openpyxl.load_workbook(tmp_path / "r.xlsx").worksheets[0]["A1"].value == "date"


def test_exit_button_and_guard_override_openings_count_as_passages(site: Site, tmp_path: Path):
    p = setup(site, tmp_path)
    collected.insert_events(
        site.store,
        "east",
        [
            event(
                1,
                "2026-03-10T08:00:00",
                "exit_request",
                "exit_request",
                decision="allow",
                direction="out",
            ),
            event(
                2,
                "2026-03-10T09:00:00",
                "override",
                "guard_override",
                decision="allow",
                direction="in",
                pass_id=p["H1"],
                household="H1",
            ),
        ],
    )
    (whole,) = [r for r in daily_report(site, DAY) if r["level"] == "site"]
    # The dashboard's overview counts these openings too (server/web/figures.PASSAGE).
    assert (whole["passages_out"], whole["passages_in"]) == (1, 1)
    g1 = next(r for r in daily_report(site, DAY) if r["grid"] == "网格一")
    assert g1["passages_in"] == 1


def test_names_that_look_like_formulas_are_exported_as_text():
    rows = [
        {
            **{c: 0 for c in COLUMNS},
            "date": "2026-03-10",
            "level": "grid",
            "district": '=HYPERLINK("http://x")',
            "street": "+1",
            "community": "@SUM(A1)",
            "grid": "-网格",
            "denials_by_reason": {},
        }
    ]
    table = list(csv.reader(io.StringIO(to_csv(rows).decode("utf-8-sig"))))
    row = dict(zip(table[0], table[1], strict=True))
    assert (row["district"], row["street"], row["community"], row["grid"]) == (
        '\'=HYPERLINK("http://x")',
        "'+1",
        "'@SUM(A1)",
        "'-网格",
    )
    sheet = openpyxl.load_workbook(io.BytesIO(to_xlsx(rows))).worksheets[0]
    cells = list(sheet.iter_rows(values_only=True))[1]
    assert '\'=HYPERLINK("http://x")' in cells and not any(
        isinstance(c, str) and c.startswith("=") for c in cells
    )
