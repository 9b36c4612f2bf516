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
import shutil
from datetime import UTC, datetime
from pathlib import Path
from typing import Literal

from edge.config import GateConfig
from edge.knowledge import Knowledge
from edge.store import GateStore
from edge.trust import gate_root, receive, save_received
from protocol.documents import (
    BUNDLE_DIR,
    CONFIG_FILE,
    FRESHNESS_FILE,
    REGISTER_FILE,
    TRUST_FILE,
    SignedDocument,
    UntrustedDocument,
    decode_trust_file,
)
from protocol.errors import ProtocolError
from protocol.passes import check_slug
from protocol.roots import TrustRoot

log = logging.getLogger("menwei.gate")


class ProvisionError(ProtocolError):
    """The gate cannot be provisioned or its provisioned data is unusable."""


DOC_FILES = {"config": CONFIG_FILE, "register": REGISTER_FILE, "freshness": FRESHNESS_FILE}
"""In the order a gate applies them: a statement names the documents before it."""
OPTIONAL_DOCS = ("freshness",)
"""Bundles of servers from before freshness statements have none."""


def render_gate_toml(site: str, gate: str, direction: str, simulated: bool, broker: str) -> str:
    hw = (
        '[camera]\nsource = "watch:stage"     # simulation: frames dropped into ./stage\n\n'
        '[thermometer]\nbackend = "simulated"\n\n[gpio]\nbackend = "simulated"\n\n'
        '[clock]\ntrust = "assume"             # simulation: no time daemon vouches here\n'
        if simulated
        else '[camera]\nsource = "device:0"\n\n[thermometer]\nbackend = "mlx90614"\n'
        'i2c_bus = 1\naddress = 0x5A\n\n[gpio]\nbackend = "rpi"\nrelay_pin = 17\n\n'
        '[clock]\ntrust = "kernel"  # synchronised by chrony, ntpd or systemd-timesyncd\n\n'
        '[guard]\nhttp = "127.0.0.1:8000"     # the guard screen, for the kiosk browser\n'
    )
    return (
        "# Menwei gate configuration. Unknown keys are errors; see docs/ for every key.\n"
        f'[gate]\nsite = "{site}"\nid = "{gate}"\ndirection = "{direction}"  # in | out | both\n'
        f'data_dir = "."\n\n[mqtt]\nbroker = "{broker}"\n\n{hw}'
    )


def provision(
    gate_dir: Path,
    server_dir: Path,
    gate: str,
    direction: Literal["in", "out", "both"] = "in",
    *,
    simulated: bool = False,
    broker: str = "mqtt://127.0.0.1:1883",
    reset_trust: bool = False,
) -> dict[str, object]:
    """Provision (or provision again) the gate in `gate_dir` from a server directory or a
    copy of its bundle. The gate's trust root moves to the bundle's only forward, unless
    `reset_trust`: then the bundle's root replaces whatever the gate held, with its
    documents (the way back for a gate that followed a root a stolen key made). Raises
    ProvisionError, MessageError (a bundle that does not verify), OSError."""
    check_slug(gate, "gate id")
    bundle = server_dir / BUNDLE_DIR if (server_dir / BUNDLE_DIR).is_dir() else server_dir
    _, documents = read_bundle(bundle)  # all verified before anything is written
    site, bundle_root = read_trust_file(bundle / TRUST_FILE)
    gate_dir.mkdir(parents=True, exist_ok=True)
    toml = gate_dir / "gate.toml"
    created = not toml.exists()
    if created:
        toml.write_text(render_gate_toml(site, gate, direction, simulated, broker), "utf-8")
        if simulated:
            (gate_dir / "stage").mkdir(exist_ok=True)
    with GateStore(gate_dir / "gate.db") as store:
        held = _provisioned_root(gate_dir / TRUST_FILE, site, store)
        if reset_trust and held is not None:
            store.reset_trust(json.dumps(bundle_root.to_json()))
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
        "root": know.trust_root().version,
        "versions": know.versions(),
        "freshness": None if know.statement is None else know.statement.serial,
        "data_as_of": None if as_of is None else as_of.isoformat(timespec="seconds"),
    }
    if kept:
        result["not_taken"] = kept
    return result


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
    site, version, keys = decode_trust_file(path.read_bytes())
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
        raw = (bundle / name).read_bytes()
        got = receive(know, kind, raw)  # applicable, or refused before storing
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
