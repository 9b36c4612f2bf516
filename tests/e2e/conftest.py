"""End-to-end tests run over TLS: the brokers, sites and clients of tests/conftest.py, with a
certificate each from the session's site CA (tests/e2e/session_ca.py)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from edge.provision import provision
from menwei.broker_setup import gate_credentials
from menwei.mosquitto import MosquittoBroker
from server.site import IssuedPass, Site
from tests.conftest import SITE
from tests.e2e.session_ca import session_broker, use_session_ca


@pytest.fixture(scope="session")
def shared_broker() -> Iterator[MosquittoBroker]:
    """One TLS broker for tests that do not stop it."""
    with MosquittoBroker(tls=session_broker()) as broker:
        yield broker


@pytest.fixture
def broker() -> Iterator[MosquittoBroker]:
    """A TLS broker of this test's own: fault tests stop and restart it."""
    with MosquittoBroker(tls=session_broker()) as b:
        yield b


@pytest.fixture
def site(tmp_path: Path) -> Iterator[Site]:
    """A site whose server directory holds the session's broker folder (`broker/`) and whose
    server.toml names the collector's certificate."""
    server = tmp_path / "server"
    Site.init(server, SITE).close()
    use_session_ca(server)
    with Site(server) as s:
        yield s


@pytest.fixture
def gate_dir(tmp_path: Path, site: Site, resident: IssuedPass) -> Path:
    """A simulated gate provisioned from `site` after `resident` was issued, with its broker
    certificate (as `menwei gate init` issues it from the server's broker CA)."""
    d = tmp_path / "gate"
    provision(
        d, site.dir, "east", "in", simulated=True, credentials=gate_credentials(site.dir, "east")
    )
    return d
