"""A gate's trust moves forward only (edge/trust.py, DESIGN.md principle 8).

Key 1 is stolen; the operator rotates to key 2, then retires key 1. What the thief signs
with key 1 applies only while the gate's root still holds key 1; once the gate has seen the
root that drops it, nothing key 1 signed applies, held or new, whatever version it claims,
and the server's own documents supersede the inflated ones.
"""

from __future__ import annotations

import json
import logging
import shutil
from datetime import UTC, datetime
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from edge.config import load_config
from edge.decision import GateState, Now, Scan, Temperature, decide
from edge.knowledge import Knowledge
from edge.provision import StaleBundle, load_knowledge, provision
from edge.store import GateStore
from edge.trust import receive, save_received
from protocol.documents import (
    CONFIG_FILE,
    FRESHNESS_FILE,
    REGISTER_FILE,
    SignedDocument,
    UntrustedDocument,
    parse_document,
    sign_document,
)
from protocol.passes import TrustKey, public_bytes
from protocol.register import Register, RegisterDelta
from protocol.register_documents import DELTA, DELTA_FILE, delta_body, read_snapshot
from protocol.roots import root_body
from server.cli import write_qr_png
from server.keys import load_key
from server.register import RegisterRow
from server.site import IssuedPass, Site
from tests.conftest import run_menwei
from tests.edge.gates import daemon_for
from tests.server.test_keys import scan


def bundled(site: Site, name: str) -> SignedDocument:
    return parse_document(
        site.bundle_path(name).read_bytes(), kind=name.removesuffix(".json"), site=site.site
    )


def forge(
    site: Site, kind: str, body: dict, key: Ed25519PrivateKey, key_id: int = 1, version: int = 1001
) -> bytes:
    """A document signed with a stolen key under the site's newest root it was trusted in
    (2: the rotation to key 2), carrying the real chain to it."""
    chain = bundled(site, CONFIG_FILE).chain[:2]
    issued = datetime.now(UTC).isoformat(timespec="milliseconds")
    doc = sign_document(kind, site.site, version, issued, body, key_id, key, root=2, chain=chain)
    return doc.encode()


def deliver(gate_dir: Path, know: Knowledge, kind: str, raw: bytes) -> Knowledge:
    """What the gate daemon does with one retained document (edge.daemon.on_document)."""
    with GateStore(load_config(gate_dir / "gate.toml").db_path) as store:
        got = receive(know, kind, raw)
        if got.changed:
            save_received(store, got, raw, datetime.now(UTC))
    return got.know


def deliver_bundle(gate_dir: Path, site: Site, know: Knowledge, *names: str) -> Knowledge:
    for name in names or (CONFIG_FILE, REGISTER_FILE, FRESHNESS_FILE):
        know = deliver(
            gate_dir, know, name.removesuffix(".json"), site.bundle_path(name).read_bytes()
        )
    return know


def gate_knowledge(gate_dir: Path) -> Knowledge:
    config = load_config(gate_dir / "gate.toml")
    with GateStore(config.db_path) as store:
        return load_knowledge(config, store)


def reason(know: Knowledge, qr: str, body_c: float = 36.5) -> str:
    now = Now(datetime.now(UTC), trusted=True)
    return decide(Scan(qr, "in"), Temperature(body_c), GateState(), know, now).reason


def revoke_one(site: Site) -> IssuedPass:
    """A pass of the signing key (key 2 after the rotation), revoked."""
    issued = site.issue_pass("4-4-404", "孙八", room="4-4-404")
    site.revoke_pass(issued.pass_id, "lost")
    return issued


@pytest.fixture
def stolen(site: Site) -> Ed25519PrivateKey:
    """Key 1, as a thief copied it before the operator noticed."""
    return load_key(site.dir, 1)


def forged_documents(site: Site, key: Ed25519PrivateKey) -> tuple[bytes, bytes]:
    """A config moving the fever threshold to 42 °C and a register without revocations."""
    policy = {**site.published_policy().policy.to_json(), "fever_threshold_c": 42.0}
    register = Register(site.register().passes, {}, {}).to_json()
    return forge(site, "config", {"policy": policy}, key), forge(site, "register", register, key)


