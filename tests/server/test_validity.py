"""Validity days: a date an operator types names a whole local day of the site; the gate keeps
`valid_from <= now < valid_until` on the exact instants the pass carries.

Passes are issued with the real command line (`menwei pass issue --json`) and judged by the
real decision core with what a gate provisioned from that server directory holds (its signed
config and register), at the instants on either side of each boundary. Zones are the real
tz database's: Asia/Shanghai (no DST), Europe/Berlin (DST on 2026-03-29 and 2026-10-25),
America/Santiago (its DST jump skips midnight).
"""

from __future__ import annotations

import json
import re
import zlib
from base64 import a85decode
from collections.abc import Iterable
from dataclasses import replace
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest

from edge.config import load_config
from edge.decision import GateState, Now, Scan, Temperature, decide
from edge.knowledge import Knowledge
from edge.provision import load_knowledge, provision
from edge.store import GateStore
from server.cards import cards_for, write_pdf
from server.site import Site, SiteError
from server.storage import passes
from server.validity import (
    day_start,
    from_text,
    last_valid_day,
    local_text,
    read_time,
    typed_text,
    until_text,
)
from tests.conftest import run_menwei

SHANGHAI = ZoneInfo("Asia/Shanghai")
BERLIN = ZoneInfo("Europe/Berlin")
SANTIAGO = ZoneInfo("America/Santiago")


def set_timezone(site: Site, zone: str) -> None:
    toml = site.dir / "server.toml"
    text = toml.read_text(encoding="utf-8")
    assert 'timezone = "Asia/Shanghai"' in text
    toml.write_text(text.replace('"Asia/Shanghai"', f'"{zone}"', 1), encoding="utf-8")


def issue(site: Site, household: str, *options: str) -> dict[str, Any]:
    out = run_menwei(
        "pass", "issue", str(site.dir), "--household", household, "--name", "张三丰",
        *options, "--json",
    )  # fmt: skip
    result: dict[str, Any] = json.loads(out.stdout)
    return result


def gate_knowledge(site: Site, tmp_path: Path) -> Knowledge:
    """What a gate provisioned from the site now holds."""
    gate = tmp_path / "gate"
    provision(gate, site.dir, "east", "in", simulated=True)
    config = load_config(gate / "gate.toml")
    with GateStore(config.db_path) as store:
        return load_knowledge(config, store)


def reasons(know: Knowledge, qr: str, times: Iterable[str]) -> dict[str, str]:
    """Time (ISO with offset) → the reason of the decision on entering with 36.5 °C then, each
    by a gate whose data is current at that time (an online gate) and whose clock is trusted."""
    out = {}
    for at in times:
        when = datetime.fromisoformat(at)
        fresh = replace(know, config_issued_at=when, register_issued_at=when)
        scan = Scan(qr, "in")
        out[at] = decide(scan, Temperature(36.5), GateState(), fresh, Now(when, True)).reason
    return out


def test_a_last_day_includes_the_whole_day_and_a_first_day_starts_at_midnight(
    site: Site, tmp_path: Path
) -> None:
    issued = issue(site, "1-1-101", "--valid-from", "2026-12-01", "--valid-until", "2026-12-31")

    assert issued["valid_from"] == "2026-12-01T00:00:00+08:00"
    assert issued["valid_until"] == "2027-01-01T00:00:00+08:00"  # exact, exclusive
    assert (issued["valid_through"], issued["last_valid_day"]) == ("2026-12-31", "2026-12-31")
    expected = {
        "2026-11-30T23:59:59+08:00": "not_yet_valid",
        "2026-12-01T00:00:00+08:00": "ok",
        "2026-12-30T18:00:00+08:00": "ok",
        # The resident who went out on the 30th comes home on the morning of the 31st.
        "2026-12-31T08:00:00+08:00": "ok",
        "2026-12-31T23:59:59+08:00": "ok",
        "2027-01-01T00:00:00+08:00": "expired",
    }
    assert reasons(gate_knowledge(site, tmp_path), issued["qr"], expected) == expected


def test_a_last_day_alone_runs_from_now_through_that_day(site: Site) -> None:
    last = datetime.now(SHANGHAI).date() + timedelta(days=10)
    before = datetime.now(UTC).replace(microsecond=0)

    issued = issue(site, "1-1-102", "--valid-until", last.isoformat())

    assert datetime.fromisoformat(issued["valid_from"]) >= before
    assert issued["valid_until"] == f"{last + timedelta(days=1)}T00:00:00+08:00"
    assert issued["last_valid_day"] == last.isoformat()


