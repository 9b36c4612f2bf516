"""`menwei broker ...` and `gate init`'s credentials: the files an installer gets, their modes,
what the certificates say, and what is refused. The real command line runs in this process
(`menwei.cli.main`: its exit status, standard output and error); the certificates are read
back with `cryptography`, the TLS files with Python's ssl (what the gates and the collector
load)."""

from __future__ import annotations

import contextlib
import io
import json
import stat
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import load_pem_private_key
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from edge.config import load_config
from menwei.broker_setup import MOSQUITTO_CONF
from menwei.cli import main
from menwei.site_ca import CA_DAYS, LEAF_DAYS
from protocol.broker_tls import client_context
from server.site import Site
from tests.conftest import REPO
from tests.conftest import run_menwei as subprocess_menwei

SITE = "sunny"


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def cert(path: Path) -> x509.Certificate:
    return x509.load_pem_x509_certificate(path.read_bytes())


def name(c: x509.Certificate) -> str:
    return str(c.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value)


def sans(c: x509.Certificate) -> list[str]:
    ext = c.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    return [str(n.value) for n in ext]


def usage(c: x509.Certificate) -> list[x509.ObjectIdentifier]:
    return list(c.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value)


@dataclass(frozen=True)
class Done:
    returncode: int
    stdout: str
    stderr: str