def test_version_inflation_while_key_1_was_trusted_is_superseded_after_its_retirement(
    site: Site, gate_dir: Path, stolen
) -> None:
    site.rotate_key()
    resident, revoked = site.issue_pass("1-2-102", "吴十"), revoke_one(site)
    know = deliver_bundle(gate_dir, site, gate_knowledge(gate_dir))
    assert know.trust_root().version == 2
    config, register = forged_documents(site, stolen)
    know = deliver(gate_dir, know, "config", config)
    know = deliver(gate_dir, know, "register", register)
    # Key 1 is in root 2: accepted then, with the versions it claims.
    assert know.versions() == {"config": 1001, "register": 1001}
    assert reason(know, revoked.qr) == "ok" and reason(know, resident.qr, 38.0) == "ok"
    # The server's next register (version 5, root 2) does not supersede version 1001.
    site.issue_pass("5-5-505", "周九")
    know = deliver_bundle(gate_dir, site, know, REGISTER_FILE)
    assert know.register_version == 1001

    site.retire_key(1)
    root_3 = bundled(site, FRESHNESS_FILE)
    assert root_3.root == 3
    know = deliver_bundle(gate_dir, site, know, FRESHNESS_FILE)
    # Root 3 drops key 1: what it signed stops applying at once; the guard confirms.
    assert know.trust_root().version == 3 and know.missing() == ["config", "register"]
    assert reason(know, resident.qr) == "guard_confirm"
    assert reason(know, revoked.qr) == "guard_confirm"
    know = deliver_bundle(gate_dir, site, know, CONFIG_FILE, REGISTER_FILE)
    assert know.held["register"].mark == (3, bundled(site, REGISTER_FILE).version) < (3, 1001)
    assert reason(know, revoked.qr) == "revoked"
    assert reason(know, resident.qr, 38.0) == "fever_recheck"  # 37.3 °C again
    # And so after a restart.
    again = gate_knowledge(gate_dir)
    assert again.versions() == know.versions() and again.trust_root().version == 3


def test_a_gate_that_has_seen_the_retirement_refuses_what_key_1_signs(
    site: Site, gate_dir: Path, stolen
) -> None:
    site.rotate_key()
    revoked = revoke_one(site)
    site.retire_key(1)
    know = deliver_bundle(gate_dir, site, gate_knowledge(gate_dir))
    config, register = forged_documents(site, stolen)
    for kind, raw in (("config", config), ("register", register)):
        with pytest.raises(UntrustedDocument, match="signed by key 1, which trust root 3"):
            receive(know, kind, raw)
    # Claiming root 3, with the real chain: key 1 is not in it either.
    chain = bundled(site, CONFIG_FILE).chain
    claiming = sign_document(
        "register", site.site, 1002, "2026-11-29T00:00:00+00:00",
        site.register().to_json(), 1, stolen, root=3, chain=chain,
    )  # fmt: skip
    with pytest.raises(UntrustedDocument, match="trust root 3 does not hold"):
        receive(know, "register", claiming.encode())
    assert reason(know, revoked.qr) == "revoked"


def test_after_a_withdrawal_an_older_genuine_document_is_not_taken_instead(
    site: Site, gate_dir: Path, stolen
) -> None:
    """The withdrawn register leaves a floor: the next one must be signed under the root that
    withdrew it. The server's own register of before (root 2, replayed) would bring back a
    state the server replaced; the one it signs under root 3 follows at once anyway."""
    site.rotate_key()
    know = deliver_bundle(gate_dir, site, gate_knowledge(gate_dir))
    before = site.bundle_path(REGISTER_FILE).read_bytes()  # root 2, key 2
    _config, register = forged_documents(site, stolen)
    know = deliver(gate_dir, know, "register", register)
    site.retire_key(1)
    know = deliver_bundle(gate_dir, site, know, FRESHNESS_FILE)
    assert know.floors == {"register": 3}
    got = receive(know, "register", before)
    assert not got.applied and got.know.register_version == 0
    assert gate_knowledge(gate_dir).floors == {"register": 3}, "kept across a restart"


