"""Provisioning a gate from a server directory (or a USB-stick copy of its `bundle/`).

The trust file is the gate's anchor: the trust root it starts from (protocol.roots);
documents (config, register) are accepted only when signed by a key of the gate's
root, which they move forward (edge.trust). Running `gate init` again refreshes the
documents and keeps the gate's config and log; it never moves the gate's root
backwards (a bundle older than what the gate has seen changes nothing of its trust).
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Literal

from edge.config import GateConfig
from edge.knowledge import Knowledge
from edge.store import GateStore
from edge.trust import gate_root, receive, save_received
from protocol.broker import parse_broker
from protocol.broker_tls import BrokerTlsError, certificate_info
from protocol.documents import (
    BUNDLE_DIR,
    CONFIG_FILE,
    FRESHNESS_FILE,
    REGISTER_FILE,
    TRUST_FILE,
    SignedDocument,
    UntrustedDocument,
    decode_trust_file,
    parse_document,
)
from protocol.errors import ProtocolError, Superseded
from protocol.files import read_bounded, write_private
from protocol.passes import check_slug
from protocol.register_documents import DELTA, DELTA_FILE
from protocol.roots import TrustRoot, leads_to

log = logging.getLogger("menwei.gate")


class ProvisionError(ProtocolError):
    """The gate cannot be provisioned or its provisioned data is unusable."""


DOC_FILES = {
    "config": CONFIG_FILE,
    "register": REGISTER_FILE,
    DELTA: DELTA_FILE,
    "freshness": FRESHNESS_FILE,
}
"""In the order a gate applies them: a delta applies to the snapshot before it, and a
statement names the documents before it."""
OPTIONAL_DOCS = (DELTA, "freshness")
"""A register may be its snapshot alone; bundles of servers from before freshness statements
have none."""


CA_FILE = "ca.pem"
CERT_FILE = "gate.pem"
KEY_FILE = "gate.key"
BROKER_URL_FILE = "broker.url"
"""In a folder of credentials carried to the gate (`menwei broker add-gate --out`): the
broker's URL, with the host name its certificate is valid for."""
TLS_PORT = 8883
PLAIN_BROKER = "mqtt://127.0.0.1:1883"


@dataclass(frozen=True)
class BrokerCredentials:
    """What a gate needs to reach the site's TLS broker (PEM): the site CA's certificate, its
    own certificate (common name: the gate slug) and private key, and the broker's URL."""

    ca_pem: bytes
    cert_pem: bytes
    key_pem: bytes
    broker: str
    """`mqtts://HOST:8883`, HOST a name the broker's certificate is valid for."""


def write_credentials(gate_dir: Path, credentials: BrokerCredentials) -> list[str]:
    """Write ca.pem, gate.pem and gate.key (mode 0600 from the start) into `gate_dir`,
    replacing older ones (a renewal). Returns the file names."""
    for name, data, mode in (
        (CA_FILE, credentials.ca_pem, 0o644),
        (CERT_FILE, credentials.cert_pem, 0o644),
        (KEY_FILE, credentials.key_pem, 0o600),
    ):
        tmp = gate_dir / f".{name}.tmp"
        tmp.unlink(missing_ok=True)
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, gate_dir / name)
    return [CA_FILE, CERT_FILE, KEY_FILE]


def read_credentials(folder: Path, gate: str) -> BrokerCredentials:
    """Credentials carried from the server (`menwei broker add-gate DIR GATE --out FOLDER`).
    Raises ProvisionError when a file is missing or they are another gate's."""
    try:
        ca, cert, key = ((folder / n).read_bytes() for n in (CA_FILE, CERT_FILE, KEY_FILE))
        broker = (folder / BROKER_URL_FILE).read_text("utf-8").strip()
    except OSError as exc:
        raise ProvisionError(
            f"--credentials {folder}: {exc.filename}: {exc.strerror} (make the folder on the "
            f"server: `menwei broker add-gate DIR {gate} --out FOLDER`)"
        ) from None
    try:
        name = certificate_info(folder / CERT_FILE).name
    except BrokerTlsError as exc:
        raise ProvisionError(f"--credentials {folder}: {exc}") from None
    if name != gate:
        raise ProvisionError(
            f"--credentials {folder}: the certificate is for gate {name!r}, not {gate!r}"
        )
    return BrokerCredentials(ca, cert, key, broker)


