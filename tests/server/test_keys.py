"""Key rotation and retirement as a gate lives them: every change of the site's keys makes the
next trust root, signed by a key of the one before; a gate provisioned before a rotation
follows it from the chain any document carries, accepts documents and passes of the new key,
and once it has seen a retirement accepts nothing the retired key signs. `keys retire` takes
the private key out of the server directory."""

from __future__ import annotations

import json
import stat
from datetime import UTC, datetime
from pathlib import Path

import pytest

from edge.config import load_config
from edge.decision import GateState, Now, Scan, Temperature, decide
from edge.knowledge import Knowledge
from edge.provision import load_knowledge
from edge.store import GateStore
from edge.trust import receive, save_received
from protocol.documents import (
    CONFIG_FILE,
    REGISTER_FILE,
    TRUST_FILE,
    UntrustedDocument,
    decode_trust_file,
    parse_document,
)
from protocol.passes import parse_pass
from server.cli import write_qr_png
from server.keys import key_path
from server.site import IssuedPass, Site, SiteError
from server.storage import audit
from tests.conftest import run_menwei


def deliver(gate_dir: Path, site: Site, know: Knowledge, *names: str) -> Knowledge:
    """What the gate daemon's on_document does with the retained documents (default: the
    config, then the register), stored as it stores them."""
    config = load_config(gate_dir / "gate.toml")
    with GateStore(config.db_path) as store:
        for name in names or (CONFIG_FILE, REGISTER_FILE):
            raw = site.bundle_path(name).read_bytes()
            got = receive(know, name.removesuffix(".json"), raw)
            save_received(store, got, raw, datetime.now(UTC))
            know = got.know
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


def bundle(site: Site, name: str) -> dict:
    return dict(json.loads(site.bundle_path(name).read_bytes()))


def test_gate_provisioned_before_rotation_follows_it(
    site: Site, resident: IssuedPass, gate_dir: Path, tmp_path: Path
):
    before = gate_knowledge(gate_dir)
    assert sorted(before.trust_keys) == [1] and before.trust_root().version == 1
    previous, new = site.rotate_key()
    assert (previous, new) == (1, 2)

    config = bundle(site, CONFIG_FILE)
    root_2 = config["chain"][-1]
    assert (root_2["version"], root_2["root"], root_2["key_id"]) == (2, 1, 1)  # signed by key 1
    assert [k["key_id"] for k in root_2["body"]["keys"]] == [1, 2]
    assert (config["root"], config["key_id"]) == (2, 2)  # the new key signs, under root 2

    fresh = site.issue_pass("2-1-201", "李四", room="2-1-201")
    assert parse_pass(fresh.qr).key_id == 2
    register = bundle(site, REGISTER_FILE)
    assert register["key_id"] == 2
    # Without the chain it carries the gate could not read it: that is why every document
    # carries it.
    register.pop("chain")
    with pytest.raises(UntrustedDocument, match=r"root 2.*leads only to root 1"):
        receive(before, "register", json.dumps(register).encode())

    after = deliver(gate_dir, site, before, REGISTER_FILE, CONFIG_FILE)  # any order
    assert sorted(after.trust_keys) == [1, 2] and after.trust_root().version == 2
    assert fresh.pass_id in after.register.passes

    write_qr_png(resident.qr, tmp_path / "old.png")
    write_qr_png(fresh.qr, tmp_path / "new.png")
    assert scan(gate_dir, tmp_path / "old.png", tmp_path / "new.png") == ["ok", "ok"]

    site.publish_config()  # a policy change after the rotation
    assert bundle(site, CONFIG_FILE)["key_id"] == 2
    # The gate restarted (scan reloads from its store): its root and documents are kept.
    assert scan(gate_dir, tmp_path / "old.png", tmp_path / "new.png") == ["ok", "ok"]

    site.retire_key(1)
    config = bundle(site, CONFIG_FILE)
    assert config["key_id"] == 2 and config["root"] == 3
    assert [k["key_id"] for k in config["chain"][-1]["body"]["keys"]] == [2]
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
    again = gate_knowledge(gate_dir)
    assert sorted(again.trust_keys) == [2] and again.trust_root().version == 3
    assert again.missing() == []


def test_a_gate_offline_during_rotation_and_retirement_catches_up_from_one_document(
    site: Site, resident: IssuedPass, gate_dir: Path
):
    """Root 1 → 2 (rotate) → 3 (retire 1) → 4 (rotate) while the gate heard nothing: the
    freshness statement alone carries it to root 4; what key 1 signed stops applying until
    the config and register signed under root 4 arrive."""
    site.rotate_key()
    site.retire_key(1)
    site.rotate_key()
    know = gate_knowledge(gate_dir)
    assert know.trust_root().version == 1
    know = deliver(gate_dir, site, know, "freshness.json")
    assert know.trust_root().version == 4 and sorted(know.trust_keys) == [2, 3]
    assert know.missing() == ["config", "register"], "signed by key 1: withdrawn"
    know = deliver(gate_dir, site, know)
    assert know.missing() == [] and know.held["register"].key_id == 3
    assert gate_knowledge(gate_dir).trust_root().version == 4


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


