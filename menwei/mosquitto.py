"""A private Mosquitto broker on a free loopback port: for `menwei demo` and the test suite.

It is a real broker process (Debian's `mosquitto`), configured with the
queue limits of the shipped `systemd/mosquitto-menwei.conf`, so the demo and
tests exercise what a site runs; with `tls` (a folder made by `menwei broker
setup`) it speaks TLS only, with that folder's certificates, and takes each
client's identity from its certificate, as the shipped config does. `stop()`
really stops it (fault tests).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from typing import IO

from menwei.site_ca import BROKER_CERT, BROKER_KEY, CA_CERT, CRL_FILE


class BrokerError(RuntimeError):
    """The broker could not be started."""


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def find_mosquitto(program: str = "mosquitto") -> str:
    """The path of Debian's `mosquitto` (or another program of the package, such as
    `mosquitto_passwd`). Raises BrokerError saying how to install it."""
    for candidate in (
        shutil.which(program),
        f"/usr/sbin/{program}",
        f"/usr/bin/{program}",
        f"/usr/local/sbin/{program}",
    ):
        if candidate and Path(candidate).exists():
            return candidate
    raise BrokerError(
        f"{program} not found: install it (make install, or apt-get install mosquitto)"
    )


def start_mosquitto(
    conf: Path, port: int, log: IO[bytes], timeout_s: float = 10.0
) -> subprocess.Popen[bytes]:
    """Run `mosquitto -c conf` (its output to `log`) and return once it accepts TCP
    connections on 127.0.0.1:`port`. Raises BrokerError if it exits or does not listen
    within `timeout_s` seconds (the process is stopped then)."""
    proc = subprocess.Popen(
        [find_mosquitto(), "-c", str(conf)], stdout=log, stderr=subprocess.STDOUT
    )
    end = time.monotonic() + timeout_s
    while time.monotonic() < end:
        if proc.poll() is not None:
            raise BrokerError(f"mosquitto exited with {proc.returncode}; see {conf}")
        with (
            contextlib.suppress(OSError),
            socket.create_connection(("127.0.0.1", port), timeout=0.2),
        ):
            return proc
        time.sleep(0.05)
    stop_mosquitto(proc)
    raise BrokerError(f"mosquitto did not listen on port {port} in {timeout_s}s")


def stop_mosquitto(proc: subprocess.Popen[bytes]) -> None:
    """SIGTERM (Mosquitto saves its persistence file), SIGKILL after 5 s."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def tls_listener(folder: Path) -> str:
    """The TLS lines of a listener for the broker folder `folder` (`menwei broker setup`): its
    certificates, a client certificate of its CA required, the identity taken from it."""
    # Run as root, Mosquitto drops to the `mosquitto` user before it reads the key, which
    # cannot read a private folder of root's.
    stay = "user root\n" if os.geteuid() == 0 else ""
    return (
        f"cafile {folder / CA_CERT}\n"
        f"certfile {folder / BROKER_CERT}\n"
        f"keyfile {folder / BROKER_KEY}\n"
        f"crlfile {folder / CRL_FILE}\n"
        "tls_version tlsv1.2\n"
        "require_certificate true\n"
        "use_identity_as_username true\n" + stay
    )


class MosquittoBroker:
    def __init__(
        self, port: int | None = None, workdir: Path | None = None, tls: Path | None = None
    ) -> None:
        """`tls`: a broker folder (`menwei broker setup`); the broker then speaks TLS only."""
        self.port = port or free_port()
        self._tmp = None if workdir else tempfile.TemporaryDirectory(prefix="menwei-mqtt-")
        self.workdir = workdir or Path(self._tmp.name)  # type: ignore[union-attr]
        self.tls = tls
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        """mqtt://127.0.0.1:PORT, or mqtts:// (127.0.0.1 is a name of every broker certificate
        `menwei broker setup` makes)."""
        return f"{'mqtts' if self.tls else 'mqtt'}://127.0.0.1:{self.port}"

    def start(self, timeout_s: float = 10.0) -> MosquittoBroker:
        conf = self.workdir / "mosquitto.conf"
        conf.write_text(
            f"listener {self.port} 127.0.0.1\n"
            + (tls_listener(self.tls.resolve()) if self.tls else "")
            + "allow_anonymous true\n"
            + "set_tcp_nodelay true\n"
            "persistence false\n"
            # A slow subscriber must not lose acknowledged QoS 1 messages (Mosquitto's
            # default of 1000 silently dropped them in our measurements).
            "max_queued_messages 0\n"
            "max_inflight_messages 100\n"
            "log_dest stderr\n"
            "log_type error\nlog_type warning\n"
        )
        self.log = open(self.workdir / "mosquitto.log", "ab")  # noqa: SIM115 - lives with proc
        self.proc = start_mosquitto(conf, self.port, self.log, timeout_s)
        return self

    def stop(self) -> None:
        if self.proc is not None:
            stop_mosquitto(self.proc)
        self.proc = None
        if getattr(self, "log", None) is not None:
            self.log.close()

    def close(self) -> None:
        self.stop()
        if self._tmp is not None:
            self._tmp.cleanup()

    def __enter__(self) -> MosquittoBroker:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()
