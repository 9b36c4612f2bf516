"""Every file a command reads has a size cap (issue 11: `--config /dev/zero` read forever).

Each endless or oversize input, given to the real command line in a subprocess, is refused
with a message that names it and exit status 2, well within the subprocess's timeout (a
command that read forever would fail the test by that timeout, not hang it)."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from edge.provision import provision
from protocol.documents import CONFIG_FILE
from protocol.files import (
    FILE_CAPS,
    InputFileError,
    create_private,
    loose,
    read_bounded,
    write_private,
)
from server.keys import key_path
from server.site import BUNDLE_DIR, Site
from tests.conftest import REPO, SITE, run_menwei

GiB = 1024**3


def fifo(path: Path) -> Path:
    os.mkfifo(path)
    return path


def huge(path: Path) -> Path:
    """A sparse file of 1 GiB: no disk used, every byte a zero."""
    with path.open("wb") as f:
        f.truncate(GiB)
    return path


def zero(path: Path) -> Path:
    path.symlink_to("/dev/zero")
    return path


HOSTILE: dict[str, Callable[[Path], Path]] = {"dev-zero": zero, "fifo": fifo, "1-gib": huge}


@pytest.mark.parametrize("make", HOSTILE.values(), ids=HOSTILE.keys())
def test_read_bounded_refuses_what_never_ends_or_is_too_large(
    tmp_path: Path, make: Callable[[Path], Path]
) -> None:
    path = make(tmp_path / "input")
    with pytest.raises(InputFileError, match=str(path)):
        read_bounded(path, "config")


def test_read_bounded_reads_a_file_up_to_its_cap_and_not_a_byte_more(tmp_path: Path) -> None:
    cap = FILE_CAPS["password"]
    path = tmp_path / "password"
    path.write_bytes(b"x" * cap)
    assert read_bounded(path, "password") == b"x" * cap
    path.write_bytes(b"x" * (cap + 1))
    with pytest.raises(InputFileError, match="over the 4 KiB cap for password files"):
        read_bounded(path, "password")
    with pytest.raises(InputFileError, match="a directory"):
        read_bounded(tmp_path, "config")
    with pytest.raises(FileNotFoundError):  # callers say "cannot read", as before
        read_bounded(tmp_path / "missing", "config")


def test_private_files_are_0600_whatever_the_umask(tmp_path: Path) -> None:
    old = os.umask(0o022)
    try:
        write_private(tmp_path / "secret", b"one")
        (tmp_path / "existing").write_bytes(b"kept")
        assert loose([tmp_path / "existing"]) == [(tmp_path / "existing", 0o644)]
        create_private(tmp_path / "existing")
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "secret").stat().st_mode) == 0o600
    assert (tmp_path / "existing").read_bytes() == b"kept"
    assert loose([tmp_path / "secret", tmp_path / "existing", tmp_path / "missing"]) == []


@pytest.fixture(scope="module")
def site_dir(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    root = tmp_path_factory.mktemp("caps")
    with Site.init(root / "server", SITE) as site:
        site.issue_pass("1-1-101", "张三丰", room="1-1-101")
        provision(root / "gate", site.dir, "east", "in", simulated=True)
    yield root / "server"


DRIVER = """
import contextlib, io, json, sys
from menwei.cli import main
for argv in json.loads(sys.argv[1]):
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        code = main(argv)
    print(json.dumps([code, err.getvalue()]), flush=True)
"""
"""Runs the command line's main() once per argv in one Python process: the real commands in
a real process, without an interpreter start per call, under the subprocess's timeout."""


def refusals(*calls: list[str]) -> list[str]:
    """The error message of each call; each must exit 2 without a traceback."""
    proc = subprocess.run(
        [sys.executable, "-c", DRIVER, json.dumps(calls)],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=REPO,
    )
    assert proc.returncode == 0, proc.stderr
    outcomes = [json.loads(line) for line in proc.stdout.splitlines()]
    assert len(outcomes) == len(calls), proc.stderr
    for call, (code, err) in zip(calls, outcomes, strict=True):
        assert code == 2, (call, err)
        assert err.startswith("menwei: error: ") and "Traceback" not in err, (call, err)
    return [str(err) for _code, err in outcomes]


def refused(*args: str) -> str:
    return refusals(list(args))[0]


def test_gate_commands_refuse_an_endless_config(tmp_path: Path) -> None:
    configs = [make(tmp_path / f"{name}.toml") for name, make in HOSTILE.items()]
    calls = [
        ["gate", command, "--config", str(config)]
        for config in configs
        for command in ("check-config", "run", "doctor")
    ]
    for call, err in zip(calls, refusals(*calls), strict=True):
        assert call[3] in err


def test_the_real_process_exits_2_on_dev_zero() -> None:
    proc = run_menwei("gate", "check-config", "--config", "/dev/zero", check=False, timeout=60)
    assert proc.returncode == 2
    assert proc.stderr == (
        "menwei: error: /dev/zero: not a regular file (a device, FIFO or socket): refused\n"
    )


def test_every_kind_of_file_the_commands_read_is_capped(site_dir: Path, tmp_path: Path) -> None:
    gate_toml = str(site_dir.parent / "gate" / "gate.toml")
    policy = fifo(tmp_path / "policy.toml")
    script, image = zero(tmp_path / "script.jsonl"), huge(tmp_path / "a.png")
    replay, scan, policy_err, register, password = refusals(
        ["gate", "replay", "--config", gate_toml, "--json", str(script)],
        ["gate", "scan", "--config", gate_toml, "--json", str(image)],
        ["gate", "replay", "--config", gate_toml, "--policy", str(policy), str(script)],
        ["register", "import", str(site_dir), str(huge(tmp_path / "register.csv"))],
        ["server", "run", str(site_dir), "--mqtt-password-file", str(zero(tmp_path / "pw"))],
    )
    assert f"{script}: not a regular file" in replay
    assert f"{image}: 1073741824 bytes, over the 64 MiB cap for image files" in scan
    assert f"{policy}: not a regular file" in policy_err
    assert "over the 20 MiB cap for register files; split the register" in register
    assert "--mqtt-password-file" in password and "not a regular file" in password


def test_gate_init_refuses_an_endless_bundle(site_dir: Path, tmp_path: Path) -> None:
    bundle = tmp_path / "usb-stick"
    bundle.mkdir()
    for f in (site_dir / BUNDLE_DIR).iterdir():
        (bundle / f.name).write_bytes(f.read_bytes())
    (bundle / CONFIG_FILE).unlink()
    fifo(bundle / CONFIG_FILE)
    err = refused("gate", "init", str(tmp_path / "g"), "--server", str(bundle), "--gate", "w")
    assert f"{bundle / CONFIG_FILE}: not a regular file" in err
    trust = next(p for p in bundle.iterdir() if p.name.startswith("trust"))
    trust.unlink()
    huge(trust)
    err = refused("gate", "init", str(tmp_path / "g"), "--server", str(bundle), "--gate", "w")
    assert "over the 1 MiB cap for trust files" in err


def test_server_commands_refuse_an_endless_config_or_key(tmp_path: Path) -> None:
    with Site.init(tmp_path / "server", SITE) as site:
        directory = site.dir
    key = key_path(directory, 1)
    key.unlink()
    zero(key)
    (err,) = refusals(["pass", "issue", str(directory), "--household", "1-1-101", "--name", "张"])
    assert f"{key}: not a regular file" in err
    toml = directory / "server.toml"
    toml.unlink()
    fifo(toml)
    for err in refusals(*(["server", c, str(directory)] for c in ("status", "run", "doctor"))):
        assert f"{toml}: not a regular file" in err