def test_every_key_change_is_the_next_root_signed_by_the_one_before(site: Site):
    site.rotate_key()  # root 2: {1, 2}, signed by 1
    site.retire_key(1)  # root 3: {2}, signed by 2
    site.rotate_key()  # root 4: {2, 3}, signed by 2
    chain = bundle(site, REGISTER_FILE)["chain"]
    assert [(r["version"], r.get("root", 0), r["key_id"]) for r in chain] == [
        (1, 0, 1),
        (2, 1, 1),
        (3, 2, 2),
        (4, 3, 2),
    ]
    assert [[k["key_id"] for k in r["body"]["keys"]] for r in chain] == [[1], [1, 2], [2], [2, 3]]
    site_slug, root, keys = decode_trust_file(site.bundle_path(TRUST_FILE).read_bytes())
    assert (root, sorted(keys)) == (4, [2, 3]), "the bundle's trust file is the newest root"
    for name in (CONFIG_FILE, REGISTER_FILE, "freshness.json"):
        doc = parse_document(
            site.bundle_path(name).read_bytes(), kind=name.removesuffix(".json"), site=site_slug
        )
        assert (doc.root, doc.key_id, len(doc.chain)) == (4, 3, 4), name


def test_retire_removes_the_private_key_from_the_server_directory(site: Site):
    site.rotate_key()
    path = key_path(site.dir, 1)
    assert path.exists()
    retired = site.retire_key(1)
    assert (retired.root, retired.private_key.action) == (3, "removed")
    assert not path.exists()
    assert key_path(site.dir, 2).exists(), "the signing key stays"
    with site.store.read() as tx:
        entry = next(e for e in audit.entries(tx) if e.action == "key_retire")
    assert entry.detail == f"trust root 3; private key {path} removed"


def test_retire_archives_the_private_key_outside_the_server_directory(site: Site, tmp_path: Path):
    site.rotate_key()
    pem = key_path(site.dir, 1).read_bytes()
    inside = site.dir / "old-keys"
    with pytest.raises(SiteError, match="inside the server directory"):
        site.retire_key(1, archive=inside)
    with pytest.raises(SiteError, match="inside the server directory"):
        site.retire_key(1, archive=site.dir / "keys" / ".." / ".")
    assert key_path(site.dir, 1).read_bytes() == pem and not inside.exists()
    assert site.trust_keys()[0].key_id == 1, "refused before anything changed"

    archive = tmp_path / "usb" / "menwei-keys"
    retired = site.retire_key(1, archive=archive)
    kept = archive / key_path(site.dir, 1).name
    assert retired.private_key.to_json() == {"action": "archived", "path": str(kept)}
    assert kept.read_bytes() == pem
    assert stat.S_IMODE(kept.stat().st_mode) == 0o600
    assert stat.S_IMODE(archive.stat().st_mode) == 0o700
    assert not key_path(site.dir, 1).exists()


def test_retire_refuses_an_archive_that_holds_the_key_already(site: Site, tmp_path: Path):
    site.rotate_key()
    archive = tmp_path / "archive"
    archive.mkdir()
    (archive / key_path(site.dir, 1).name).write_text("another key")
    with pytest.raises(SiteError, match=r"already holds site-key-1\.pem"):
        site.retire_key(1, archive=archive)
    assert key_path(site.dir, 1).exists() and [k.key_id for k in site.trust_keys()] == [1, 2]


def test_cli_rotate_and_retire(site: Site, tmp_path: Path):
    site.close()
    d = str(site.dir)
    rotated = json.loads(run_menwei("keys", "rotate", d, "--json").stdout)
    assert rotated == {"key_id": 2, "previous": 1, "trust_keys": [1, 2], "root": 2}
    refused = run_menwei("keys", "retire", d, "2", check=False)
    assert refused.returncode == 2 and "signing key" in refused.stderr
    inside = run_menwei("keys", "retire", d, "1", "--archive", f"{d}/attic", check=False)
    assert inside.returncode == 2 and "inside the server directory" in inside.stderr
    retired = json.loads(run_menwei("keys", "retire", d, "1", "--json").stdout)
    path = str(key_path(site.dir, 1))
    assert retired == {
        "retired": 1,
        "trust_keys": [2],
        "root": 3,
        "private_key": {"action": "removed", "path": path},
    }
    rotated = run_menwei("keys", "rotate", d).stdout
    archived = run_menwei("keys", "retire", d, "2", "--archive", str(tmp_path / "a")).stdout
    assert "root: 4" in rotated
    assert f"private key moved to {tmp_path / 'a' / 'site-key-2.pem'} (mode 0600)" in archived


def test_passes_of_a_retired_key_hold_no_place_and_are_issued_again(site: Site) -> None:
    """Retired at once (the key was copied): its passes are refused `unknown_key` at the
    gates, so they count neither against the household's cap nor as a person's valid pass."""
    cap = site.published_policy().policy.passes_per_household_max
    for i in range(cap):
        site.issue_pass("1-1-101", f"住户{i}", room="1-1-101")
    with pytest.raises(SiteError, match=f"already holds {cap} valid passes"):
        site.issue_pass("1-1-101", "王五")
    site.rotate_key()
    site.retire_key(1)
    assert site.active_passes("1-1-101", datetime.now(UTC)) == 0
    again = site.issue_pass("1-1-101", "住户0", room="1-1-101")
    assert parse_pass(again.qr).key_id == 2
