"""What the TLS link refuses, with the real gate daemon, the real collector and a real Mosquitto.

The broker speaks TLS only and wants a client certificate of the site CA (as the shipped
config: menwei/mosquitto.py `tls_listener`). Each attack is a gate whose credentials are wrong
in one way: no certificate, one of another site's CA, another site's CA for the broker, a
broker name its certificate does not carry, an expired certificate (made by the same code with
a past validity), a revoked one. Each time the gate says why in one line, logged once however
often it retries (and `menwei gate doctor` / `check-config` say it too), and the collector
never receives its event, while a control gate with good credentials delivers through the same
broker and collector. (A gate publishing as another gate: tests/e2e/test_shipped_broker.py.)
"""

from __future__ import annotations

import contextlib
import logging
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from edge.provision import BrokerCredentials, provision
from menwei import broker_setup
from menwei.broker_setup import BROKER_DIR
from menwei.mosquitto import MosquittoBroker
from menwei.site_ca import BROKER_CERT, BROKER_KEY, SiteCA
from protocol.broker import parse_broker
from server.collector import Collector
from server.site import IssuedPass, Site
from server.storage.engine import SQLITE_FILE
from tests.conftest import run_menwei
from tests.e2e.helpers import (
    GateThread,
    Stage,
    gate_progress,
    provision_gate,
    server_count,
    wait_until,
)

SYNC_LOG = "menwei.gate.sync"
RETRIES = 2
"""Failed attempts the attacking gate makes before its log is checked (one line for all)."""


def foreign_ca(tmp_path: Path) -> Path:
    """Another site's broker folder (`menwei broker setup` there)."""
    other = tmp_path / "other-site" / BROKER_DIR
    broker_setup.setup(other, "other-site", ["127.0.0.1"])
    return other


@dataclass
class Scene:
    """A site with a resident, a TLS broker its collector is connected to, and the test's log."""

    tmp: Path
    site: Site
    resident: IssuedPass
    url: str
    caplog: pytest.LogCaptureFixture

    @property
    def ca(self) -> SiteCA:
        return SiteCA.load(self.site.dir / BROKER_DIR)

    def gate(self, gate: str, url: str | None = None) -> Path:
        """A gate provisioned as `gate init` does: its certificate from the site's CA."""
        return provision_gate(self.tmp, self.site.dir, gate, "in", url or self.url)

    def gate_with(self, ca_pem: bytes, cert_pem: bytes, key_pem: bytes) -> Path:
        """Gate east with these credentials."""
        d = self.tmp / "east"
        creds = BrokerCredentials(ca_pem, cert_pem, key_pem, self.url)
        provision(d, self.site.dir, "east", "in", simulated=True, credentials=creds)
        return d

    def refusal(self, attacker: Path, control_url: str | None = None) -> str:
        """Run the attacking gate (with its own gate.toml's broker) and a control gate (west,
        good credentials) side by side, one resident at each. Returns the attacker's one-line
        error once the control's event is stored and the attacker has failed RETRIES times;
        asserts its event is not stored (it waits in its outbox) and the cause was logged
        once."""
        control = self.gate("west", control_url)
        db = self.site.dir / SQLITE_FILE
        with (
            self.caplog.at_level(logging.ERROR, logger=SYNC_LOG),
            GateThread(attacker, "") as bad,
            GateThread(control, control_url or self.url),
        ):
            for gate in (attacker, control):
                Stage(gate / "stage").drop(self.resident.qr, {"forehead_c": 34.5})
            wait_until(
                lambda: server_count(db, control.name) == 1,
                30,
                lambda: f"control gate {control.name}: {gate_progress(control)}",
            )
            sync = bad.daemon.sync
            assert sync is not None
            wait_until(lambda: sync.trouble.failures >= RETRIES, 60, "the gate did not retry")
            assert gate_progress(attacker).last_seq == 1, "the attacking gate decided"
        assert server_count(db, attacker.name) == 0
        assert gate_progress(attacker).backlog == 1
        lines = [r.getMessage() for r in self.caplog.records if r.name == SYNC_LOG]
        assert len(lines) == 1, lines
        return lines[0]


@pytest.fixture
def scene(
    tmp_path: Path,
    site: Site,
    resident: IssuedPass,
    broker: MosquittoBroker,
    collector: Collector,
    caplog: pytest.LogCaptureFixture,
) -> Scene:
    return Scene(tmp_path, site, resident, broker.url, caplog)


def doctor(gate_dir: Path) -> str:
    done = run_menwei("gate", "doctor", "--config", str(gate_dir / "gate.toml"), check=False)
    assert done.returncode == 1 and "Traceback" not in done.stderr, done.stderr
    return done.stdout