def render_gate_toml(
    site: str, gate: str, direction: str, simulated: bool, broker: str, tls: bool = False
) -> str:
    hw = (
        '[camera]\nsource = "watch:stage"     # simulation: frames dropped into ./stage\n\n'
        '[thermometer]\nbackend = "simulated"\n\n[gpio]\nbackend = "simulated"\n\n'
        '[clock]\ntrust = "assume"             # simulation: no time daemon vouches here\n\n'
        "# The guard screen: off in a simulation (gates sharing a machine need a port each).\n"
        "# Uncomment to switch it on, with a port free here, and enrol a guard (docs/hardware.md)\n"
        '# [guard]\n# http = "127.0.0.1:8000"\n'
        if simulated
        else '[camera]\nsource = "device:0"\n\n[thermometer]\nbackend = "mlx90614"\n'
        'i2c_bus = 1\naddress = 0x5A\n\n[gpio]\nbackend = "rpi"\nrelay_pin = 17\n\n'
        '[clock]\ntrust = "kernel"  # synchronised by chrony, ntpd or systemd-timesyncd\n\n'
        '[guard]\nhttp = "127.0.0.1:8000"     # the guard screen, for the kiosk browser\n'
    )
    link = (
        f'ca_file = "{CA_FILE}"      # the site CA: it signed the broker\'s certificate\n'
        f'cert_file = "{CERT_FILE}"  # this gate\'s certificate: its identity on the broker\n'
        f'key_file = "{KEY_FILE}"    # its private key (mode 0600)\n'
        if tls
        else ""
    )
    return (
        "# Menwei gate configuration. Unknown keys are errors; see docs/ for every key.\n"
        f'[gate]\nsite = "{site}"\nid = "{gate}"\ndirection = "{direction}"  # in | out | both\n'
        f'data_dir = "."\n\n[mqtt]\nbroker = "{broker}"\n{link}\n{hw}'
    )


def provision(
    gate_dir: Path,
    server_dir: Path,
    gate: str,
    direction: Literal["in", "out", "both"] = "in",
    *,
    simulated: bool = False,
    broker: str | None = None,
    credentials: BrokerCredentials | None = None,
    reset_trust: bool = False,
) -> dict[str, object]:
    """Provision (or provision again) the gate in `gate_dir` from a server directory or a
    copy of its bundle. With `credentials` (its broker certificate) it writes ca.pem, gate.pem
    and gate.key, and a new gate.toml links over TLS; `broker` default: the credentials'
    mqtts:// URL, else mqtt://127.0.0.1:1883. An existing gate.toml is kept. The gate's trust
    root moves to the bundle's only forward, unless `reset_trust`: then the bundle's root
    replaces whatever the gate held, with its documents (the way back for a gate that followed
    a root a stolen key made). Raises ProvisionError, MessageError (a bundle that does not
    verify), OSError."""
    check_slug(gate, "gate id")
    bundle = server_dir / BUNDLE_DIR if (server_dir / BUNDLE_DIR).is_dir() else server_dir
    _, documents = read_bundle(bundle)  # all verified before anything is written
    site, bundle_root = read_trust_file(bundle / TRUST_FILE)
    toml = gate_dir / "gate.toml"
    created = not toml.exists()
    url = broker or (credentials.broker if credentials is not None else PLAIN_BROKER)
    parse_broker(url)  # before anything is written: it goes into gate.toml as it is
    if credentials is not None and created and not url.startswith("mqtts://"):
        raise ProvisionError(
            f"--broker {url}: the gate has broker credentials (TLS): give an mqtts:// URL, or "
            "leave --broker out for the broker's own name"
        )
    if reset_trust and (gate_dir / "gate.db").exists():
        with GateStore(gate_dir / "gate.db") as store:  # refused before anything is written
            _check_reset(gate_dir / TRUST_FILE, site, bundle_root, store)
    gate_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    link: dict[str, object] = {"broker": url}
    if credentials is not None:
        files = write_credentials(gate_dir, credentials)
        until = certificate_info(gate_dir / CERT_FILE).not_after.astimezone()
        link |= {"credentials": files, "certificate_until": until.isoformat(timespec="minutes")}
    if created:  # 0600: [mqtt] password goes in it
        text = render_gate_toml(site, gate, direction, simulated, url, credentials is not None)
        write_private(toml, text.encode())
        if simulated:
            (gate_dir / "stage").mkdir(mode=0o700, exist_ok=True)
    with GateStore(gate_dir / "gate.db") as store:
        held = _provisioned_root(gate_dir / TRUST_FILE, site, store)
        reset: dict[str, object] | None = None
        if reset_trust and held is not None:
            store.reset_trust(json.dumps(bundle_root.to_json()))
            reset = {
                "from_root": held.version,
                "to_root": bundle_root.version,
                "keys_trusted": sorted(bundle_root.keys),
                "keys_no_longer_trusted": sorted(held.dropped(bundle_root)),
                "keys_newly_trusted": sorted(bundle_root.dropped(held)),
            }
            log.warning(
                "trust reset from root %d to the bundle's root %d: keys %s trusted, keys %s"
                " no longer trusted",
                held.version,
                bundle_root.version,
                reset["keys_trusted"],
                reset["keys_no_longer_trusted"],
            )
            held = None
        if held is None or bundle_root.version >= held.version:
            shutil.copyfile(bundle / TRUST_FILE, gate_dir / TRUST_FILE)
            if bundle_root.version:
                store.save_trust_root(json.dumps(bundle_root.to_json()))
            root = gate_root(bundle_root, store)
        else:
            root = held  # an older bundle: the gate keeps the root it has seen
        know = _stored_knowledge(site, root, store)
        kept: dict[str, str] = {}
        for doc, raw in documents:
            try:
                got = receive(know, doc.kind, raw)
            except UntrustedDocument as exc:
                kept[doc.kind] = f"the gate's trust root {know.trust_root().version}: {exc}"
                continue
            if got.changed:
                save_received(store, got, raw, datetime.now(UTC))
            know = got.know
    as_of = know.fresh_as_of()
    result: dict[str, object] = {
        "gate_dir": str(gate_dir),
        "site": site,
        "gate": gate,
        "config_created": created,
        **link,
        "root": know.trust_root().version,
        "versions": know.versions(),
        "freshness": None if know.statement is None else know.statement.serial,
        "data_as_of": None if as_of is None else as_of.isoformat(timespec="seconds"),
    }
    if reset is not None:
        result["trust_reset"] = reset
    if kept:
        result["not_taken"] = kept
    return result


