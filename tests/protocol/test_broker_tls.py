"""The TLS files of [mqtt]: the rules of the config tables, and one clear line for every file
that cannot be used (missing, unreadable, not PEM, a key that is not the certificate's)."""

from __future__ import annotations

import os
import ssl
from pathlib import Path

import pytest

from edge.config import ConfigError, load_config
from menwei.site_ca import SiteCA, write_private
from protocol.broker_tls import BrokerTlsError, TlsFiles, client_context, tls_failure
from server.config import ServerConfigError, load_server_config
from server.site import Site

GATE = '[gate]\nsite = "sunny"\nid = "east"\n'


@pytest.fixture
def files(tmp_path: Path) -> TlsFiles:
    """A gate's files from a real site CA: ca.pem, east.pem, east.key."""
    ca = SiteCA.create(tmp_path / "ca", "sunny")
    creds = ca.issue("east", "gate")
    (tmp_path / "east.pem").write_bytes(creds.cert_pem)
    write_private(tmp_path / "east.key", creds.key_pem)
    return TlsFiles(tmp_path / "ca" / "ca.pem", tmp_path / "east.pem", tmp_path / "east.key")


def test_good_files_make_a_context_that_checks_the_broker(files: TlsFiles) -> None:
    ctx = client_context(files)
    assert ctx.verify_mode == ssl.CERT_REQUIRED and ctx.check_hostname
    assert ctx.minimum_version == ssl.TLSVersion.TLSv1_2


def test_each_unusable_file_is_named(files: TlsFiles, tmp_path: Path) -> None:
    other = SiteCA.create(tmp_path / "other", "other").issue("east", "gate")
    (tmp_path / "other.key").write_bytes(other.key_pem)
    (tmp_path / "junk.pem").write_text("not a certificate\n", "utf-8")
    cases = [
        (TlsFiles(tmp_path / "missing.pem", None, None), "ca_file", "No such file"),
        (TlsFiles(tmp_path / "junk.pem", None, None), "ca_file", "not a PEM certificate"),
        (TlsFiles(files.ca_file, tmp_path / "gone.pem", files.key_file), "cert_file", "No such"),
        (TlsFiles(files.ca_file, files.cert_file, tmp_path / "gone.key"), "key_file", "No such"),
        (TlsFiles(files.ca_file, files.cert_file, tmp_path / "other.key"), "cannot be used", ""),
    ]
    for bad, key, why in cases:
        with pytest.raises(BrokerTlsError) as err:
            client_context(bad)
        assert key in str(err.value) and why in str(err.value), str(err.value)
        assert "\n" not in str(err.value)


def test_failures_are_said_in_one_line_with_the_cause() -> None:
    said = tls_failure("failed to receive on socket: [SSL: SSLV3_ALERT_CERTIFICATE_EXPIRED] x", "h")
    assert said is not None and "it has expired" in said
    assert tls_failure(ConnectionRefusedError(111, "Connection refused"), "h") is None


@pytest.mark.parametrize(
    ("mqtt", "why"),
    [
        ('broker = "mqtts://b:8883"\ncert_file = "c.pem"\n', "cert_file and key_file go together"),
        ('broker = "mqtt://b:1883"\nca_file = "ca.pem"\n', "write the broker as mqtts://HOST"),
    ],
)
def test_the_mqtt_tables_refuse_half_a_tls_setup(tmp_path: Path, mqtt: str, why: str) -> None:
    gate = tmp_path / "gate.toml"
    gate.write_text(f"{GATE}[mqtt]\n{mqtt}", "utf-8")
    with pytest.raises(ConfigError, match=why):
        load_config(gate)
    Site.init(tmp_path / "srv", "sunny").close()
    toml = tmp_path / "srv" / "server.toml"
    text = toml.read_text("utf-8")
    toml.write_text(text.replace('broker = "mqtt://127.0.0.1:1883"\n', mqtt, 1), "utf-8")
    with pytest.raises(ServerConfigError, match=why):
        load_server_config(tmp_path / "srv")


def test_paths_are_relative_to_the_config_file(tmp_path: Path) -> None:
    gate = tmp_path / "gates" / "gate.toml"
    gate.parent.mkdir()
    tls = 'broker = "mqtts://b"\nca_file = "ca.pem"\ncert_file = "g.pem"\nkey_file = "k/g.key"\n'
    gate.write_text(f"{GATE}[mqtt]\n{tls}", "utf-8")
    files = load_config(gate).tls_files
    base = gate.parent.resolve()
    assert files == TlsFiles(base / "ca.pem", base / "g.pem", base / "k" / "g.key")


def test_a_tls_file_that_never_ends_is_refused_at_once(files: TlsFiles, tmp_path: Path) -> None:
    """Issue 11: every file a command reads has a cap; OpenSSL would read /dev/zero forever."""
    fifo = tmp_path / "fifo.pem"
    os.mkfifo(fifo)
    for bad, key in (
        (TlsFiles(Path("/dev/zero"), None, None), "ca_file"),
        (TlsFiles(files.ca_file, Path("/dev/zero"), files.key_file), "cert_file"),
        (TlsFiles(files.ca_file, files.cert_file, fifo), "key_file"),
    ):
        with pytest.raises(BrokerTlsError, match=f"\\[mqtt\\] {key} .*not a regular file"):
            client_context(bad)
