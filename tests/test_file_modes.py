"""Files holding secrets or personal data are their owner's alone (issue 11: server.db,
server.toml, gate.db and gate.toml were created 0644, readable by every local user).

The init commands run as an installer runs them, under the common umask 022; the modes of
what they create are read back. Then a mode is loosened as a careless `cp` or `chmod` would,
and the doctors say so (and pass again once it is tightened)."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
from pathlib import Path

from server.site import Site
from tests.conftest import REPO, SITE


def menwei(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    """The real command line under umask 022 (what most shells have)."""
    proc = subprocess.run(
        [sys.executable, "-m", "menwei.cli", *args],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=REPO,
        umask=0o022,
    )
    assert not check or proc.returncode == 0, proc.stderr
    return proc


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def files_check(*args: str) -> tuple[int, dict[str, object]]:
    proc = menwei(*args, "--json", check=False)
    checks = json.loads(proc.stdout)["checks"]
    key = "check" if "check" in checks[0] else "device"
    return proc.returncode, next(c for c in checks if c[key] == "files")


def test_server_init_makes_its_secrets_private_and_the_doctor_watches_them(tmp_path: Path):
    directory = tmp_path / "srv"
    menwei("server", "init", str(directory), "--site", SITE)
    assert mode(directory) == 0o700
    for name in ("server.toml", "server.db", "keys/site-key-1.pem"):
        assert mode(directory / name) == 0o600, name
    assert mode(directory / "keys") == 0o700
    with Site(directory) as site:  # open, with a write: SQLite's -wal and -shm exist now
        site.issue_pass("1-1-101", "张三丰")
        for name in ("server.db-wal", "server.db-shm"):
            assert mode(directory / name) == 0o600, name
    assert mode(directory / "bundle") == 0o700  # its register names households and rooms
    assert all(mode(p) == 0o600 for p in (directory / "bundle").iterdir())
    code, check = files_check("server", "doctor", str(directory))
    assert code == 0 and check["ok"] is True

    (directory / "server.toml").chmod(0o644)
    (directory / "server.db").chmod(0o640)
    code, check = files_check("server", "doctor", str(directory))
    assert code == 1 and check["ok"] is False
    assert f"{directory / 'server.toml'} is 0644" in str(check["detail"])
    assert f"{directory / 'server.db'} is 0640" in str(check["detail"])
    assert "chmod go=" in str(check["fix"])
    os.chmod(directory / "server.toml", 0o600)
    os.chmod(directory / "server.db", 0o600)
    assert files_check("server", "doctor", str(directory))[0] == 0


def test_gate_init_makes_its_secrets_private_and_the_doctor_watches_them(tmp_path: Path):
    server = tmp_path / "srv"
    menwei("server", "init", str(server), "--site", SITE)
    gate = tmp_path / "gate"
    menwei("gate", "init", str(gate), "--server", str(server), "--gate", "east", "--simulated")
    assert mode(gate) == 0o700 and mode(gate / "stage") == 0o700
    for name in ("gate.toml", "gate.db"):
        assert mode(gate / name) == 0o600, name
    config = str(gate / "gate.toml")
    _, check = files_check("gate", "doctor", "--config", config)
    assert check["ok"] is True

    (gate / "gate.toml").chmod(0o644)
    _, check = files_check("gate", "doctor", "--config", config)
    assert check["ok"] is False and f"{gate / 'gate.toml'} is 0644" in str(check["detail"])
    assert "broker password" in str(check["detail"])
    (gate / "gate.toml").chmod(0o600)
    _, check = files_check("gate", "doctor", "--config", config)
    assert check["ok"] is True


def test_the_doctors_watch_every_key_file(tmp_path: Path):
    """Issue 11 (a new user): with the CA key, the collector's and the gate's TLS keys, a
    signing key and guards.json made 0644, both doctors still said `PASS files`."""
    server = tmp_path / "srv"
    menwei("server", "init", str(server), "--site", SITE)
    menwei("broker", "setup", str(server / "broker"), "--host", "localhost")
    gate = tmp_path / "gate"
    menwei("gate", "init", str(gate), "--server", str(server), "--gate", "east", "--simulated")
    pin = tmp_path / "pin"
    pin.write_text("471108\n", "utf-8")
    menwei("gate", "guard", "add", str(gate), "wang", "--pin-file", str(pin))
    guards = next(gate.rglob("guards.json"))
    config = str(gate / "gate.toml")
    for path in (gate / "gate.key", guards):
        assert mode(path) == 0o600, path
    assert files_check("gate", "doctor", "--config", config)[1]["ok"] is True
    assert files_check("server", "doctor", str(server))[0] == 0

    gate_secrets = {gate / "gate.key": "TLS key", guards: "PIN hashes"}
    server_secrets = {
        server / "broker" / "ca.key": "TLS private key",
        server / "broker" / "collector.key": "TLS private key",
        server / "broker" / "broker.key": "TLS private key",
        server / "keys" / "site-key-1.pem": "signing key",
    }
    for path in [*gate_secrets, *server_secrets]:
        path.chmod(0o644)
    (server / "broker").chmod(0o755)
    _, check = files_check("gate", "doctor", "--config", config)
    assert check["ok"] is False
    for path, held in gate_secrets.items():
        assert f"{path} is 0644" in str(check["detail"]) and held in str(check["detail"])
    code, check = files_check("server", "doctor", str(server))
    assert code == 1 and check["ok"] is False
    for path, held in server_secrets.items():
        assert f"{path} is 0644" in str(check["detail"]) and held in str(check["detail"])
    assert f"{server / 'broker'} is 0755" in str(check["detail"])
    assert str(server / "broker" / "ca.key") in str(check["fix"])
