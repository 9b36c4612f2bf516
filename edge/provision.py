"""Provisioning a gate from a server directory (or a USB-stick copy of its `bundle/`).

The trust file is the gate's anchor: documents (config, register) are
accepted only when signed by a key it trusts. Running `gate init` again
refreshes the documents and keeps the gate's config and log.
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
from protocol.documents import (
    BUNDLE_DIR,
    CONFIG_FILE,
    FRESHNESS_FILE,
    REGISTER_FILE,
    TRUST_FILE,
    SignedDocument,
    decode_document,
    decode_trust,
)
from protocol.errors import ProtocolError, Superseded
from protocol.passes import TrustKey, check_slug
from protocol.register_documents import DELTA, DELTA_FILE

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
) -> dict[str, object]:
    check_slug(gate, "gate id")
    bundle = server_dir / BUNDLE_DIR if (server_dir / BUNDLE_DIR).is_dir() else server_dir
    know, documents = read_bundle(bundle)  # all verified before anything is written
    site = know.site
    gate_dir.mkdir(parents=True, exist_ok=True)
    toml = gate_dir / "gate.toml"
    created = not toml.exists()
    if created:
        toml.write_text(render_gate_toml(site, gate, direction, simulated, broker), "utf-8")
        if simulated:
            (gate_dir / "stage").mkdir(exist_ok=True)
    shutil.copyfile(bundle / TRUST_FILE, gate_dir / TRUST_FILE)
    with GateStore(gate_dir / "gate.db") as store:
        for doc, raw in documents:
            accept_document(store, doc, raw)
    as_of = know.fresh_as_of()
    return {
        "gate_dir": str(gate_dir),
        "site": site,
        "gate": gate,
        "config_created": created,
        "versions": know.versions(),
        "freshness": None if know.statement is None else know.statement.serial,
        "data_as_of": None if as_of is None else as_of.isoformat(timespec="seconds"),
    }


def read_bundle(bundle: Path) -> tuple[Knowledge, list[tuple[SignedDocument, bytes]]]:
    """What a gate provisioned from `bundle` (a server's `bundle/` or a copy) knows, and the
    verified documents it stores, in order. Raises ProvisionError (no trust file),
    MessageError (a document that does not verify) or ProtocolError (one it cannot apply)."""
    try:
        site, keys = decode_trust((bundle / TRUST_FILE).read_bytes())
    except OSError as exc:
        raise ProvisionError(f"{bundle}: no provisioning bundle ({exc.strerror})") from None
    know = Knowledge(site, keys)
    documents = []
    for kind, name in DOC_FILES.items():
        if kind in OPTIONAL_DOCS and not (bundle / name).exists():
            continue
        raw = (bundle / name).read_bytes()
        doc = decode_document(raw, kind=kind, site=site, trust_keys={**keys, **know.trust_keys})
        try:
            know = apply_document(know, kind, raw, keys)  # applicable, or refused before storing
        except Superseded:  # a delta of the snapshot before, left by a publish under way
            continue
        documents.append((doc, raw))
    return know, documents


def accept_document(
    store: GateStore, doc: SignedDocument, raw: bytes, received_at: datetime | None = None
) -> bool:
    """Store a verified document if it is newer than the one held, with when it arrived by
    the gate's clock (`received_at`, default the system's). Returns True if stored."""
    held = store.document(doc.kind)
    if held is not None and int(json.loads(held)["version"]) >= doc.version:
        return False
    learnt = doc.body.get("trust_keys") if doc.kind == "config" else None
    store.save_document(
        doc.kind,
        doc.version,
        (received_at or datetime.now(UTC)).isoformat(),
        raw,
        learnt_keys=list(learnt) if isinstance(learnt, list) else None,
    )
    return True


EXIT_NOT_PROVISIONED = 78
"""`menwei gate run`'s exit status when the trust file is missing, unreadable or damaged
(sysexits' EX_CONFIG): a restart cannot fix it, so the systemd unit lists it in
RestartPreventExitStatus= instead of restarting in a loop."""


def trust_anchor(config: GateConfig) -> tuple[str, dict[int, TrustKey]]:
    """The provisioned site and trust keys from DATA_DIR/trust.json. Raises ProvisionError
    (with the fix: provision again) when it is missing, unreadable, damaged or for
    another site."""
    path = config.data_dir / TRUST_FILE
    redo = (
        "run `menwei gate init GATE_DIR --server SERVER_DIR_OR_BUNDLE --gate SLUG` again (it "
        "rewrites trust.json from the server's bundle and keeps the gate's config and log)"
    )
    try:
        site, keys = decode_trust(path.read_bytes())
    except OSError as exc:
        raise ProvisionError(f"{path}: gate not provisioned ({exc.strerror}); {redo}") from None
    except ProtocolError as exc:
        raise ProvisionError(f"{path}: damaged ({exc}); {redo}") from None
    if site != config.gate.site:
        raise ProvisionError(f"{path} is for site {site!r}, gate.toml says {config.gate.site!r}")
    return site, dict(keys)


def document_keys(config: GateConfig, store: GateStore) -> dict[int, TrustKey]:
    """Keys a document may be signed with: the provisioned anchor and the keys the last
    accepted (hence verified) config introduced — so key rotation survives a restart."""
    _, anchor = trust_anchor(config)
    try:
        learnt = {k.key_id: k for k in map(TrustKey.from_json, store.learnt_keys())}
    except ProtocolError:
        learnt = {}
    return {**learnt, **anchor}


def load_knowledge(config: GateConfig, store: GateStore) -> Knowledge:
    """The gate's knowledge from its trust anchor and the documents it holds."""
    site, _ = trust_anchor(config)
    anchor = document_keys(config, store)
    know = Knowledge(site, anchor)
    for kind in DOC_FILES:
        raw = store.document(kind)
        if raw is None:
            continue
        try:
            know = apply_document(know, kind, raw, anchor, store.document_received_at(kind))
        except Superseded:  # a delta of a snapshot the gate has moved past
            continue
        except ProtocolError as exc:
            if kind not in OPTIONAL_DOCS:
                raise
            # A statement signed by a key retired since: it proves nothing any more, and
            # the next one replaces it. Never a reason not to start.
            log.warning("stored %s no longer verifies, ignored: %s", kind, exc)
    return know


def apply_document(
    know: Knowledge,
    kind: str,
    raw: bytes,
    anchor: dict[int, TrustKey],
    received_at: datetime | None = None,
) -> Knowledge:
    """Verify `raw` (against the anchor and the keys the gate has learnt) and apply it.
    `received_at`: when a freshness statement arrived by the gate's clock (it proves no
    later than that, however far ahead its issue time)."""
    keys = {**anchor, **know.trust_keys}
    doc = decode_document(raw, kind=kind, site=know.site, trust_keys=keys)
    if kind == "config":
        return know.with_config(doc)
    if kind == "register":
        return know.with_register(doc)
    if kind == DELTA:
        return know.with_register_delta(doc)
    return know.with_freshness(doc, received_at)


def gate_stage(config: GateConfig) -> Path | None:
    src = config.camera.source
    if src.startswith("watch:"):
        return config.resolve(src.removeprefix("watch:"))
    return None
