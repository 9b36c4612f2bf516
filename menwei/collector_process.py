"""Real collectors for the benchmarks: `menwei server init` and `menwei server run` processes.

The benchmarks run the collector as an operator does, through the command line, each
in its own process (its own interpreter, GIL and memory): `init_server` makes the
server directory (`menwei server init DIR --site SITE [--store URL]`), a
`CollectorFleet` runs K `menwei server run DIR --broker URL` on it (with
`--shared-group NAME` when K > 1: they share the gates' events). A collector is
ready once it has published the site's config, which it does right after
subscribing to the gates' topics; the fleet waits for every one of them.
"""

from __future__ import annotations

import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import IO

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from protocol import topics
from protocol.broker import parse_broker


class CollectorProcessError(RuntimeError):
    """A collector process could not be set up or did not start; the message says why."""


def menwei_command(*args: str) -> list[str]:
    """The command line of `menwei ARGS...` run by this interpreter."""
    return [sys.executable, "-m", "menwei.cli", *args]


def init_server(directory: Path, site: str, store: str | None = None) -> None:
    """`menwei server init DIR --site SITE [--store URL]`; raises CollectorProcessError with
    the last line of its error output when it fails."""
    args = ["server", "init", str(directory), "--site", site, "--json"]
    if store is not None:
        args += ["--store", store]
    done = subprocess.run(
        menwei_command(*args), capture_output=True, text=True, timeout=120, check=False
    )
    if done.returncode != 0:
        last = (done.stderr.strip().splitlines() or ["no output"])[-1]
        raise CollectorProcessError(f"menwei server init failed ({done.returncode}): {last}")


def peak_rss_mb(pid: int) -> float:
    """The peak resident set size (VmHWM of /proc/PID/status) of a running process, MiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024  # the kernel writes kB (KiB)
    raise CollectorProcessError(f"no VmHWM in /proc/{pid}/status")


class CollectorFleet:
    """`count` processes of `menwei server run DIRECTORY --broker BROKER_URL` for `site`,
    sharing the events through group `shared_group` when given; their output goes to
    `server-run-N.log` in `log_dir`; `extra_args` are added to each command line (e.g.
    `--http HOST:PORT` with one collector). `start()` returns once each is ready (see the module
    doc) and raises CollectorProcessError otherwise; `stop()` sends SIGTERM (the
    collector's clean stop) and SIGKILL after `stop_timeout_s`."""

    def __init__(
        self,
        directory: Path,
        site: str,
        broker_url: str,
        count: int = 1,
        *,
        shared_group: str | None = None,
        log_dir: Path,
        stop_timeout_s: float = 20.0,
        extra_args: tuple[str, ...] = (),
    ) -> None:
        if count < 1:
            raise ValueError("a fleet has at least one collector")
        if count > 1 and shared_group is None:
            raise ValueError("several collectors need a shared group")
        self.directory = directory
        self.site = site
        self.broker_url = broker_url
        self.count = count
        self.shared_group = shared_group
        self.log_dir = log_dir
        self.stop_timeout_s = stop_timeout_s
        self.extra_args = extra_args
        self.procs: list[subprocess.Popen[bytes]] = []
        self._logs: list[IO[bytes]] = []
        self.log_paths: list[Path] = []
        self._configs = 0  # config documents the collectors published since start()
        self._seen = threading.Condition()

    def start(self, timeout_s: float = 60.0) -> CollectorFleet:
        watcher = self._watch_configs()
        try:
            for n in range(1, self.count + 1):
                args = ["server", "run", str(self.directory), "--broker", self.broker_url]
                if self.shared_group is not None:
                    args += ["--shared-group", self.shared_group]
                args += self.extra_args
                path = self.log_dir / f"server-run-{n}.log"
                log = open(path, "wb")  # noqa: SIM115 - closed by stop()
                self._logs.append(log)
                self.log_paths.append(path)
                self.procs.append(
                    subprocess.Popen(menwei_command(*args), stdout=log, stderr=subprocess.STDOUT)
                )
            end = time.monotonic() + timeout_s
            dead = False
            with self._seen:
                while self._configs < self.count and not dead and time.monotonic() < end:
                    self._seen.wait(0.2)
                    dead = any(p.poll() is not None for p in self.procs)
                ready = self._configs >= self.count and not dead
            if not ready:
                self.stop()
                why = "exited" if dead else f"was not ready in {timeout_s:g} s"
                raise CollectorProcessError(f"a collector {why}: {self.log_tail()}")
        finally:
            watcher.disconnect()
            watcher.loop_stop()
        return self

    def _watch_configs(self) -> mqtt.Client:
        """A client that counts the config documents published from now on (the retained
        one already held, if any, is not counted)."""
        broker = parse_broker(self.broker_url)
        subscribed = threading.Event()
        client = mqtt.Client(
            CallbackAPIVersion.VERSION2, client_id="menwei-bench-ready", protocol=mqtt.MQTTv5
        )

        def on_connect(c: mqtt.Client, *_: object) -> None:
            c.subscribe(topics.config(self.site), qos=1)

        def on_subscribe(*_: object) -> None:
            subscribed.set()

        def on_message(_c: mqtt.Client, _u: object, msg: mqtt.MQTTMessage) -> None:
            if not msg.retain:
                with self._seen:
                    self._configs += 1
                    self._seen.notify_all()

        client.on_connect = on_connect
        client.on_subscribe = on_subscribe
        client.on_message = on_message
        client.connect(broker.host, broker.port)
        client.loop_start()
        if not subscribed.wait(15):
            client.loop_stop()
            raise CollectorProcessError(f"could not subscribe at {self.broker_url}")
        return client

    def peak_rss_mb(self) -> list[float]:
        """Each running collector's peak RSS so far, MiB (read before `stop()`)."""
        return [peak_rss_mb(p.pid) for p in self.procs]

    def log_tail(self, chars: int = 2000) -> str:
        """The end of each collector's output, for error messages."""
        return "\n".join(
            f"{path}:\n{path.read_text(errors='replace')[-chars:]}" for path in self.log_paths
        )

    def stop(self) -> None:
        """Stop every collector (idempotent)."""
        for p in self.procs:
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        for p in self.procs:
            try:
                p.wait(timeout=self.stop_timeout_s)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
        for log in self._logs:
            log.close()

    def __enter__(self) -> CollectorFleet:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
