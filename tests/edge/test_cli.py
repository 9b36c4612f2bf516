"""The command line, run as an operator's script runs it: `menwei gate|server|pass ...`."""

from __future__ import annotations

import argparse
import json
import sqlite3
import stat
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from edge.provision import provision, render_gate_toml
from menwei.cli import build_parser, main
from protocol.passes import PassPayload, Role, sign_pass, unix, verify_pass
from server.cli import write_qr_png
from server.keys import key_path
from server.site import IssuedPass, Site
from tests.conftest import DATASET, SITE, run_menwei

FALSE_POSITIVE = DATASET / "falsepositives-1" / "01.webp"  # a photo without any QR code


def config_of(gate_dir: Path) -> str:
    return str(gate_dir / "gate.toml")


def dump(db: Path) -> list[str]:
    conn = sqlite3.connect(db)
    try:
        return list(conn.iterdump())
    finally:
        conn.close()


def scan(gate_dir: Path, *images: Path, extra: tuple[str, ...] = ()) -> list[dict[str, Any]]:
    out = run_menwei(
        "gate", "scan", "--config", config_of(gate_dir), *map(str, images), *extra, "--json"
    )
    return list(json.loads(out.stdout))


def png(directory: Path, name: str, text: str) -> Path:
    directory.mkdir(exist_ok=True)
    path = directory / name
    write_qr_png(text, path)
    return path


def forged_qr() -> str:
    now = datetime.now(UTC)
    payload = PassPayload(
        1,
        1,
        SITE,
        "1-1-101",
        Role.RESIDENT,
        unix(now - timedelta(days=1)),
        unix(now + timedelta(days=1)),
    )
    return sign_pass(payload, Ed25519PrivateKey.generate())  # key id 1, but not the site's key


# --- gate scan ----------------------------------------------------------------------------


def test_scan_decides_on_each_image_in_order_and_writes_nothing(
    tmp_path: Path, site: Site, resident: IssuedPass, gate_dir: Path
):
    now = datetime.now(UTC)
    expired = site.issue_pass(
        "1-1-102", "李四", valid_from=now - timedelta(days=10), valid_until=now - timedelta(days=1)
    )
    images = tmp_path / "images"
    blank = images / "blank.png"
    images.mkdir()
    cv2.imwrite(str(blank), np.full((480, 640, 3), 255, np.uint8))
    text_file = images / "notes.png"
    text_file.write_text("this is not an image\n")
    inputs = [
        png(images, "valid.png", resident.qr),
        png(images, "expired.png", expired.qr),
        png(images, "forged.png", forged_qr()),
        png(images, "shop.png", "HTTPS://SHOP.EXAMPLE/MENU"),
        blank,
        text_file,
        images / "missing.png",
        png(images, "valid-again.png", resident.qr),
    ]
    expected = ["ok", "expired", "bad_signature", "malformed", "no_qr", "unreadable_image"]
    expected += ["unreadable_image", "ok"]
    if FALSE_POSITIVE.exists():
        inputs.insert(5, FALSE_POSITIVE)
        expected.insert(5, "no_qr")
    db = gate_dir / "gate.db"
    before = dump(db)

    results = scan(gate_dir, *inputs, extra=("--temperature", "36.5"))

    assert [r["file"] for r in results] == [str(p) for p in inputs]
    assert [r["reason"] for r in results] == expected
    assert [r["decision"] for r in results] == ["allow" if e == "ok" else "deny" for e in expected]
    valid = results[0]
    assert (valid["qr_found"], valid["pass_id"], valid["household"], valid["temperature_c"]) == (
        True,
        resident.pass_id,
        "1-1-101",
        36.5,
    )
    assert results[1]["pass_id"] == expired.pass_id
    assert results[2]["pass_id"] is None  # a forgery's claims are not repeated
    assert [r["qr_found"] for r in results[4:-1]] == [False] * (len(inputs) - 5)
    assert all(set(r["message"]) == {"zh", "en"} for r in results)
    # scan tries decisions: no event, no outbox row, no state change in the gate's store.
    assert dump(db) == before
    assert run_menwei("gate", "log", "--config", config_of(gate_dir), "--json").stdout == ""


