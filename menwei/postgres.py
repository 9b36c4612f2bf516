"""A throwaway PostgreSQL server: for the test suite and `menwei bench collector`.

A real cluster made with Debian's `initdb` (package `postgresql`) in a temporary
directory, listening on a free loopback port and a Unix socket in that
directory, with fsync off (it is thrown away; nothing here measures durability).
PostgreSQL refuses to run as root, so under root the cluster belongs to the
`postgres` user that the package creates and its programs run as that user.
`stop()` really stops it (`pg_ctl stop -m fast`).
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import subprocess
import tempfile
from pathlib import Path

from menwei.mosquitto import free_port


class PostgresError(RuntimeError):
    """The server could not be made or started; the message says what to install or fix."""


def find_bindir() -> Path:
    """Debian's /usr/lib/postgresql/VERSION/bin (the newest), or where `initdb` is on PATH."""
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=_version)
    if found:
        return Path(found[-1]).parent
    initdb = shutil.which("initdb")
    if initdb:
        return Path(initdb).parent
    raise PostgresError(
        "PostgreSQL not found: install it (make test, or apt-get install postgresql)"
    )


def _version(path: str) -> int:
    try:
        return int(Path(path).parts[-3])
    except ValueError:
        return 0


class PostgresServer:
    """`with PostgresServer() as pg: pg.url` — a superuser `menwei` with trust authentication
    on 127.0.0.1; `pg.create_database(name)` gives the URL of a new empty database."""

    USER = "menwei"

    def __init__(self) -> None:
        self.bindir = find_bindir()
        self.port = free_port()
        self.dir = Path(tempfile.mkdtemp(prefix="menwei-pg-"))
        self.data = self.dir / "data"
        self._as: list[str] = []
        if os.geteuid() == 0:
            try:
                owner = pwd.getpwnam("postgres")
            except KeyError:
                raise PostgresError(
                    "running as root needs the postgres user (apt-get install postgresql)"
                ) from None
            os.chown(self.dir, owner.pw_uid, owner.pw_gid)
            self._as = ["runuser", "-u", "postgres", "--"]
        self._started = False

    @property
    def url(self) -> str:
        return self.database_url("postgres")

    def database_url(self, name: str) -> str:
        return f"postgresql://{self.USER}@127.0.0.1:{self.port}/{name}"

    def start(self) -> PostgresServer:
        self._run(
            "initdb",
            "-D",
            str(self.data),
            "-U",
            self.USER,
            "--auth=trust",
            "-E",
            "UTF8",
            "--locale=C.UTF-8",
            "--no-sync",
        )
        return self.resume()

    def resume(self) -> PostgresServer:
        """Start the cluster's server (again, after `stop()`: fault tests); its data stay."""
        options = (
            f"-p {self.port} -k {self.dir} -c listen_addresses=127.0.0.1 -c fsync=off"
            " -c synchronous_commit=off -c full_page_writes=off -c max_connections=200"
        )
        self._run(
            "pg_ctl",
            "-D",
            str(self.data),
            "-l",
            str(self.dir / "log"),
            "-o",
            options,
            "-w",
            "-t",
            "60",
            "start",
        )
        self._started = True
        return self

    def create_database(self, name: str, template: str = "template1") -> str:
        """CREATE DATABASE `name` (a copy of `template`); returns its URL."""
        self.psql(f'CREATE DATABASE "{name}" TEMPLATE "{template}"')
        return self.database_url(name)

    def psql(self, sql: str, database: str = "postgres") -> str:
        out = subprocess.run(
            [
                str(self.bindir / "psql"),
                "-X",
                "-q",
                "-At",
                "-v",
                "ON_ERROR_STOP=1",
                "-h",
                "127.0.0.1",
                "-p",
                str(self.port),
                "-U",
                self.USER,
                "-d",
                database,
                "-c",
                sql,
            ],
            capture_output=True,
            text=True,
            check=False,
            timeout=60,
        )
        if out.returncode != 0:
            raise PostgresError(f"psql failed: {out.stderr.strip()}")
        return out.stdout

    def stop(self) -> None:
        if self._started:
            self._started = False
            self._run("pg_ctl", "-D", str(self.data), "-m", "fast", "-w", "stop", check=False)

    def close(self) -> None:
        self.stop()
        shutil.rmtree(self.dir, ignore_errors=True)

    def __enter__(self) -> PostgresServer:
        try:
            return self.start()
        except BaseException:
            self.close()
            raise

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _run(self, program: str, *args: str, check: bool = True) -> None:
        out = subprocess.run(
            [*self._as, str(self.bindir / program), *args],
            capture_output=True,
            text=True,
            check=False,
            timeout=120,
        )
        if check and out.returncode != 0:
            log = self.dir / "log"
            tail = log.read_text(errors="replace")[-2000:] if log.exists() else ""
            raise PostgresError(
                f"{program} failed ({out.returncode}): {out.stderr.strip()}\n{tail}"
            )
