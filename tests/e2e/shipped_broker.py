"""A real Mosquitto set up the way docs/configuration.md tells an installer to set it up.

    with ShippedBroker(tmp_path / "broker", ["collector", "east"]) as broker:
        ...  # broker.url, broker.login("east"); broker.restart(); broker.log()

Two setups, as documented, for site "sunny" (the site slug of the shipped ACL):
- TLS, the default: `menwei broker setup FOLDER` makes the site CA, the broker's and the
  collector's certificates, systemd/mosquitto-menwei.conf and the site's ACL; `menwei broker
  add-client` one certificate per further collector and `menwei broker add-gate ... --out` one
  per gate (the certificates test clients present); then the install commands `broker setup`
  printed put them under /etc/mosquitto. FOLDER is the server directory's broker/ when one is
  given (`gate init --server` then issues the real gates' certificates from it).
- passwords (`mode="passwords"`): systemd/mosquitto-menwei-passwords.conf in its `conf.d/`,
  systemd/menwei-acl.example as `menwei.acl`, and a password file made by the documented
  `mosquitto_passwd` commands, one per user, the password typed twice on its standard input as
  a person would.
Both run with Debian's `/etc/mosquitto/mosquitto.conf` of this machine (the file the
`mosquitto` package installs: pid file, persistence location, log file, `include_dir conf.d`).

Every file is read as it is in the checkout (or as the command wrote it) when the broker first
starts, so an edit to a shipped file is what the tests run. Only these change: every absolute
path under /etc, /var or /run moves under `workdir` (which mirrors that tree), the `listener`
line gets a free port on 127.0.0.1 instead of every interface, and, when the tests run as root,
the main config says `user root` (Mosquitto would otherwise drop to the `mosquitto` user, which
cannot read a private temporary directory). Not run: the documented `chown` (needs root and the
`mosquitto` user) and `systemctl restart mosquitto` (this helper starts it).
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import re
import subprocess
from collections.abc import Collection
from pathlib import Path
from typing import IO, Any, Literal

from menwei.broker_setup import ACL_FILE, install_commands
from menwei.cli import main as menwei_main
from menwei.mosquitto import BrokerError, free_port, start_mosquitto, stop_mosquitto
from menwei.site_ca import COLLECTOR_NAME
from protocol.broker_tls import TlsFiles

REPO = Path(__file__).resolve().parents[2]
SITE = "sunny"
"""The site slug written in the shipped ACL."""
DEBIAN_CONF = Path("/etc/mosquitto/mosquitto.conf")
"""The main config of Debian's `mosquitto` package; it includes /etc/mosquitto/conf.d/."""

# --- TLS (the default) -------------------------------------------------------------------------
# docs/configuration.md shows `menwei broker setup` for this folder and the install commands it
# prints for it (tests check that the page contains each line, `documented_tls_commands`).
DOCUMENTED_FOLDER = Path("/var/lib/menwei/server/broker")
SETUP_COMMAND = f"menwei broker setup {DOCUMENTED_FOLDER} --host mqtt.sunny.example"
CHOWN = "sudo chown "
"""Documented, not run (needs root and the mosquitto user), like `systemctl`."""

# --- passwords (the alternative) ---------------------------------------------------------------
# The installer's commands, exactly as docs/configuration.md gives them (tests check that the
# page contains each line). SITE and GATE are the placeholders the page tells people to fill.
INSTALL_COMMANDS = (
    "sudo cp systemd/mosquitto-menwei-passwords.conf /etc/mosquitto/conf.d/menwei.conf",
    "sed 's/sunny/SITE/g' systemd/menwei-acl.example"
    " | sudo tee /etc/mosquitto/menwei.acl >/dev/null",
)
FIRST_USER_COMMAND = "sudo mosquitto_passwd -c /etc/mosquitto/menwei.passwd collector"
NEXT_USER_COMMAND = "sudo mosquitto_passwd /etc/mosquitto/menwei.passwd GATE"
# A second collector process (docs/configuration.md, "Several collectors"): its own user, made
# by NEXT_USER_COMMAND with its name, and its own copy of the ACL's collector section.
EXTRA_COLLECTOR = "collector-2"
EXTRA_COLLECTOR_ACL_COMMAND = (
    "sed -n '/^user collector$/,$p' systemd/menwei-acl.example"
    " | sed 's/sunny/SITE/g; s/^user collector$/user collector-2/'"
    " | sudo tee -a /etc/mosquitto/menwei.acl >/dev/null"
)
PERMISSIONS_COMMAND = "sudo chmod 0600 /etc/mosquitto/menwei.passwd"

_SYSTEM_PATH = re.compile(r"(?<![\w/])(/(?:etc|var|run)/)")