def test_a_pass_the_register_no_longer_holds_is_refused_as_expired(
    tmp_path: Path, site: Site, resident: IssuedPass
):
    """The register carries only passes that can still be presented (server/site.py): passes
    that ended days ago, revoked or not, are not in it, and a gate provisioned from it refuses
    them by their signed validity window."""
    now = datetime.now(UTC)
    ended = {"valid_from": now - timedelta(days=10), "valid_until": now - timedelta(days=3)}
    old = site.issue_pass("1-1-102", "李四", **ended)
    stolen = site.issue_pass("1-1-103", "王五", **ended)
    site.revoke_pass(stolen.pass_id, "lost card")
    register = site.published_register()
    assert register is not None
    assert (list(register.passes), register.revoked) == ([resident.pass_id], {})
    gate = tmp_path / "gate"
    provision(gate, site.dir, "east", "in", simulated=True)
    images = tmp_path / "images"
    cards = [png(images, f"{p.pass_id}.png", p.qr) for p in (old, stolen, resident)]

    results = scan(gate, *cards, extra=("--temperature", "36.5"))

    assert [(r["reason"], r["pass_id"]) for r in results] == [
        ("expired", old.pass_id),
        ("expired", stolen.pass_id),
        ("ok", resident.pass_id),
    ]


def test_scan_temperature_rules(tmp_path: Path, resident: IssuedPass, gate_dir: Path):
    image = png(tmp_path / "images", "valid.png", resident.qr)

    (unmeasured,) = scan(gate_dir, image)
    (high,) = scan(gate_dir, image, extra=("--temperature", "38.0"))

    assert (unmeasured["decision"], unmeasured["reason"], unmeasured["guard_required"]) == (
        "deny",
        "no_temperature",
        True,
    )
    assert (high["decision"], high["reason"], high["temperature_c"]) == (
        "deny",
        "fever_recheck",
        38.0,
    )


def allow_exits_all_day(site: Site, gate_dir: Path) -> None:
    """Exits at any hour, so the test does not depend on when it runs (site policy)."""
    toml = site.dir / "server.toml"
    text = toml.read_text(encoding="utf-8")
    if 'outing_windows = ["06:00-20:00"]' in text:
        toml.write_text(text.replace('["06:00-20:00"]', '["00:00-24:00"]'), encoding="utf-8")
        with Site(site.dir) as fresh:
            fresh.publish_policy("test")
        provision(gate_dir, site.dir, "east", "in", simulated=True)


def test_scan_exit_needs_no_temperature(
    tmp_path: Path, site: Site, resident: IssuedPass, gate_dir: Path
):
    allow_exits_all_day(site, gate_dir)
    image = png(tmp_path / "images", "valid.png", resident.qr)

    (out,) = scan(gate_dir, image, extra=("--direction", "out"))

    assert (out["decision"], out["reason"], out["direction"], out["temperature_c"]) == (
        "allow",
        "ok",
        "out",
        None,
    )


# --- gate replay --------------------------------------------------------------------------


def replay(gate_dir: Path, script: Path) -> list[dict[str, Any]]:
    out = run_menwei("gate", "replay", "--config", config_of(gate_dir), str(script), "--json")
    return [json.loads(line) for line in out.stdout.splitlines()]


def line(at: datetime, qr: str, temperature: float | None = None, direction: str = "in") -> str:
    item: dict[str, Any] = {"at": at.isoformat(), "qr": qr, "direction": direction}
    if temperature is not None:
        item["temperature"] = temperature
    return json.dumps(item)