class StaleBundle(ProvisionError):
    """`--reset-trust` from a bundle whose root is older than the gate's, which follows it."""


def _check_reset(trust_file: Path, site: str, bundle_root: TrustRoot, store: GateStore) -> None:
    """Refuse `--reset-trust` to a root older than the gate's unless the gate's root is not
    one the bundle's root leads to (the gate followed a fork). The gate keeps its root, not the
    chain to it; the documents it holds carry that chain (protocol.roots.leads_to): a chain
    from the bundle's root to the gate's proves the bundle is only stale (resetting would trust
    again keys the server retired since); a fork in it allows the reset; with neither, the
    gate cannot tell, and refuses. Raises StaleBundle."""
    held = _provisioned_root(trust_file, site, store)
    if held is None or bundle_root.version >= held.version:
        return
    chains = []
    for kind in DOC_FILES:
        raw = store.document(kind)
        if raw is None:
            continue
        try:
            chains.append(parse_document(raw, kind=kind, site=site).chain)
        except ProtocolError:
            continue
    follows = leads_to(bundle_root, held, chains)
    if follows is False:
        return
    regained = sorted(bundle_root.dropped(held))
    why = (
        f"the gate's root {held.version} follows from it (the documents it holds carry the"
        f" chain, each root signed by a key of the one before)"
        if follows
        else f"the gate holds no chain from root {bundle_root.version} to its root"
        f" {held.version}, so it cannot tell a stale bundle from a fork"
    )
    raise StaleBundle(
        f"--reset-trust refused: the bundle's trust root {bundle_root.version} (keys"
        f" {sorted(bundle_root.keys)}) is older than the gate's root {held.version} (keys"
        f" {sorted(held.keys)}), and {why}; resetting would trust again keys {regained} that"
        f" root {held.version} no longer trusts. Provision from the server's current bundle"
        f" (`menwei gate init GATE_DIR --server SERVER_DIR --gate SLUG`); a gate that truly"
        f" followed a forged root starts afresh: move its gate.db and trust.json aside first"
        f" (docs/security.md)"
    )


