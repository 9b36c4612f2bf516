"""Key rotation as a gate lives it: a gate provisioned before the rotation learns the new key
from a config signed by the old one, then accepts documents and passes signed by the new key;
old passes stay valid until their key is retired."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path

import pytest

from edge.config import load_config
from edge.decision import GateState, Now, Scan, Temperature, decide
from edge.knowledge import Knowledge
from edge.provision import accept_document, apply_document, load_knowledge, trust_anchor
from edge.store import GateStore
from protocol.documents import CONFIG_FILE, REGISTER_FILE, decode_document
from protocol.errors import MessageError
from protocol.passes import parse_pass
from server.cli import write_qr_png
from server.site import IssuedPass, Site, SiteError
from tests.conftest import run_menwei


def deliver(gate_dir: Path, site: Site, know: Knowledge) -> Knowledge:
    """What the gate daemon's on_document does with the retained config, then register."""
    config = load_config(gate_dir / "gate.toml")
    _, anchor = trust_anchor(config)
    with GateStore(config.db_path) as store:
        for kind, name in (("config", CONFIG_FILE), ("register", REGISTER_FILE)):
            raw = site.bundle_path(name).read_bytes()
            keys = {**anchor, **know.trust_keys}
            accept_document(
                store, decode_document(raw, kind=kind, site=know.site, trust_keys=keys), raw
            )
            know = apply_document(know, kind, raw, anchor)
    return know


def gate_knowledge(gate_dir: Path) -> Knowledge:
    config = load_config(gate_dir / "gate.toml")
    with GateStore(config.db_path) as store:
        return load_knowledge(config, store)


def scan(gate_dir: Path, *images: Path) -> list[str]:
    out = run_menwei(
        "gate", "scan", "--config", str(gate_dir / "gate.toml"), "--temperature", "36.5",
        "--json", *map(str, images),
    )  # fmt: skip
    return [r["reason"] for r in json.loads(out.stdout)]


def test_gate_provisioned_before_rotation_follows_it(
    site: Site, resident: IssuedPass, gate_dir: Path, tmp_path: Path
):
    before = gate_knowledge(gate_dir)
    assert sorted(before.trust_keys) == [1]
    previous, new = site.rotate_key()
    assert (previous, new) == (1, 2)

    config = json.loads(site.bundle_path(CONFIG_FILE).read_bytes())
    assert config["key_id"] == 1  # announced by the key the gates already trust
    assert [k["key_id"] for k in config["body"]["trust_keys"]] == [1, 2]

    fresh = site.issue_pass("2-1-201", "李四", room="2-1-201")
    assert parse_pass(fresh.qr).key_id == 2
    register = json.loads(site.bundle_path(REGISTER_FILE).read_bytes())
    assert register["key_id"] == 2
    # Without the rotation's config the gate could not read it: that is why it comes first.
    with pytest.raises(MessageError, match="untrusted key 2"):
        apply_document(before, "register", site.bundle_path(REGISTER_FILE).read_bytes(), {})

    after = deliver(gate_dir, site, before)
    assert sorted(after.trust_keys) == [1, 2]
    assert fresh.pass_id in after.register.passes

    write_qr_png(resident.qr, tmp_path / "old.png")
    write_qr_png(fresh.qr, tmp_path / "new.png")
    assert scan(gate_dir, tmp_path / "old.png", tmp_path / "new.png") == ["ok", "ok"]

    site.publish_config()  # a policy change after the rotation
    assert json.loads(site.bundle_path(CONFIG_FILE).read_bytes())["key_id"] == 1
    # The gate restarted (scan reloads from its store): the oldest key still verifies it.
    assert scan(gate_dir, tmp_path / "old.png", tmp_path / "new.png") == ["ok", "ok"]

    site.retire_key(1)
    config = json.loads(site.bundle_path(CONFIG_FILE).read_bytes())
    assert config["key_id"] == 2 and [k["key_id"] for k in config["body"]["trust_keys"]] == [2]
    running = deliver(gate_dir, site, after)  # the running gate learnt key 2 at the rotation
    assert sorted(running.trust_keys) == [2]
    now = Now(datetime.now(UTC), trusted=True)
    reasons = [
        decide(Scan(qr, "in"), Temperature(36.5), GateState(), running, now).reason
        for qr in (resident.qr, fresh.qr)
    ]
    assert reasons == ["unknown_key", "ok"]


def test_gate_restarts_after_the_old_key_is_retired(
    site: Site, resident: IssuedPass, gate_dir: Path
):
    site.rotate_key()
    know = deliver(gate_dir, site, gate_knowledge(gate_dir))
    site.retire_key(1)
    deliver(gate_dir, site, know)
    assert sorted(gate_knowledge(gate_dir).trust_keys) == [2]


def test_retire_refuses_the_signing_key(site: Site):
    with pytest.raises(SiteError, match="signing key and the only one"):
        site.retire_key(1)
    with pytest.raises(SiteError, match="not an active key"):
        site.retire_key(7)
    site.rotate_key()
    with pytest.raises(SiteError, match="key 2 is the signing key: run"):
        site.retire_key(2)
    site.retire_key(1)
    # Ids are never reused, even after retiring.
    assert site.rotate_key() == (2, 3)


def test_cli_rotate_and_retire(site: Site):
    site.close()
    d = str(site.dir)
    rotated = json.loads(run_menwei("keys", "rotate", d, "--json").stdout)
    assert rotated == {"key_id": 2, "previous": 1, "trust_keys": [1, 2]}
    refused = run_menwei("keys", "retire", d, "2", check=False)
    assert refused.returncode == 2 and "signing key" in refused.stderr
    retired = json.loads(run_menwei("keys", "retire", d, "1", "--json").stdout)
    assert retired == {"retired": 1, "trust_keys": [2]}