def test_a_gate_init_from_an_older_bundle_does_not_move_the_root_back(
    site: Site, gate_dir: Path, tmp_path: Path
) -> None:
    old_bundle = tmp_path / "usb-stick"
    shutil.copytree(site.dir / "bundle", old_bundle)  # root 1: key 1
    site.rotate_key()
    revoked = revoke_one(site)
    site.retire_key(1)
    deliver_bundle(gate_dir, site, gate_knowledge(gate_dir))
    trust_before = (gate_dir / "trust.json").read_bytes()

    result = provision(gate_dir, old_bundle, "east", simulated=True)
    assert result["root"] == 3
    assert set(result["not_taken"]) == {"config", "register", "freshness"}  # key 1's
    assert (gate_dir / "trust.json").read_bytes() == trust_before
    know = gate_knowledge(gate_dir)
    assert know.trust_root().version == 3 and know.missing() == []
    assert reason(know, revoked.qr) == "revoked"

    # A newer bundle (the server's own) moves it forward, as provisioning always did.
    site.rotate_key()
    assert provision(gate_dir, site.dir, "east", simulated=True)["root"] == 4
    assert json.loads((gate_dir / "trust.json").read_bytes())["root"] == 4


def test_a_gate_provisioned_after_a_retirement_never_trusts_the_retired_key(
    site: Site, tmp_path: Path, stolen
) -> None:
    site.rotate_key()
    site.retire_key(1)
    new_gate = tmp_path / "west"
    assert provision(new_gate, site.dir, "west", simulated=True)["root"] == 3
    know = gate_knowledge(new_gate)
    assert sorted(know.trust_keys) == [2]
    config, _register = forged_documents(site, stolen)
    with pytest.raises(UntrustedDocument, match="does not hold"):
        receive(know, "config", config)


def test_the_daemon_refuses_logs_counts_and_alerts_once_per_document(
    site: Site, gate_dir: Path, stolen, caplog: pytest.LogCaptureFixture
) -> None:
    site.rotate_key()
    site.retire_key(1)
    daemon = daemon_for(gate_dir)
    try:
        for name in (CONFIG_FILE, REGISTER_FILE, FRESHNESS_FILE):
            daemon.on_document(name.removesuffix(".json"), site.bundle_path(name).read_bytes())
        assert daemon.status()["trust_root"] == 3
        config, register = forged_documents(site, stolen)
        with caplog.at_level(logging.WARNING, logger="menwei.gate"):
            for raw in (config, register, config):  # the retained config delivered again
                daemon.on_document(json.loads(raw)["kind"], raw)
        refusals = [r.getMessage() for r in caplog.records if "refused untrusted" in r.getMessage()]
        assert len(refusals) == 3
        assert refusals[0].startswith(
            "refused untrusted config document (key 1, root 2, version 1001): config document"
            " signed by key 1, which trust root 3 does not hold"
        )
        status = daemon.status()["refused_documents"]
        assert status["count"] == 3
        assert {k: status["last"][k] for k in ("kind", "key_id", "root", "version")} == {
            "kind": "config",
            "key_id": 1,
            "root": 2,
            "version": 1001,
        }
        alerts = [e.event for e in daemon.store.log() if e.event.kind == "alert"]
        withdrawn, *untrusted = alerts
        # Catching up from root 1, what key 1 signed before stopped applying (then replaced).
        assert withdrawn.reason == "document_withdrawn" and withdrawn.detail["root"] == 3
        assert sorted(withdrawn.detail["withdrawn"]) == ["config", "freshness", "register"]
        assert [(a.reason, a.detail["kind"], a.detail["priority"]) for a in untrusted] == [
            ("untrusted_document", "config", "high"),
            ("untrusted_document", "register", "high"),
        ]
        assert daemon.know.versions() == site.published_versions()
    finally:
        daemon.close()