Mode = Literal["tls", "passwords"]


def documented_tls_commands() -> list[str]:
    """What docs/configuration.md must show for TLS: the setup command and the install
    commands `broker setup` prints for DOCUMENTED_FOLDER."""
    return [SETUP_COMMAND, *install_commands(DOCUMENTED_FOLDER)]


def menwei_json(*args: str) -> dict[str, Any]:
    """The real command line, in this process (`--json` output)."""
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        status = menwei_main([*args, "--json"])
    if status != 0:
        raise BrokerError(f"menwei {' '.join(args)} exited with {status}")
    return dict(json.loads(out.getvalue()))


class ShippedBroker:
    """Debian's Mosquitto with the shipped Menwei configuration and ACL, set up as documented.

    `users` names the clients: "collector" (required), one per gate, named as the gate (its
    slug), and "collector-2", "collector-3"... for more collectors. With TLS (the default)
    each gets a certificate (`login`); `folder` is the broker folder `menwei broker setup`
    makes (default: one in `workdir`; a server directory's `broker/` so that `gate init`
    issues its gates' certificates). With `mode="passwords"`, `users` maps usernames to
    passwords. `workdir` holds the moved /etc/mosquitto, /var/lib/mosquitto,
    /var/log/mosquitto and /run/mosquitto. Raises BrokerError when Mosquitto or a documented
    step fails (it is never skipped: `make test` installs Debian's `mosquitto`)."""

    def __init__(
        self,
        workdir: Path,
        users: Collection[str] | dict[str, str],
        port: int | None = None,
        *,
        mode: Mode = "tls",
        folder: Path | None = None,
    ) -> None:
        if "collector" not in users:
            raise BrokerError("users must include 'collector' (the documented -c command)")
        if re.search(r"\s", str(workdir)):
            raise BrokerError(f"{workdir}: the documented commands need a path without spaces")
        if mode == "passwords" and not isinstance(users, dict):
            raise BrokerError("passwords: users maps each user to a password")
        self.workdir = workdir
        self.mode = mode
        # The documented order: the collector first (its command creates the password file).
        self.users = ["collector", *(u for u in users if u != "collector")]
        self.passwords = dict(users) if isinstance(users, dict) else {}
        self.folder = folder or workdir / "broker-folder"
        self.host = "127.0.0.1"
        self.port = port or free_port()
        self.proc: subprocess.Popen[bytes] | None = None
        self._out: IO[bytes] | None = None
        self._installed = False

    @property
    def url(self) -> str:
        """`mqtts://127.0.0.1:PORT` (`mqtt://` with passwords), as gate.toml and server.toml
        write a broker."""
        return f"{'mqtts' if self.mode == 'tls' else 'mqtt'}://{self.host}:{self.port}"

    @property
    def etc(self) -> Path:
        """The moved /etc/mosquitto."""
        return self.workdir / "etc" / "mosquitto"

    def login(self, user: str) -> dict[str, Any]:
        """MqttWatcher's keyword arguments to log in as `user`: its certificate (TLS) or its
        username and password."""
        if self.mode == "passwords":
            return {"username": user, "password": self.passwords[user]}
        return {"tls": self.tls_files(user)}

    def tls_files(self, user: str) -> TlsFiles:
        """The CA, certificate and key of `user`: a collector's in the broker folder (as `broker
        setup` and `add-client` wrote them), a gate's in the folder `add-gate --out` wrote."""
        if COLLECTOR_NAME.fullmatch(user):
            base = self.folder
            return TlsFiles(base / "ca.pem", base / f"{user}.pem", base / f"{user}.key")
        base = self.workdir / "clients" / user
        return TlsFiles(base / "ca.pem", base / "gate.pem", base / "gate.key")

    def start(self, timeout_s: float = 15.0) -> ShippedBroker:
        """Install (first start only: a restart keeps the files and the persistence) and run
        until the listener accepts connections."""
        if self.proc is not None:
            raise BrokerError("the broker is already running")
        if not self._installed:
            self._install()
            self._installed = True
        self._out = open(self.workdir / "mosquitto.out", "ab")  # noqa: SIM115 - closed in stop()
        try:
            self.proc = start_mosquitto(
                self.etc / "mosquitto.conf", self.port, self._out, timeout_s
            )
        except BrokerError as exc:
            self._out.close()
            raise BrokerError(f"{exc}\n{self.log()}") from None
        return self

    def stop(self) -> None:
        """SIGTERM: Mosquitto saves its persistence file (retained messages, sessions) and
        exits. Idempotent."""
        if self.proc is not None:
            stop_mosquitto(self.proc)
            self.proc = None
        if self._out is not None:
            self._out.close()
            self._out = None

    def restart(self) -> None:
        """Stop, then start on the same port with the same files and persistence."""
        self.stop()
        self.start()

    def log(self) -> str:
        """The end of the broker's log file and of its standard output (for failures)."""
        parts = []
        for path in (
            self.workdir / "var" / "log" / "mosquitto" / "mosquitto.log",
            self.workdir / "mosquitto.out",
        ):
            if path.exists():
                parts.append(f"--- {path.name}\n{path.read_text('utf-8', 'replace')[-3000:]}")
        return "\n".join(parts)

    def __enter__(self) -> ShippedBroker:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # --- installation, as documented ------------------------------------------------------

    def _install(self) -> None:
        for sub in (
            "etc/mosquitto/conf.d",
            "var/lib/mosquitto",
            "var/log/mosquitto",
            "run/mosquitto",
        ):
            (self.workdir / sub).mkdir(parents=True, exist_ok=True)
        if not DEBIAN_CONF.exists():
            raise BrokerError(f"{DEBIAN_CONF} missing: install Debian's mosquitto package")
        main = self._moved(DEBIAN_CONF.read_text(encoding="utf-8"))
        if os.geteuid() == 0:
            main += "\n# Tests run as root: stay root (tests/e2e/shipped_broker.py).\nuser root\n"
        (self.etc / "mosquitto.conf").write_text(main, encoding="utf-8")
        if self.mode == "tls":
            self._install_tls()
        else:
            self._install_passwords()
        conf = self.etc / "conf.d" / "menwei.conf"
        conf.write_text(self._moved(self._listening_here(conf.read_text("utf-8"))), "utf-8")

    def _install_tls(self) -> None:
        """`menwei broker setup` (unless the folder holds a CA), `add-client` for each further
        collector, `add-gate --out` for each gate, then the install commands setup printed."""
        if not (self.folder / "ca.key").exists():
            setup = ("broker", "setup", str(self.folder))
            site = () if (self.folder.parent / "server.toml").exists() else ("--site", SITE)
            commands = menwei_json(*setup, *site)["install"]
        else:
            commands = install_commands(self.folder)
        for user in self.users[1:]:
            if COLLECTOR_NAME.fullmatch(user):
                menwei_json("broker", "add-client", str(self.folder), user)
            else:
                out = self.workdir / "clients" / user
                menwei_json("broker", "add-gate", str(self.folder), user, "--out", str(out))
        for command in commands:
            if not command.startswith((CHOWN, "sudo systemctl ")):
                self._run(command)
        if (self.etc / ACL_FILE).read_bytes() != (self.folder / ACL_FILE).read_bytes():
            raise BrokerError("the installed ACL is not the one `menwei broker` wrote")

    def _install_passwords(self) -> None:
        for command in INSTALL_COMMANDS:
            self._run(command)
        for i, user in enumerate(self.users):
            command = FIRST_USER_COMMAND if i == 0 else NEXT_USER_COMMAND.replace("GATE", user)
            password = self.passwords[user]
            self._run(command, typed=f"{password}\n{password}\n")
            if re.fullmatch(r"collector-[0-9]+", user):
                self._run(EXTRA_COLLECTOR_ACL_COMMAND.replace(EXTRA_COLLECTOR, user))
        self._run(PERMISSIONS_COMMAND)

    def _moved(self, text: str) -> str:
        """Every absolute /etc, /var or /run path moved under the workdir."""
        return _SYSTEM_PATH.sub(lambda m: f"{self.workdir}{m.group(1)}", text)

    def _listening_here(self, conf: str) -> str:
        """The shipped conf with its one `listener` on this broker's port, loopback only."""
        lines = conf.splitlines(keepends=True)
        listeners = [i for i, line in enumerate(lines) if line.split()[:1] == ["listener"]]
        if len(listeners) != 1:
            raise BrokerError(
                f"the shipped Mosquitto conf has {len(listeners)} listener lines; "
                "tests/e2e/shipped_broker.py moves exactly one"
            )
        lines[listeners[0]] = f"listener {self.port} {self.host}\n"
        return "".join(lines)

    def _run(self, command: str, typed: str = "") -> None:
        """A documented command with `sudo` left out, SITE as the shipped slug and system
        paths moved, run by the shell from the checkout (as the docs' `cd` says)."""
        line = self._moved(command.replace("sudo ", "").replace("SITE", SITE))
        done = subprocess.run(
            ["bash", "-o", "pipefail", "-c", line],
            cwd=REPO,
            input=typed,
            capture_output=True,
            text=True,
            timeout=30,
        )
        if done.returncode != 0:
            raise BrokerError(f"documented step failed ({done.returncode}): {line}\n{done.stderr}")