def run_menwei(*args: str, check: bool = True) -> Done:
    """`menwei ARGS` in this process (a subprocess per call would cost a second each)."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(list(args))
    done = Done(code, out.getvalue(), err.getvalue())
    if check and code != 0:
        raise AssertionError(f"menwei {' '.join(args)} failed ({code}):\n{done.stderr}")
    return done


def menwei_json(*args: str) -> dict[str, object]:
    return dict(json.loads(run_menwei(*args, "--json").stdout))


@pytest.fixture
def server(tmp_path: Path) -> Path:
    Site.init(tmp_path / "srv", SITE).close()
    return tmp_path / "srv"


@pytest.fixture
def folder(server: Path) -> Path:
    menwei_json("broker", "setup", str(server / "broker"), "--host", "mqtt.sunny.example")
    return server / "broker"


def test_setup_makes_the_site_ca_and_the_brokers_files(server: Path) -> None:
    out = menwei_json("broker", "setup", str(server / "broker"), "--host", "mqtt.sunny.example")
    d = server / "broker"
    assert out["site"] == SITE  # from the server directory's server.toml
    assert out["hosts"] == ["mqtt.sunny.example", "localhost", "127.0.0.1"]
    assert out["broker"] == "mqtts://mqtt.sunny.example:8883"
    assert mode(d) == 0o700
    for key in ("ca.key", "broker.key", "collector.key"):
        assert mode(d / key) == 0o600, key
        assert isinstance(
            load_pem_private_key((d / key).read_bytes(), None), ec.EllipticCurvePrivateKey
        )
    ca, broker, collector = cert(d / "ca.pem"), cert(d / "broker.pem"), cert(d / "collector.pem")
    assert isinstance(ca.public_key(), ec.EllipticCurvePublicKey)
    assert ca.public_key().curve.name == "secp256r1"
    assert ca.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    assert ca.not_valid_after_utc - ca.not_valid_before_utc == timedelta(days=CA_DAYS)
    for leaf in (broker, collector):
        leaf.verify_directly_issued_by(ca)
        assert not leaf.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
        assert leaf.not_valid_after_utc - leaf.not_valid_before_utc == timedelta(days=LEAF_DAYS)
    assert sans(broker) == ["mqtt.sunny.example", "localhost", "127.0.0.1"]
    assert usage(broker) == [ExtendedKeyUsageOID.SERVER_AUTH]
    assert (name(collector), usage(collector)) == ("collector", [ExtendedKeyUsageOID.CLIENT_AUTH])
    assert (d / "mosquitto-menwei.conf").read_text("utf-8") == MOSQUITTO_CONF
    assert (REPO / "systemd" / "mosquitto-menwei.conf").read_text("utf-8") == MOSQUITTO_CONF
    acl = (d / "menwei.acl").read_text("utf-8")
    assert f"pattern write menwei/{SITE}/%u/events\n" in acl
    assert f"pattern read menwei/{SITE}/register/#\n" in acl
    assert f"user collector\ntopic read menwei/{SITE}/+/events\n" in acl
    assert x509.load_pem_x509_crl((d / "crl.pem").read_bytes()).is_signature_valid(
        ca.public_key()  # type: ignore[arg-type]
    )
    install = out["install"]
    assert isinstance(install, list) and "ca.key" not in " ".join(install), "the CA key stays"
    assert f"cp {d.resolve()}/mosquitto-menwei.conf /etc/mosquitto/conf.d/menwei.conf" in (
        " ".join(install)
    )
    assert out["server_toml"] == (
        'broker = "mqtts://localhost:8883"\nca_file = "broker/ca.pem"\n'
        'cert_file = "broker/collector.pem"\nkey_file = "broker/collector.key"\n'
    )


def test_setup_refuses_a_folder_that_holds_a_ca(folder: Path) -> None:
    before = {p.name: p.read_bytes() for p in folder.iterdir()}
    again = run_menwei("broker", "setup", str(folder), check=False)
    assert again.returncode == 2
    assert "already holds a site CA" in again.stderr and "Traceback" not in again.stderr
    assert {p.name: p.read_bytes() for p in folder.iterdir()} == before


def test_setup_outside_a_server_directory_needs_the_site(tmp_path: Path) -> None:
    bad = run_menwei("broker", "setup", str(tmp_path / "b"), check=False)
    assert bad.returncode == 2 and "give --site SLUG" in bad.stderr
    out = menwei_json("broker", "setup", str(tmp_path / "b"), "--site", "other")
    assert out["site"] == "other"
    assert (
        cert(tmp_path / "b" / "ca.pem")
        .subject.get_attributes_for_oid(NameOID.ORGANIZATIONAL_UNIT_NAME)[0]
        .value
        == "other"
    )


def test_gate_init_issues_the_gates_certificate(folder: Path, server: Path, tmp_path: Path) -> None:
    out = menwei_json(
        "gate",
        "init",
        str(tmp_path / "g"),
        "--server",
        str(server),
        "--gate",
        "east",
        "--simulated",
    )
    g = tmp_path / "g"
    assert out["broker"] == "mqtts://mqtt.sunny.example:8883"
    assert out["credentials"] == ["ca.pem", "gate.pem", "gate.key"]
    assert mode(g / "gate.key") == 0o600
    assert (g / "ca.pem").read_bytes() == (folder / "ca.pem").read_bytes()
    issued = cert(g / "gate.pem")
    issued.verify_directly_issued_by(cert(folder / "ca.pem"))
    assert (name(issued), usage(issued)) == ("east", [ExtendedKeyUsageOID.CLIENT_AUTH])
    config = load_config(g / "gate.toml")
    assert (
        config.mqtt.broker,
        config.mqtt.ca_file,
        config.mqtt.cert_file,
        config.mqtt.key_file,
    ) == (
        "mqtts://mqtt.sunny.example:8883",
        "ca.pem",
        "gate.pem",
        "gate.key",
    )
    client_context(config.tls_files)  # what the gate loads: the key is the certificate's
    check = menwei_json("gate", "check-config", "--config", str(g / "gate.toml"))
    assert (check["identity"], check["broker"]) == ("east", "mqtts://mqtt.sunny.example:8883")
    issued_log = json.loads((folder / "issued.json").read_text("utf-8"))
    assert [(r["name"], r["role"]) for r in issued_log] == [
        ("mqtt.sunny.example", "broker"),
        ("collector", "collector"),
        ("east", "gate"),
    ]


def test_a_gate_with_credentials_links_over_tls_only(folder: Path, server: Path, tmp_path: Path):
    done = run_menwei(
        "gate", "init", str(tmp_path / "g"), "--server", str(server), "--gate", "east",
        "--broker", "mqtt://10.0.0.2:1883", check=False,
    )  # fmt: skip
    assert done.returncode == 2 and "give an mqtts:// URL" in done.stderr, done.stderr
    assert not (tmp_path / "g").exists()


def test_a_gate_never_gets_a_collectors_name(folder: Path, server: Path, tmp_path: Path) -> None:
    for attempt in (
        ("gate", "init", str(tmp_path / "g"), "--server", str(server), "--gate", "collector-2"),
        ("broker", "add-gate", str(folder), "collector", "--out", str(tmp_path / "usb")),
    ):
        done = run_menwei(*attempt, check=False)
        assert done.returncode == 2, attempt
        assert "a collector's name" in done.stderr
    assert not (tmp_path / "g").exists() and not (tmp_path / "usb").exists()


def test_add_gate_and_init_from_a_usb_copy(folder: Path, server: Path, tmp_path: Path) -> None:
    usb = tmp_path / "usb" / "west"
    out = menwei_json("broker", "add-gate", str(folder), "west", "--out", str(usb))
    assert out["files"] == ["ca.pem", "gate.pem", "gate.key", "broker.url"]
    assert mode(usb) == 0o700 and mode(usb / "gate.key") == 0o600
    assert not (usb / "ca.key").exists()
    bundle = server / "bundle"
    wrong = run_menwei(
        "gate", "init", str(tmp_path / "s"), "--server", str(bundle), "--gate", "south",
        "--credentials", str(usb), check=False,
    )  # fmt: skip
    assert wrong.returncode == 2 and "for gate 'west', not 'south'" in wrong.stderr
    assert not (tmp_path / "s").exists()
    done = menwei_json(
        "gate", "init", str(tmp_path / "w"), "--server", str(bundle), "--gate", "west",
        "--credentials", str(usb), "--simulated",
    )  # fmt: skip
    assert done["broker"] == "mqtts://mqtt.sunny.example:8883"
    assert (tmp_path / "w" / "gate.key").read_bytes() == (usb / "gate.key").read_bytes()
    assert mode(tmp_path / "w" / "gate.key") == 0o600


def test_add_client_and_revoke(folder: Path) -> None:
    out = menwei_json("broker", "add-client", str(folder), "collector-2")
    assert mode(folder / "collector-2.key") == 0o600
    assert name(cert(folder / "collector-2.pem")) == "collector-2"
    acl = (folder / "menwei.acl").read_text("utf-8")
    assert f"user collector-2\ntopic read menwei/{SITE}/+/events\n" in acl
    assert "crl.pem" in " ".join(out["install"])  # type: ignore[arg-type]
    for bad, why in (("east", "a collector is named"), ("collector-2", "was made already")):
        done = run_menwei("broker", "add-client", str(folder), bad, check=False)
        assert done.returncode == 2 and why in done.stderr, done.stderr

    revoked = menwei_json("broker", "revoke", str(folder), "collector-2")
    serial = int(str(revoked["revoked"][0]), 16)  # type: ignore[index]
    assert serial == cert(folder / "collector-2.pem").serial_number
    crl = x509.load_pem_x509_crl((folder / "crl.pem").read_bytes())
    assert crl.get_revoked_certificate_by_serial_number(serial) is not None
    assert "user collector-2" not in (folder / "menwei.acl").read_text("utf-8")
    unknown = run_menwei("broker", "revoke", str(folder), "nobody", check=False)
    assert unknown.returncode == 2 and "no client certificate was issued to 'nobody'" in (
        unknown.stderr
    )


def test_renew_gives_the_broker_new_names(folder: Path) -> None:
    old = cert(folder / "broker.pem")
    out = menwei_json("broker", "renew", str(folder), "--host", "10.0.0.2")
    new = cert(folder / "broker.pem")
    assert new.serial_number != old.serial_number
    assert sans(new) == ["10.0.0.2", "localhost", "127.0.0.1"]
    assert out["broker"] == "mqtts://10.0.0.2:8883"
    assert mode(folder / "broker.key") == 0o600
    key = load_pem_private_key((folder / "broker.key").read_bytes(), None)
    assert key.public_key() == new.public_key()  # type: ignore[comparison-overlap]


def test_a_bad_host_name_is_refused(server: Path) -> None:
    done = run_menwei("broker", "setup", str(server / "broker"), "--host", "a b", check=False)
    assert done.returncode == 2 and "not a host name or an IP address" in done.stderr


def test_a_missing_key_file_is_one_clear_line(folder: Path, server: Path, tmp_path: Path) -> None:
    """`gate run` (a real process) and `check-config` name the file; nothing starts."""
    g = tmp_path / "g"
    menwei_json("gate", "init", str(g), "--server", str(server), "--gate", "east", "--simulated")
    (g / "gate.key").unlink()
    config = str(g / "gate.toml")
    for args in (("gate", "run", "--config", config), ("gate", "check-config", "--config", config)):
        done = subprocess_menwei(*args, check=False, timeout=60)
        assert done.returncode == 2, (args, done.stderr)
        assert done.stderr.strip().splitlines() == [
            f"menwei: error: [mqtt] key_file {g.resolve() / 'gate.key'}: No such file or directory"
        ], done.stderr


def test_the_server_directory_given_for_the_broker_folder(server: Path, tmp_path: Path) -> None:
    """Issue 11 (a new user): `broker add-gate srv north` advised `menwei broker setup DIR`,
    which would make a second CA. Now each command names the folder meant, and makes nothing."""
    usb = tmp_path / "usb"
    done = run_menwei("broker", "add-gate", str(server), "north", "--out", str(usb), check=False)
    assert done.returncode == 2
    assert "a server directory, not a broker folder" in done.stderr, done.stderr
    assert f"`menwei broker setup {server / 'broker'}`" in done.stderr
    setup = run_menwei("broker", "setup", str(server / "broker"), "--host", "localhost")
    assert f"`menwei broker add-gate {(server / 'broker').resolve()} SLUG" in setup.stdout
    for attempt in (
        ("add-gate", str(server), "north", "--out", str(usb)),
        ("add-client", str(server), "collector-2"),
        ("revoke", str(server), "north"),
        ("renew", str(server), "--host", "localhost"),
    ):
        done = run_menwei("broker", *attempt, check=False)
        assert done.returncode == 2, attempt
        assert f"did you mean {server / 'broker'}?" in done.stderr, done.stderr
        assert "broker setup" not in done.stderr
    assert not usb.exists() and not (server / "ca.pem").exists()
    lone = tmp_path / "empty"
    lone.mkdir()
    done = run_menwei("broker", "add-gate", str(lone), "north", "--out", str(usb), check=False)
    assert done.returncode == 2 and "give the broker folder (`SERVER_DIR/broker`)" in done.stderr
