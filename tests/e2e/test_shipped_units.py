"""The shipped systemd units, run as systemd runs them (no systemd here to start them).

Each unit's `ExecStart=` is read from `systemd/` as shipped; only the installer's paths are
replaced (the program under /opt/menwei, /etc/menwei/gate.toml, /var/lib/menwei/server) and
the process starts in the unit's `WorkingDirectory=` stand-in. For the gate (`Type=notify`,
`WatchdogSec=`) the test is the service manager: it binds `NOTIFY_SOCKET`, sets
`WATCHDOG_USEC` from the unit, and requires READY=1, WATCHDOG=1 well inside the watchdog
interval, and a clean exit on the unit's `KillSignal=` within `TimeoutStopSec=`. An edit to a
unit (a renamed option, a command the CLI no longer accepts, a slower watchdog) fails here.
"""

from __future__ import annotations

import itertools
import shlex
import signal
import socket
import subprocess
import sys
import time
from collections import defaultdict
from pathlib import Path

from edge.config import load_config
from edge.doctor import check_files
from menwei.mosquitto import MosquittoBroker
from server.doctor import check_files as server_files
from server.site import IssuedPass, Site
from tests.conftest import REPO
from tests.e2e.session_ca import PLACEHOLDER_BROKER

PROGRAM = "/opt/menwei/.venv/bin/menwei"
"""Where docs tell the installer to put the program (the unit's ExecStart)."""


def unit(name: str) -> dict[str, list[str]]:
    """Settings of a shipped unit, every value of repeated keys, comments left out."""
    settings: dict[str, list[str]] = defaultdict(list)
    for line in (REPO / "systemd" / name).read_text(encoding="utf-8").splitlines():
        line = line.strip()
        if line and not line.startswith(("#", ";", "[")):
            key, _, value = line.partition("=")
            settings[key.strip()].append(value.strip())
    return settings


def exec_start(settings: dict[str, list[str]], paths: dict[str, str]) -> list[str]:
    """The unit's command with the installer's paths (and only those) replaced."""
    (line,) = settings["ExecStart"]
    argv = shlex.split(line)
    assert argv[0] == PROGRAM, f"ExecStart runs {argv[0]}, the docs install {PROGRAM}"
    unknown = [a for a in argv[1:] if a.startswith("/") and a not in paths]
    assert not unknown, f"ExecStart names installer paths this test does not know: {unknown}"
    program = str(Path(sys.executable).with_name("menwei"))
    return [program, *(paths.get(a, a) for a in argv[1:])]


def umask(settings: dict[str, list[str]]) -> int:
    """The unit's UMask=: 0077, so that what the service creates is its user's alone."""
    assert settings["UMask"] == ["0077"]
    return int(settings["UMask"][0], 8)


def seconds(value: str) -> float:
    """A systemd time span of this unit ("20", "15s", "2min")."""
    for suffix, factor in (("min", 60.0), ("s", 1.0)):
        if value.endswith(suffix):
            return float(value.removesuffix(suffix)) * factor
    return float(value)


def test_the_gate_unit_starts_notifies_keeps_its_watchdog_and_stops_on_its_kill_signal(
    tmp_path: Path, gate_dir: Path, resident: IssuedPass
) -> None:
    settings = unit("menwei-gate.service")
    assert settings["Type"] == ["notify"] and settings["NotifyAccess"] == ["main"]
    watchdog_s = seconds(settings["WatchdogSec"][0])
    stop_s = seconds(settings["TimeoutStopSec"][0])
    kill = getattr(signal, settings["KillSignal"][0])
    argv = exec_start(settings, {"/etc/menwei/gate.toml": str(gate_dir / "gate.toml")})
    working = tmp_path / "var-lib-menwei"  # WorkingDirectory=/var/lib/menwei
    working.mkdir()
    assert settings["WorkingDirectory"] == ["/var/lib/menwei"]

    notify_path = tmp_path / "notify"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as manager:
        manager.bind(str(notify_path))
        manager.settimeout(0.5)
        env = {
            "PATH": "/usr/bin:/bin",
            "NOTIFY_SOCKET": str(notify_path),
            "WATCHDOG_USEC": str(int(watchdog_s * 1e6)),
            "PYTHONUNBUFFERED": "1",
        }
        log = (tmp_path / "gate.log").open("wb")
        proc = subprocess.Popen([*argv, "--broker", "none"], cwd=working, env=env, stdout=log,
                                stderr=subprocess.STDOUT, umask=umask(settings))  # fmt: skip
        try:
            heard: list[tuple[float, str]] = []
            start = time.monotonic()
            # Long enough for several watchdog intervals of the daemon (it pings every 2 s).
            while time.monotonic() - start < 12 and proc.poll() is None:
                try:
                    heard.append((time.monotonic(), manager.recv(4096).decode()))
                except TimeoutError:
                    continue
            assert proc.poll() is None, (tmp_path / "gate.log").read_text()
            messages = [m for _, m in heard]
            assert "READY=1" in messages, messages
            pings = [t for t, m in heard if m == "WATCHDOG=1"]
            assert len(pings) >= 3, messages
            gaps = [b - a for a, b in itertools.pairwise(pings)]
            assert max(gaps) < watchdog_s / 2, f"watchdog pings {gaps} for WatchdogSec={watchdog_s}"
            stopping_at = time.monotonic()
            proc.send_signal(kill)
            assert proc.wait(timeout=stop_s) == 0
            assert time.monotonic() - stopping_at < stop_s
            leftover = []
            while True:
                try:
                    leftover.append(manager.recv(4096).decode())
                except TimeoutError:
                    break
            assert "STOPPING=1" in leftover, leftover
            assert check_files(load_config(gate_dir / "gate.toml")).ok  # gate.db and its WAL
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
            log.close()


def test_the_server_unit_runs_the_collector_and_stops_on_sigterm(
    tmp_path: Path, site: Site, broker: MosquittoBroker
) -> None:
    settings = unit("menwei-server.service")
    assert settings["Type"] == ["simple"]
    argv = exec_start(settings, {"/var/lib/menwei/server": str(site.dir)})
    toml = site.dir / "server.toml"  # the installer names the site's broker here
    text = toml.read_text(encoding="utf-8")
    assert f'broker = "{PLACEHOLDER_BROKER}"' in text, "server.toml layout changed"
    toml.write_text(text.replace(PLACEHOLDER_BROKER, broker.url), encoding="utf-8")
    log_path = tmp_path / "server.log"
    with log_path.open("wb") as log:
        proc = subprocess.Popen(
            argv,
            cwd=tmp_path,
            env={"PATH": "/usr/bin:/bin", "PYTHONUNBUFFERED": "1"},
            stdout=log,
            stderr=subprocess.STDOUT,
            umask=umask(settings),
        )
        try:
            end = time.monotonic() + 30
            while "collector running" not in log_path.read_text() and time.monotonic() < end:
                assert proc.poll() is None, log_path.read_text()
                time.sleep(0.1)
            assert "collector running" in log_path.read_text(), log_path.read_text()
            proc.send_signal(signal.SIGTERM)  # systemd's default KillSignal
            assert proc.wait(timeout=30) == 0, log_path.read_text()
            assert server_files(site).ok  # server.toml, the keys, server.db and its WAL
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