def test_a_gate_that_followed_a_root_the_thief_made_is_brought_back_by_reset_trust(
    site: Site, gate_dir: Path, stolen
) -> None:
    """Key 1 is in root 2: the thief can sign a root 3 of its own ({1, 9}) and, with it, more.
    A gate that sees it first follows it (it cannot tell), and then refuses the server's
    documents (and raises untrusted_document alerts). `gate init` does not move it back (a
    newer root than the bundle's), `gate init --reset-trust` does: the server's bundle is
    the offline channel."""
    site.rotate_key()
    know = deliver_bundle(gate_dir, site, gate_knowledge(gate_dir))
    thief = Ed25519PrivateKey.generate()
    chain = bundled(site, CONFIG_FILE).chain[:2]
    at = datetime.now(UTC).isoformat(timespec="milliseconds")
    keys = root_body([site.known_keys()[1][1], TrustKey(9, public_bytes(thief))])
    fake_3 = sign_document("root", site.site, 3, at, keys, 1, stolen, root=2)
    fake_4 = sign_document("root", site.site, 4, at, keys, 9, thief, root=3)
    policy = {"policy": site.published_policy().policy.to_json()}
    taken = sign_document(
        "config", site.site, 9, at, policy, 9, thief, root=4, chain=(*chain, fake_3, fake_4)
    )
    know = deliver(gate_dir, know, "config", taken.encode())
    assert know.trust_root().version == 4 and sorted(know.trust_keys) == [1, 9]

    site.retire_key(1)  # the server's root 3: {2}
    with pytest.raises(UntrustedDocument, match=r"key 2, which trust root 4 does not hold"):
        receive(know, "register", site.bundle_path(REGISTER_FILE).read_bytes())
    assert provision(gate_dir, site.dir, "east", simulated=True)["root"] == 4  # not moved back
    result = provision(gate_dir, site.dir, "east", simulated=True, reset_trust=True)
    assert result["root"] == 3 and "not_taken" not in result
    again = gate_knowledge(gate_dir)
    assert sorted(again.trust_keys) == [2] and again.versions() == site.published_versions()
    with pytest.raises(UntrustedDocument):
        receive(again, "config", taken.encode())


def test_reset_trust_from_a_stale_bundle_does_not_bring_back_a_retired_key(
    site: Site, resident: IssuedPass, gate_dir: Path, tmp_path: Path
) -> None:
    """The attack: a USB-stick bundle taken at root 1 (key 1), before `keys rotate` and
    `keys retire 1`; the gate has followed to root 3. `gate init --reset-trust` from it
    would make key 1 trusted again (a pass it signs allowed). The gate's documents carry
    the chain 1 -> 2 -> 3, each root signed by a key of the one before: root 3 follows from
    the bundle's root 1, so the bundle is only stale, and the reset is refused."""
    old_bundle = tmp_path / "usb-stick"
    shutil.copytree(site.dir / "bundle", old_bundle)  # root 1: key 1
    site.rotate_key()
    site.retire_key(1)
    deliver_bundle(gate_dir, site, gate_knowledge(gate_dir))
    image = tmp_path / "key1.png"
    write_qr_png(resident.qr, image)  # a pass key 1 signed
    assert scan(gate_dir, image) == ["unknown_key"]
    trust_before = (gate_dir / "trust.json").read_bytes()
    toml = str(gate_dir)

    proc = run_menwei(
        "gate", "init", toml, "--server", str(old_bundle), "--gate", "east", "--reset-trust",
        check=False,
    )  # fmt: skip
    assert proc.returncode != 0 and "Traceback" not in proc.stderr
    assert "--reset-trust refused: the bundle's trust root 1 (keys [1])" in proc.stderr
    assert "older than the gate's root 3 (keys [2])" in proc.stderr
    assert "would trust again keys [1]" in proc.stderr
    assert (gate_dir / "trust.json").read_bytes() == trust_before
    know = gate_knowledge(gate_dir)
    assert know.trust_root().version == 3 and know.versions() == site.published_versions()
    assert scan(gate_dir, image) == ["unknown_key"]

    # The server's current bundle resets (a no-op here), saying what it trusts.
    out = run_menwei(
        "gate", "init", toml, "--server", str(site.dir), "--gate", "east", "--reset-trust",
        "--json",
    )  # fmt: skip
    result = json.loads(out.stdout)
    assert result["root"] == 3
    assert result["trust_reset"] == {
        "from_root": 3,
        "to_root": 3,
        "keys_trusted": [2],
        "keys_no_longer_trusted": [],
        "keys_newly_trusted": [],
    }