def test_an_exact_time_stays_exact(site: Site, tmp_path: Path) -> None:
    local = issue(
        site, "1-1-103", "--valid-from", "2026-12-01T08:30", "--valid-until", "2026-12-31T18:00"
    )
    # The same end given in UTC is the same instant.
    utc = issue(site, "1-1-104", "--valid-until", "2026-12-31T10:00:00+00:00")

    assert local["valid_from"] == "2026-12-01T08:30:00+08:00"
    assert local["valid_until"] == "2026-12-31T18:00:00+08:00"
    assert (local["valid_through"], local["last_valid_day"]) == ("2026-12-31 18:00", "2026-12-31")
    assert datetime.fromisoformat(utc["valid_until"]) == datetime.fromisoformat(
        local["valid_until"]
    )
    assert utc["valid_through"] == "2026-12-31 18:00"  # read in the site's zone
    expected = {
        "2026-12-01T08:29:59+08:00": "not_yet_valid",
        "2026-12-01T08:30:00+08:00": "ok",
        "2026-12-31T17:59:59+08:00": "ok",
        "2026-12-31T18:00:00+08:00": "expired",
    }
    assert reasons(gate_knowledge(site, tmp_path), local["qr"], expected) == expected


def test_a_last_day_in_a_dst_zone_has_the_hours_the_calendar_gives_it(
    site: Site, tmp_path: Path
) -> None:
    set_timezone(site, "Europe/Berlin")
    spring = issue(site, "2-1-101", "--valid-from", "2026-03-29", "--valid-until", "2026-03-29")
    autumn = issue(site, "2-1-102", "--valid-from", "2026-10-25", "--valid-until", "2026-10-25")

    assert (spring["valid_from"], spring["valid_until"]) == (
        "2026-03-29T00:00:00+01:00",
        "2026-03-30T00:00:00+02:00",
    )
    assert (autumn["valid_from"], autumn["valid_until"]) == (
        "2026-10-25T00:00:00+02:00",
        "2026-10-26T00:00:00+01:00",
    )
    hours = {
        p["last_valid_day"]: (
            datetime.fromisoformat(p["valid_until"]).timestamp()
            - datetime.fromisoformat(p["valid_from"]).timestamp()
        )
        / 3600
        for p in (spring, autumn)
    }
    assert hours == {"2026-03-29": 23, "2026-10-25": 25}
    know = gate_knowledge(site, tmp_path)
    in_spring = {"2026-03-29T23:59:59+02:00": "ok", "2026-03-30T00:00:00+02:00": "expired"}
    assert reasons(know, spring["qr"], in_spring) == in_spring
    in_autumn = {
        # 02:30 happens twice on 25 October; the second one (+01:00) is still that day.
        "2026-10-25T02:30:00+01:00": "ok",
        "2026-10-25T23:59:59+01:00": "ok",
        "2026-10-26T00:00:00+01:00": "expired",
    }
    assert reasons(know, autumn["qr"], in_autumn) == in_autumn


def test_a_midnight_skipped_by_dst_starts_the_day_at_the_jump() -> None:
    # Chile: clocks go from 2026-09-06 00:00 straight to 01:00 (-04:00 → -03:00).
    start = read_time("2026-09-06", SANTIAGO)
    assert start.isoformat() == "2026-09-06T01:00:00-03:00"
    assert start.timestamp() == datetime.fromisoformat("2026-09-06T04:00:00+00:00").timestamp()
    end = read_time("2026-09-05", SANTIAGO, end=True)
    assert end.timestamp() == start.timestamp()
    assert (until_text(end, SANTIAGO), from_text(start, SANTIAGO)) == ("2026-09-05", "2026-09-06")
    assert last_valid_day(end, SANTIAGO) == date(2026, 9, 5)


def test_how_an_end_reads() -> None:
    midnight = day_start(date(2027, 1, 1), SHANGHAI)
    assert until_text(midnight, SHANGHAI) == "2026-12-31"
    assert until_text(midnight.astimezone(UTC), SHANGHAI) == "2026-12-31"
    # The same instant is mid-day in another zone: there it ends at a time.
    assert until_text(midnight, BERLIN) == "2026-12-31 17:00"
    evening = datetime(2026, 12, 1, 18, 30, tzinfo=SHANGHAI)
    assert until_text(evening, SHANGHAI) == "2026-12-01 18:30"
    assert until_text(evening, SHANGHAI, today=date(2026, 12, 1)) == "18:30"
    assert until_text(evening, SHANGHAI, today=date(2026, 11, 30)) == "2026-12-01 18:30"
    assert last_valid_day(evening, SHANGHAI) == date(2026, 12, 1)
    assert from_text(datetime(2026, 12, 1, 14, 5, 9, tzinfo=SHANGHAI), SHANGHAI) == (
        "2026-12-01 14:05"
    )


