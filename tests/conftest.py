"""Shared fixtures: a real Mosquitto on a free loopback port, server and gate directories.

Nothing of ours is mocked: the broker is Debian's mosquitto, stores are real
SQLite files in tmp_path, hardware is simulated at the bus level.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import HealthCheck, settings

from edge.provision import provision
from menwei.mosquitto import MosquittoBroker
from menwei.postgres import PostgresServer
from protocol.broker import parse_broker
from server.collector import Collector
from server.site import IssuedPass, Site
from server.storage import Store
from tests.e2e.helpers import wait_until

# CI runs on 2 shared cores: timing-based health checks and deadlines would make the
# property tests flaky without making them stronger.
settings.register_profile("menwei", deadline=None, suppress_health_check=[HealthCheck.too_slow])
settings.load_profile("menwei")

REPO = Path(__file__).resolve().parents[1]
DATASET = REPO.parent / "shared" / "datasets" / "qr-photos"
SITE = "test-site"


@pytest.fixture(scope="session")
def shared_broker() -> Iterator[MosquittoBroker]:
    """One broker for tests that do not stop it (topics are per-site, so tests do not collide
    when they use their own site slug or directory)."""
    with MosquittoBroker() as broker:
        yield broker


@pytest.fixture(scope="session")
def postgres() -> Iterator[PostgresServer]:
    """One real PostgreSQL server for the session (menwei/postgres.py: Debian's initdb in a
    temporary directory); each test gets its own database from `store_url`."""
    with PostgresServer() as pg:
        yield pg


_databases = iter(range(1, 1_000_000))


@pytest.fixture(params=["sqlite", "postgresql"])
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A new, empty store on each backend: a SQLite file in tmp_path, or a new database on
    the session's PostgreSQL server. Tests of the storage layer take this fixture."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'store.db'}"
    pg: PostgresServer = request.getfixturevalue("postgres")
    return pg.create_database(f"t{next(_databases)}_{os.getpid()}")


@pytest.fixture
def store(store_url: str) -> Iterator[Store]:
    """A new store (server/storage) on each backend, migrated and open."""
    with Store(store_url) as s:
        yield s


@pytest.fixture
def broker() -> Iterator[MosquittoBroker]:
    """A broker of this test's own: fault tests stop and restart it."""
    with MosquittoBroker() as b:
        yield b


@pytest.fixture
def site(tmp_path: Path) -> Iterator[Site]:
    with Site.init(tmp_path / "server", SITE) as s:
        yield s


@pytest.fixture
def collector(site: Site, broker: MosquittoBroker) -> Iterator[Collector]:
    """The real collector of `site` on this test's own `broker`, connected."""
    c = Collector(site, parse_broker(broker.url))
    c.start()
    wait_until(c.connected.is_set, 15, "collector did not connect to the broker")
    yield c
    c.close()


@pytest.fixture
def resident(site: Site) -> IssuedPass:
    return site.issue_pass("1-1-101", "张三丰", room="1-1-101")


@pytest.fixture
def gate_dir(tmp_path: Path, site: Site, resident: IssuedPass) -> Path:
    """A simulated gate provisioned from `site` after `resident` was issued."""
    d = tmp_path / "gate"
    provision(d, site.dir, "east", "in", simulated=True)
    return d


def run_menwei(
    *args: str, check: bool = True, timeout: float = 120
) -> subprocess.CompletedProcess[str]:
    """The real command line in a subprocess, as an operator's script would call it."""
    proc = subprocess.run(
        [sys.executable, "-m", "menwei.cli", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
        cwd=REPO,
    )
    if check and proc.returncode != 0:
        raise AssertionError(f"menwei {' '.join(args)} failed ({proc.returncode}):\n{proc.stderr}")
    return proc