def test_reset_trust_without_a_chain_to_judge_by_is_refused(
    site: Site, gate_dir: Path, tmp_path: Path
) -> None:
    """A gate at root 3 that holds no document carrying the chain (none received yet since
    provisioning): it cannot tell a stale bundle from a fork, and keeps its root."""
    old_bundle = tmp_path / "usb-stick"
    shutil.copytree(site.dir / "bundle", old_bundle)
    site.rotate_key()
    site.retire_key(1)
    provision(gate_dir, site.dir, "east", simulated=True)
    with GateStore(gate_dir / "gate.db") as store:
        store.reset_trust(json.dumps(gate_knowledge(gate_dir).trust_root().to_json()))
    with pytest.raises(StaleBundle, match="holds no chain from root 1 to its root 3"):
        provision(gate_dir, old_bundle, "east", simulated=True, reset_trust=True)
    assert gate_knowledge(gate_dir).trust_root().version == 3


def test_a_register_delta_signed_by_the_retired_key_is_withdrawn_then_refused(
    site: Site, gate_dir: Path, stolen
) -> None:
    """A register delta is a signed document like the others: the thief's delta (key 1, under
    root 2, dropping the revocations) applies while key 1 is trusted; root 3 withdraws it with
    the snapshot it applied to (a register is never half withdrawn); after that the same delta,
    or one claiming root 3, is refused, and the server's new snapshot restores the register."""
    site.registry.apply_import(
        [RegisterRow(i + 2, f"5-1-{i}", "5", "1", str(i), "g", f"住户{i}", "1", "resident")
         for i in range(300)]
    )  # fmt: skip
    site.issue_all()  # a register large enough that one change is a delta
    site.rotate_key()
    revoked = revoke_one(site)  # a delta of the snapshot the rotation cut (key 2, root 2)
    assert site.bundle_path(DELTA_FILE).exists()
    know = deliver_bundle(gate_dir, site, gate_knowledge(gate_dir), CONFIG_FILE, REGISTER_FILE)
    know = deliver(gate_dir, know, DELTA, site.bundle_path(DELTA_FILE).read_bytes())
    assert reason(know, revoked.qr) == "revoked" and DELTA in know.held
    snapshot = bundled(site, REGISTER_FILE)
    cleared = Register(site.register().passes, {}, {})
    change = RegisterDelta.between(read_snapshot(snapshot), cleared)
    forged = forge(site, DELTA, delta_body(snapshot.version, change), stolen)
    know = deliver(gate_dir, know, DELTA, forged)
    assert (know.register_version, know.held[DELTA].key_id) == (1001, 1)
    assert reason(know, revoked.qr) == "ok"

    site.retire_key(1)
    got = receive(know, "freshness", site.bundle_path(FRESHNESS_FILE).read_bytes())
    assert {"register", DELTA} <= set(got.withdrawn), "the snapshot (key 2) with its delta"
    know = deliver_bundle(gate_dir, site, know, FRESHNESS_FILE)
    assert know.missing() == ["register"] and know.snapshot_version == 0
    assert reason(know, revoked.qr) == "guard_confirm"
    with pytest.raises(UntrustedDocument, match="signed by key 1, which trust root 3"):
        receive(know, DELTA, forged)
    chain = bundled(site, CONFIG_FILE).chain
    claiming = sign_document(
        DELTA, site.site, 1002, "2026-11-29T00:00:00+00:00",
        delta_body(snapshot.version, change), 1, stolen, root=3, chain=chain,
    )  # fmt: skip
    with pytest.raises(UntrustedDocument, match="trust root 3 does not hold"):
        receive(know, DELTA, claiming.encode())
    assert not site.bundle_path(DELTA_FILE).exists(), "root 3: a new snapshot, no delta"
    know = deliver_bundle(gate_dir, site, know, CONFIG_FILE, REGISTER_FILE)
    assert know.held["register"].mark == (3, site.published_versions()["register"])
    assert reason(know, revoked.qr) == "revoked"
    again = gate_knowledge(gate_dir)  # after a restart: the forged delta is gone from gate.db
    assert again.register == know.register and DELTA not in again.held