@pytest.mark.parametrize(
    ("option", "text", "says"),
    [
        ("--valid-until", "2026-02-30", "not a date"),
        ("--valid-until", "31.12.2026", "not a date"),
        ("--valid-until", "2026-12-31T25:00", "not a date"),
        ("--valid-from", "someday", "not a date"),
        ("--valid-until", "9999-12-31", "out of range"),
        # Messages name the day typed (and the instant it ends), never only the exclusive end.
        (
            "--valid-until",
            "2107-01-01",
            "valid-until 2107-01-01 (the whole day, ends 2107-01-02 00:00) is outside the"
            " times a pass can hold: 1970-01-01 08:00 to 2106-02-07 14:28:15 (Asia/Shanghai)",
        ),
        (
            "--valid-until",
            "2026-11-30",
            "valid-until 2026-11-30 (the whole day, ends 2026-12-01 00:00) is not after"
            " valid-from 2026-12-01",
        ),
        (
            "--valid-from",
            "1969-12-31",
            "valid-from 1969-12-31 is outside the times a pass can hold: 1970-01-01 08:00",
        ),
        (
            "--valid-until",
            "9999-12-31T23:00-12:00",  # no local time: shown as typed
            "valid-until 9999-12-31T23:00:00-12:00 is outside",
        ),
    ],
)
def test_a_bad_date_is_refused_and_nothing_is_issued(
    site: Site, option: str, text: str, says: str
) -> None:
    register_before = site.summary()["register"]
    options = [option, text]
    if option == "--valid-until":
        options += ["--valid-from", "2026-12-01"]
    out = run_menwei(
        "pass", "issue", str(site.dir), "--household", "1-1-105", "--name", "李四", *options,
        "--json", check=False,
    )  # fmt: skip

    assert out.returncode == 2
    assert says in out.stderr and "Traceback" not in out.stderr
    assert out.stdout == ""
    with site.store.read() as tx:
        assert passes.find(tx) == []
    assert site.summary()["register"] == register_before


def test_the_day_before_the_first_day_is_refused_naming_both_days_as_typed(site: Site) -> None:
    """The dates typed, not the exclusive end one day later that they stand for (which read as
    if the two dates were equal)."""
    out = run_menwei(
        "pass", "issue", str(site.dir), "--household", "5-1-101", "--name", "测试",
        "--valid-from", "2026-12-05", "--valid-until", "2026-12-04", check=False,
    )  # fmt: skip
    assert out.returncode == 2 and "Traceback" not in out.stderr
    assert (
        "valid-until 2026-12-04 (the whole day, ends 2026-12-05 00:00) is not after"
        " valid-from 2026-12-05"
    ) in out.stderr
    assert "T00:00:00+08:00" not in out.stderr


def test_exact_times_in_messages_keep_their_seconds_and_never_raise(site: Site) -> None:
    start = site.parse_time("2026-12-05T10:00:30")
    with pytest.raises(SiteError) as err:
        site.issue_pass(
            "5-1-101", "测试", valid_from=start, valid_until=start - timedelta(seconds=20)
        )
    assert str(err.value) == (
        "valid-until 2026-12-05 10:00:10 is not after valid-from 2026-12-05 10:00:30"
    )
    with pytest.raises(
        SiteError, match=r"valid-until 2000-01-01 \(the whole day, .* the start \(now\)"
    ):
        site.issue_pass("5-1-101", "测试", valid_until=site.parse_time("2000-01-01", end=True))
    far = datetime(9999, 12, 31, 23, tzinfo=UTC)
    assert typed_text(far, SHANGHAI, end=True) == far.isoformat()
    assert local_text(far, SHANGHAI) == far.isoformat()
    # In a DST zone the end of a typed day is the next day's first instant as clocks show it.
    spring = day_start(date(2026, 3, 29), BERLIN)
    assert typed_text(spring, BERLIN, end=True) == (
        "2026-03-28 (the whole day, ends 2026-03-29 00:00)"
    )
    assert typed_text(spring, BERLIN) == "2026-03-29"


def test_human_output_shows_the_last_valid_day(site: Site) -> None:
    out = run_menwei(
        "pass", "issue", str(site.dir), "--household", "1-1-106", "--name", "李四",
        "--valid-from", "2026-12-01", "--valid-until", "2026-12-31",
    )  # fmt: skip
    lines = out.stdout.splitlines()
    assert "valid_through: 2026-12-31" in lines and "last_valid_day: 2026-12-31" in lines
    assert "valid_until: 2027-01-01T00:00:00+08:00" in lines


def pdf_text(path: Path) -> str:
    """The page content of a reportlab PDF (streams are ASCII85, then Flate, encoded)."""
    streams = re.findall(rb"stream\r?\n(.*?)~>\s*endstream", path.read_bytes(), re.S)
    assert streams, "no encoded content streams in the PDF"
    return "\n".join(zlib.decompress(a85decode(s)).decode("latin-1") for s in streams)


def test_the_printed_card_shows_the_first_and_last_valid_day(site: Site, tmp_path: Path) -> None:
    day = issue(site, "3-1-101", "--valid-from", "2026-12-01", "--valid-until", "2026-12-31")
    timed = issue(
        site, "3-1-102", "--valid-from", "2026-12-01T08:30", "--valid-until", "2026-12-31T18:00"
    )
    at = datetime(2026, 12, 15, tzinfo=SHANGHAI)
    cards = {c.pass_id: c for c in cards_for(site, at=at)}

    assert cards[day["pass_id"]].validity() == "2026-12-01 ~ 2026-12-31"
    assert cards[timed["pass_id"]].validity() == "2026-12-01 08:30 ~ 2026-12-31 18:00"
    write_pdf(list(cards.values()), tmp_path / "cards.pdf")
    printed = pdf_text(tmp_path / "cards.pdf")
    assert "(2026-12-01 ~ 2026-12-31)" in printed
    assert "(2026-12-01 08:30 ~ 2026-12-31 18:00)" in printed
    assert "2027-01-01" not in printed