def test_replay_fever_recheck_then_fever_and_bad_lines(
    tmp_path: Path, resident: IssuedPass, gate_dir: Path
):
    t = datetime.now(UTC) + timedelta(minutes=1)
    script = tmp_path / "scans.jsonl"
    script.write_text(
        "\n".join(
            [
                line(t, resident.qr, 38.0),
                line(t + timedelta(minutes=4), resident.qr, 37.9),
                "{this is not JSON",
                "",
                line(t + timedelta(minutes=5), resident.qr, 36.5),
                json.dumps({"at": "2026-11-29T08:00:00", "qr": resident.qr}),  # no UTC offset
                json.dumps({"at": t.isoformat(), "qr": resident.qr, "direction": "sideways"}),
                json.dumps({"at": t.isoformat(), "qr": resident.qr, "temperature": "warm"}),
                line(t + timedelta(minutes=6), resident.qr, 38.5),
            ]
        )
        + "\n",
        encoding="utf-8",
    )
    before = dump(gate_dir / "gate.db")

    out = replay(gate_dir, script)

    assert [o["reason"] for o in out] == [
        "fever_recheck",
        "fever",
        "bad_input",
        "ok",
        "bad_input",
        "bad_input",
        "bad_input",
        "fever_recheck",  # the allow in between cleared the first reading
    ]
    assert [o["decision"] for o in out] == ["deny", "deny", "deny", "allow"] + ["deny"] * 4
    assert out[2]["line"] == 3 and out[2]["error"]
    assert [o.get("line") for o in out[4:7]] == [6, 7, 8]
    assert out[1]["temperature_c"] == 37.9 and out[1]["pass_id"] == resident.pass_id
    assert dump(gate_dir / "gate.db") == before  # replay is a scratch run


def test_replay_refuses_a_pass_once_its_revocation_is_provisioned(
    tmp_path: Path, site: Site, resident: IssuedPass, gate_dir: Path
):
    script = tmp_path / "scan.jsonl"
    script.write_text(line(datetime.now(UTC) + timedelta(minutes=1), resident.qr, 36.4) + "\n")
    assert [o["reason"] for o in replay(gate_dir, script)] == ["ok"]

    run_menwei("pass", "revoke", str(site.dir), str(resident.pass_id), "--reason", "lost card")
    # Until the gate has the new register, it cannot know (offline decisions are facts).
    assert [o["reason"] for o in replay(gate_dir, script)] == ["ok"]
    run_menwei("gate", "init", str(gate_dir), "--server", str(site.dir), "--gate", "east")

    (refused,) = replay(gate_dir, script)
    assert (refused["decision"], refused["reason"], refused["pass_id"]) == (
        "deny",
        "revoked",
        resident.pass_id,
    )


# --- gate log, gate init ------------------------------------------------------------------


def test_log_of_an_empty_gate_prints_nothing(gate_dir: Path):
    out = run_menwei("gate", "log", "--config", config_of(gate_dir), "--json")
    assert (out.returncode, out.stdout) == (0, "")


def test_init_again_refreshes_the_documents_and_keeps_gate_toml(site: Site, gate_dir: Path):
    check = ("gate", "check-config", "--config", config_of(gate_dir), "--json")
    first = json.loads(run_menwei(*check).stdout)["versions"]
    toml = gate_dir / "gate.toml"
    edited = toml.read_text(encoding="utf-8").replace('direction = "in"', 'direction = "both"')
    toml.write_text(edited + "# the guard's note\n", encoding="utf-8")
    site.issue_pass("1-1-103", "王五")  # a new register version

    result = json.loads(
        run_menwei(
            "gate", "init", str(gate_dir), "--server", str(site.dir), "--gate", "east", "--json"
        ).stdout
    )

    assert result["config_created"] is False
    assert result["versions"]["register"] > first["register"]
    assert result["versions"]["config"] == first["config"]
    assert toml.read_text(encoding="utf-8") == edited + "# the guard's note\n"
    assert json.loads(run_menwei(*check).stdout)["versions"] == result["versions"]


def test_init_of_a_hardware_gate_trusts_the_kernel_and_reports_the_clock(
    site: Site, tmp_path: Path
):
    gate = tmp_path / "pi"
    result = json.loads(
        run_menwei(
            "gate", "init", str(gate), "--server", str(site.dir), "--gate", "north", "--json"
        ).stdout
    )
    assert 'trust = "kernel"' in (gate / "gate.toml").read_text(encoding="utf-8")
    clock = result["clock"]
    assert clock["source"] == "kernel" and isinstance(clock["maxerror_us"], int)
    # This machine's clock may or may not be synchronised: what is said must match.
    assert ("effect" in clock, "fix" in clock) == (not clock["synchronised"],) * 2