def _provisioned_root(trust_file: Path, site: str, store: GateStore) -> TrustRoot | None:
    """The root a gate already provisioned for `site` holds (None: a new gate, or one of
    another site, which starts again from the bundle)."""
    try:
        held_site, anchor = read_trust_file(trust_file)
    except (OSError, ProtocolError):
        return None
    if held_site != site:
        return None
    return gate_root(anchor, store)


def _stored_knowledge(site: str, root: TrustRoot, store: GateStore) -> Knowledge:
    """The knowledge of the documents `store` holds, under `root`."""
    know = Knowledge(site, dict(root.keys), root=root, floors=store.document_floors())
    for kind in DOC_FILES:
        raw = store.document(kind)
        if raw is None:
            continue
        try:
            know = receive(know, kind, raw, store.document_received_at(kind)).know
        except Superseded:  # a delta of a snapshot the gate has moved past
            continue
        except UntrustedDocument as exc:
            # Signed by a key the gate's root dropped: it stopped applying then.
            log.warning("stored %s document is no longer trusted, not applied: %s", kind, exc)
        except ProtocolError as exc:
            if kind not in OPTIONAL_DOCS:
                raise
            log.warning("stored %s no longer applies, ignored: %s", kind, exc)
    return know


def read_trust_file(path: Path) -> tuple[str, TrustRoot]:
    """(site, trust root) of a trust file. Raises OSError, MessageError."""
    site, version, keys = decode_trust_file(read_bounded(path, "trust"))
    return site, TrustRoot(version, keys)


def read_bundle(bundle: Path) -> tuple[Knowledge, list[tuple[SignedDocument, bytes]]]:
    """What a gate provisioned from `bundle` (a server's `bundle/` or a copy) knows, and the
    verified documents it stores, in order. Raises ProvisionError (no trust file),
    MessageError (a document that does not verify) or ProtocolError (one it cannot apply)."""
    try:
        site, root = read_trust_file(bundle / TRUST_FILE)
    except OSError as exc:
        raise ProvisionError(f"{bundle}: no provisioning bundle ({exc.strerror})") from None
    know = Knowledge(site, dict(root.keys), root=root)
    documents = []
    for kind, name in DOC_FILES.items():
        if kind in OPTIONAL_DOCS and not (bundle / name).exists():
            continue
        raw = read_bounded(bundle / name, "document")
        try:
            got = receive(know, kind, raw)  # applicable, or refused before storing
        except Superseded:  # a delta of the snapshot before, left by a publish under way
            continue
        if not got.applied:  # likewise, one older than the snapshot
            continue
        know = got.know
        documents.append((got.doc, raw))
    return know, documents


EXIT_NOT_PROVISIONED = 78
"""`menwei gate run`'s exit status when the trust file is missing, unreadable or damaged
(sysexits' EX_CONFIG): a restart cannot fix it, so the systemd unit lists it in
RestartPreventExitStatus= instead of restarting in a loop."""


def trust_anchor(config: GateConfig) -> tuple[str, TrustRoot]:
    """The provisioned site and trust root from DATA_DIR/trust.json. Raises ProvisionError
    (with the fix: provision again) when it is missing, unreadable, damaged or for
    another site."""
    path = config.data_dir / TRUST_FILE
    redo = (
        "run `menwei gate init GATE_DIR --server SERVER_DIR_OR_BUNDLE --gate SLUG` again (it "
        "rewrites trust.json from the server's bundle and keeps the gate's config and log)"
    )
    try:
        site, root = read_trust_file(path)
    except OSError as exc:
        raise ProvisionError(f"{path}: gate not provisioned ({exc.strerror}); {redo}") from None
    except ProtocolError as exc:
        raise ProvisionError(f"{path}: damaged ({exc}); {redo}") from None
    if site != config.gate.site:
        raise ProvisionError(f"{path} is for site {site!r}, gate.toml says {config.gate.site!r}")
    return site, root


def load_knowledge(config: GateConfig, store: GateStore) -> Knowledge:
    """The gate's knowledge: its trust root (gate.db's, or the trust file's when newer) and
    the documents it holds that the root still trusts. Raises ProvisionError, StorageFault,
    ProtocolError (a held config or register that cannot be applied)."""
    site, anchor = trust_anchor(config)
    return _stored_knowledge(site, gate_root(anchor, store), store)


def gate_stage(config: GateConfig) -> Path | None:
    src = config.camera.source
    if src.startswith("watch:"):
        return config.resolve(src.removeprefix("watch:"))
    return None
