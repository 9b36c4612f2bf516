"""One site CA for the whole test session, made as an installer makes it (`menwei broker setup`).

End-to-end tests run over TLS, as a site does: their private brokers (menwei/mosquitto.py) use
this folder's broker certificate, each test's server directory gets a copy of the folder as its
`broker/` (so `gate init` issues gate certificates from it, and server.toml names the
collector's), and test clients (watchers) present a certificate of their own. Made once per
session and cached: key generation is fast, but there is no need to do it per test.
"""

from __future__ import annotations

import atexit
import functools
import shutil
import tempfile
from pathlib import Path

from edge.provision import CA_FILE, CERT_FILE, KEY_FILE, write_credentials
from menwei import broker_setup
from menwei.broker_setup import BROKER_DIR
from protocol.broker_tls import TlsFiles

SITE = "test-site"
"""The site slug in the CA's name (the private brokers have no ACL: any slug works)."""
PLACEHOLDER_BROKER = "mqtts://127.0.0.1:8883"
"""server.toml's broker after `use_session_ca`: tests give the real one (`--broker`)."""


@functools.cache
def _root() -> Path:
    tmp = tempfile.TemporaryDirectory(prefix="menwei-test-ca-")
    atexit.register(tmp.cleanup)
    return Path(tmp.name)


@functools.cache
def session_broker() -> Path:
    """The session's broker folder: ca.pem, ca.key, broker.pem (for 127.0.0.1 and localhost),
    collector.pem, ..."""
    folder = _root() / BROKER_DIR
    broker_setup.setup(folder, SITE, ["127.0.0.1"])
    return folder


@functools.cache
def client_tls(name: str = "watcher") -> TlsFiles:
    """TLS files of a client named `name` (a gate's certificate of the session CA)."""
    folder = _root() / "clients" / name
    folder.mkdir(parents=True)
    write_credentials(folder, broker_setup.issue_gate(session_broker(), name))
    return TlsFiles(folder / CA_FILE, folder / CERT_FILE, folder / KEY_FILE)


def use_session_ca(server_dir: Path, broker: str = PLACEHOLDER_BROKER) -> None:
    """Give the server directory the session's broker folder (as `menwei broker setup
    SERVER_DIR/broker` would have made it) and point its server.toml at it, as
    `broker setup` tells an installer."""
    shutil.copytree(session_broker(), server_dir / BROKER_DIR)
    broker_setup.link_server_toml(server_dir, broker)