def test_init_says_plainly_when_the_clock_is_not_trusted(site: Site, tmp_path: Path):
    gate = tmp_path / "pi"
    gate.mkdir()
    toml = render_gate_toml(SITE, "north", "in", False, "mqtt://127.0.0.1:1883")
    (gate / "gate.toml").write_text(toml.replace('trust = "kernel"', 'trust = "never"'))

    out = run_menwei("gate", "init", str(gate), "--server", str(site.dir), "--gate", "north")

    lines = out.stdout.splitlines()
    assert "clock: never (trust = never)" in lines
    effect = next(line for line in lines if line.startswith("  effect: "))
    assert "请门卫人工核验" in effect and "guard_confirm" in effect
    assert any(line.startswith("  fix: ") and 'trust = "kernel"' in line for line in lines)


# --- server init, pass issue ----------------------------------------------------------------


def test_server_init_refuses_an_existing_directory(site: Site):
    config_before = (site.dir / "server.toml").read_bytes()
    key_before = key_path(site.dir, 1).read_bytes()

    proc = run_menwei("server", "init", str(site.dir), "--site", "other-site", check=False)

    assert proc.returncode == 2
    assert "already holds a Menwei server" in proc.stderr and "Traceback" not in proc.stderr
    assert (site.dir / "server.toml").read_bytes() == config_before
    assert key_path(site.dir, 1).read_bytes() == key_before


def test_server_init_writes_the_private_key_mode_0600(tmp_path: Path):
    directory = tmp_path / "fresh-server"

    summary = json.loads(
        run_menwei("server", "init", str(directory), "--site", "fresh", "--json").stdout
    )

    assert (summary["site"], summary["keys"]) == ("fresh", [1])
    assert stat.S_IMODE(key_path(directory, 1).stat().st_mode) == 0o600
    assert stat.S_IMODE(key_path(directory, 1).parent.stat().st_mode) & 0o077 == 0


def test_pass_issue_json(site: Site):
    proc = run_menwei(
        "pass", "issue", str(site.dir), "--household", "2-1-301", "--name", "赵六",
        "--room", "2-1-301", "--json",
    )  # fmt: skip

    issued = json.loads(proc.stdout)

    assert {"pass_id", "household", "qr"} <= set(issued)
    assert issued["household"] == "2-1-301"
    trust = {k.key_id: k for k in site.trust_keys()}
    assert verify_pass(issued["qr"], SITE, trust).pass_id == issued["pass_id"]
    assert "赵六" not in proc.stdout  # the name stays on the server
    assert stat.S_IMODE(key_path(site.dir, 1).stat().st_mode) == 0o600


def test_pass_issue_with_a_bad_household_is_a_clear_error(site: Site):
    proc = run_menwei(
        "pass", "issue", str(site.dir), "--household", "1 号楼", "--name", "x", check=False
    )
    assert proc.returncode == 2
    assert "household id" in proc.stderr and "Traceback" not in proc.stderr


# --- --help everywhere ------------------------------------------------------------------


def command_paths(
    parser: argparse.ArgumentParser, path: tuple[str, ...] = ()
) -> list[tuple[str, ...]]:
    paths = [path]
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                paths += command_paths(sub, (*path, name))
    return paths


PATHS = command_paths(build_parser())


def test_the_command_tree_is_what_we_document():
    assert {p[0] for p in PATHS if p} >= {"demo", "gate", "server", "pass", "bench"}
    assert {p[1] for p in PATHS if len(p) == 2 and p[0] == "gate"} >= {
        "init",
        "scan",
        "replay",
        "run",
        "log",
        "check-config",
    }


@pytest.mark.parametrize("path", PATHS, ids=lambda p: " ".join(p) or "menwei")
def test_help_exits_0(path, capsys):
    with pytest.raises(SystemExit) as done:
        main([*path, "--help"])
    assert done.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith(" ".join(["usage: menwei", *path]))


def test_help_from_the_real_command_line():
    proc = run_menwei("--help")
    assert proc.returncode == 0 and "gate" in proc.stdout and "server" in proc.stdout
