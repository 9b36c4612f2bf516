"""Passes from the register (issue-all, the cap, linking persons) and the printed cards: A4 pages
of 8, and a PNG card whose QR decodes back to the pass text."""

from __future__ import annotations

import json
import re
from datetime import datetime
from pathlib import Path

import cv2
import numpy as np
import zxingcpp

from server.cards import cards_for, write_pdf, write_png
from server.register_import import import_register
from server.site import Site
from tests.conftest import run_menwei

HEADER = "household_id,building,unit,room,grid,name,phone,role"


def import_rows(site: Site, tmp_path: Path, lines: list[str]) -> None:
    f = tmp_path / "reg.csv"
    f.write_text("\n".join([HEADER, *lines]) + "\n", encoding="utf-8")
    assert import_register(site, f).rejected == ()


def pdf_pages(path: Path) -> int:
    # Page objects, not the /Pages tree node: independent of reportlab's own bookkeeping.
    return len(re.findall(rb"/Type\s*/Page(?![s\w])", path.read_bytes()))


def test_issue_pass_links_the_registered_person_and_upserts_the_household(
    site: Site, tmp_path: Path
):
    import_rows(site, tmp_path, ["H1,3,2,501,g1,张三明,13812345678,resident"])
    issued = site.issue_pass("H1", "张三明")
    (row,) = site.registry.passes("H1")
    assert row["person_id"] == site.registry.members("H1")[0]["person_id"]
    register = site.published_register()
    assert register is not None
    entry = register.passes[issued.pass_id]
    assert (entry.display_name, entry.room) == ("张*明", "3-2-501")
    # A pass for someone not in the register still makes the household's row exist.
    site.issue_pass("H7", "访客乙", room="7-1-101")
    assert site.registry.household("H7") is not None
    assert site.registry.passes("H7")[0]["person_id"] is None


def test_issue_all_respects_existing_passes_and_the_cap(site: Site, tmp_path: Path):
    cap = site.config.policy.passes_per_household_max
    site.issue_pass("H2", "早有证")  # issued by name before the register was imported
    lines = [f"H1,1,1,101,g,成员{i},1380000000{i},resident" for i in range(cap)]
    lines += ["H1,1,1,101,g,客人,13900000000,visitor", "H2,1,1,102,g,早有证,13900000001,staff"]
    import_rows(site, tmp_path, lines)
    # Someone outside the register holds one of H1's places: one member cannot get a pass.
    site.issue_pass("H1", "外人")
    assert site.issue_all() == {"issued": cap - 1, "already_valid": 1, "over_cap": 1}
    assert site.issue_all() == {"issued": 0, "already_valid": cap, "over_cap": 1}
    assert site.active_passes("H1", datetime.now(site.config.tz)) == cap


def test_cards_pdf_pages_and_png_qr_decodes_to_the_pass(site: Site, tmp_path: Path):
    lines = [f"H{i // 2},1,{i // 2},10{i // 2},g,张{i}明,1380000000{i},resident" for i in range(9)]
    lines[0] = "H0,1,0,100,g,阿卜杜拉·买买提,13800000000,resident"
    import_rows(site, tmp_path, lines)
    assert site.issue_all()["issued"] == 9
    cards = cards_for(site)
    assert len(cards) == 9
    assert cards[0].display_name == "阿******提" and cards[0].place == "1-0-100"
    assert write_pdf(cards, tmp_path / "all.pdf") == 2
    assert pdf_pages(tmp_path / "all.pdf") == 2  # 8 + 1
    one = cards_for(site, household="H1")
    assert [c.display_name for c in one] == ["张*明", "张*明"]
    write_pdf(one, tmp_path / "h1.pdf")
    assert pdf_pages(tmp_path / "h1.pdf") == 1

    write_png(cards[0], tmp_path / "card.png")
    image = cv2.imread(str(tmp_path / "card.png"), cv2.IMREAD_GRAYSCALE)
    assert image is not None
    found = zxingcpp.read_barcodes(np.ascontiguousarray(image))
    assert [r.text for r in found] == [cards[0].qr]
    assert found[0].ec_level == "M"


def test_cli_issue_all_and_cards(site: Site, tmp_path: Path):
    import_rows(site, tmp_path, ["H1,3,2,501,g1,张三明,13812345678,resident"])
    site.close()
    d = str(site.dir)
    issued = json.loads(run_menwei("pass", "issue-all", d, "--json").stdout)
    assert issued == {"issued": 1, "already_valid": 0, "over_cap": 0}
    out = run_menwei(
        "pass", "cards", d, "--out", str(tmp_path / "c.pdf"), "--png-dir", str(tmp_path / "png"),
        "--household", "H1", "--json",
    )  # fmt: skip
    result = json.loads(out.stdout)
    assert (result["cards"], result["pages"]) == (1, 1)
    assert pdf_pages(tmp_path / "c.pdf") == 1 and len(list((tmp_path / "png").glob("*.png"))) == 1