def test_a_gate_without_a_certificate_is_refused(scene: Scene) -> None:
    attacker = scene.gate("east")
    toml = attacker / "gate.toml"
    lines = toml.read_text("utf-8").splitlines(True)
    toml.write_text("".join(x for x in lines if not x.startswith(("cert_", "key_"))), "utf-8")
    line = scene.refusal(attacker)
    assert "the broker requires a client certificate" in line, line
    assert "requires a client certificate" in doctor(attacker)


def test_a_certificate_of_another_sites_ca_is_refused(scene: Scene) -> None:
    """Gate east of another site, given this site's ca.pem (so it trusts this broker): the
    broker does not trust its certificate."""
    foreign = broker_setup.issue_gate(foreign_ca(scene.tmp), "east")
    attacker = scene.gate_with(scene.ca.cert_pem, foreign.cert_pem, foreign.key_pem)
    line = scene.refusal(attacker)
    assert "refused this client's certificate" in line, line
    assert "refused this client's certificate" in doctor(attacker)


def test_a_broker_of_another_sites_ca_is_refused_by_the_gate(scene: Scene) -> None:
    """A gate whose ca.pem is another site's (as if it reached that site's broker, or a broker
    posing as its own) refuses the broker's certificate and sends it nothing."""
    other = SiteCA.load(foreign_ca(scene.tmp)).cert_pem
    own = broker_setup.issue_gate(scene.site.dir / BROKER_DIR, "east")
    line = scene.refusal(scene.gate_with(other, own.cert_pem, own.key_pem))
    assert "the broker's certificate is not signed by the CA of [mqtt] ca_file" in line, line


def test_an_expired_certificate_is_refused_and_said_so(scene: Scene) -> None:
    """A certificate made by the same code, valid for 30 days from 400 days ago."""
    ca = scene.ca
    old = ca.issue("east", "gate", now=datetime.now(UTC) - timedelta(days=400), days=30)
    attacker = scene.gate_with(ca.cert_pem, old.cert_pem, old.key_pem)
    line = scene.refusal(attacker)
    assert "refused this client's certificate: it has expired" in line, line
    check = run_menwei("gate", "check-config", "--config", str(attacker / "gate.toml"), check=False)
    assert check.returncode == 2 and "expired on" in check.stderr, check.stderr
    assert "Traceback" not in check.stderr
    assert "expired on" in doctor(attacker)


@contextlib.contextmanager
def own_broker(
    tmp_path: Path, site: Site, resident: IssuedPass, caplog: pytest.LogCaptureFixture, folder: Path
) -> Iterator[tuple[MosquittoBroker, Scene]]:
    """A broker with the certificates of `folder`, the site's collector connected to it."""
    with MosquittoBroker(tls=folder) as broker:
        yield broker, Scene(tmp_path, site, resident, broker.url, caplog)


def connected_collector(site: Site, url: str) -> contextlib.AbstractContextManager[Collector]:
    collector = Collector(site, parse_broker(url))
    collector.start()
    wait_until(collector.connected.is_set, 15, "collector did not connect")
    return collector


def test_a_broker_name_its_certificate_does_not_carry_is_refused_by_the_gate(
    tmp_path: Path, site: Site, resident: IssuedPass, caplog: pytest.LogCaptureFixture
) -> None:
    """The gate checks the broker's name: `localhost` reaches the same broker, but its
    certificate (of the site's CA) is for 127.0.0.1 only; a machine with a certificate of
    this CA issued for another name is refused the same way."""
    folder = tmp_path / "named-broker"
    shutil.copytree(site.dir / BROKER_DIR, folder)
    creds = SiteCA.load(folder).issue("127.0.0.1", "broker", ("127.0.0.1",))
    (folder / BROKER_CERT).write_bytes(creds.cert_pem)
    (folder / BROKER_KEY).write_bytes(creds.key_pem)
    with own_broker(tmp_path, site, resident, caplog, folder) as (broker, scene):
        wrong = broker.url.replace("127.0.0.1", "localhost")
        attacker = scene.gate("east", wrong)
        with connected_collector(site, broker.url):
            line = scene.refusal(attacker)
        assert "the broker's certificate is not valid for 'localhost'" in line, line
        assert "`menwei broker renew SERVER_DIR/broker --host localhost`" in line, line
        assert "not valid for 'localhost'" in doctor(attacker)


def test_a_revoked_certificate_is_refused(
    tmp_path: Path, site: Site, resident: IssuedPass, caplog: pytest.LogCaptureFixture
) -> None:
    """`menwei broker revoke` (a stolen gate): once the broker has the new CRL (the command
    says to install it and restart the broker), the gate's certificate no longer gets in."""
    folder = site.dir / BROKER_DIR
    with own_broker(tmp_path, site, resident, caplog, folder) as (broker, scene):
        attacker = scene.gate("east")
        revoked = run_menwei("broker", "revoke", str(folder), "east", "--json")
        assert '"revoked": ["' in revoked.stdout
        broker.stop()
        broker.start()
        with connected_collector(site, broker.url):
            line = scene.refusal(attacker)
    assert "it was revoked" in line, line
