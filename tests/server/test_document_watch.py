"""A retained document the server did not publish does not stay on the broker
(server/document_watch.py): the collector replaces it with its own and, when it is foreign
(a retired or unknown key, a forged signature, an inflated version), raises one
`foreign_document` alert, without a publish war."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from datetime import UTC, datetime

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from menwei.mosquitto import MosquittoBroker
from protocol import topics
from protocol.broker import parse_broker
from protocol.documents import CONFIG_FILE, REGISTER_FILE, parse_document, sign_document
from protocol.passes import TrustKey, public_bytes
from protocol.register import RegisterDelta
from protocol.register_documents import DELTA, DELTA_FILE, delta_body
from protocol.roots import root_body
from server.collector import Collector
from server.document_watch import REPUBLISH_AFTER_S, DocumentWatch, judge
from server.keys import load_key
from server.site import Site
from tests.conftest import SITE
from tests.e2e.helpers import MqttWatcher, wait_until


def forged(site: Site, kind: str, key: Ed25519PrivateKey, key_id: int, version: int) -> bytes:
    own = parse_document(site.bundle_path(f"{kind}.json").read_bytes(), kind=kind, site=SITE)
    issued = datetime.now(UTC).isoformat(timespec="milliseconds")
    return sign_document(
        kind, SITE, version, issued, own.body, key_id, key, root=own.root, chain=own.chain
    ).encode()


def verdict(site: Site, kind: str, payload: bytes) -> tuple[bool, str] | None:
    published = site.bundle_path(f"{kind}.json").read_bytes()
    found = judge(kind, payload, published, SITE, site.known_keys)
    return None if found is None else (found.foreign, found.detail)


def test_what_the_server_published_is_its_own_and_anything_else_is_judged(site: Site) -> None:
    key_1 = load_key(site.dir, 1)
    old_register = site.bundle_path(REGISTER_FILE).read_bytes()
    site.rotate_key()
    site.retire_key(1)
    own = site.bundle_path(CONFIG_FILE).read_bytes()
    assert verdict(site, "config", own) is None
    assert verdict(site, "register", old_register) == (
        True,
        "register v1 (root 1) signed by key 1, a retired key: not published by this server",
    )
    cases = {
        "retired": forged(site, "config", key_1, 1, 1001),
        "stranger": forged(site, "config", Ed25519PrivateKey.generate(), 9, 1001),
        "forged": forged(site, "config", Ed25519PrivateKey.generate(), 2, 5),
        "inflated": forged(site, "config", load_key(site.dir, 2), 2, 1001),
        "stale": forged(site, "config", load_key(site.dir, 2), 2, 1),
        "malformed": b'{"kind": "config"',
        "cleared": b"",
    }
    found = {name: verdict(site, "config", raw) for name, raw in cases.items()}
    assert {name: f[0] for name, f in found.items() if f} == {
        "retired": True,
        "stranger": True,
        "forged": True,
        "inflated": True,
        "stale": False,
        "malformed": True,
        "cleared": True,
    }
    assert found["retired"][1] == (  # type: ignore[index]
        "config v1001 (root 3) signed by key 1, a retired key: not published by this server"
    )
    assert "not a key of this site" in found["stranger"][1]  # type: ignore[index]
    assert "does not verify (forged)" in found["forged"][1]  # type: ignore[index]
    assert "key 2 is compromised" in found["inflated"][1]  # type: ignore[index]
    assert "an older document of this server" in found["stale"][1]  # type: ignore[index]


def test_a_document_carrying_a_root_the_server_did_not_make_is_foreign(site: Site) -> None:
    """Key 1 is still active (root 2); the thief signs a root 3 of its own and a register
    version the server has had, under root 2, carrying it: the version says nothing, the
    chain gives it away."""
    key_1 = load_key(site.dir, 1)
    site.rotate_key()
    own = parse_document(site.bundle_path(REGISTER_FILE).read_bytes(), kind="register", site=SITE)
    at = datetime.now(UTC).isoformat(timespec="milliseconds")
    keys = root_body([site.known_keys()[1][1], TrustKey(9, public_bytes(key_1))])
    fake_3 = sign_document("root", SITE, 3, at, keys, 1, key_1, root=2)
    chain = (*own.chain, fake_3)
    replay = sign_document("register", SITE, 1, at, own.body, 1, key_1, root=2, chain=chain)
    assert verdict(site, "register", replay.encode()) == (
        True,
        "register v1 (root 2) signed by key 1 carries a trust root 3 this server did not make"
        " (signed by key 1): key 1 is compromised; gates that took that root need"
        " `menwei gate init --reset-trust`",
    )


def test_alerts_are_rate_limited_per_kind(site: Site) -> None:
    clock = [1000.0]
    watch = DocumentWatch(
        SITE,
        {"config": site.bundle_path(CONFIG_FILE)},
        site.known_keys,
        monotonic=lambda: clock[0],
    )
    stranger = Ed25519PrivateKey.generate()
    first = watch.check("config", forged(site, "config", stranger, 9, 1001))
    second = watch.check("config", forged(site, "config", stranger, 9, 1002))
    clock[0] += 61
    third = watch.check("config", forged(site, "config", stranger, 9, 1003))
    assert [alert for _f, alert in (first, second, third)] == [True, False, True]
    assert watch.found == {"stale": 0, "foreign": 3}
    assert watch.republish_after("config") == 0.0
    watch.republished("config")
    assert watch.republish_after("config") == clock[0] + REPUBLISH_AFTER_S


@pytest.fixture
def fast_collector(site: Site, broker: MosquittoBroker) -> Iterator[Collector]:
    """The collector, looking at the bundle every 0.1 s; started by the test (after it
    changed the site's keys)."""
    c = Collector(site, parse_broker(broker.url))
    c.document_check_s = 0.1
    try:
        yield c
    finally:
        c.close()


def key_1_retired(site: Site) -> Ed25519PrivateKey:
    """Key 1, as a thief copied it; then rotated to key 2 and retired (trust root 3)."""
    key_1 = load_key(site.dir, 1)
    site.rotate_key()
    site.retire_key(1)
    return key_1


def start(collector: Collector) -> None:
    collector.start()
    wait_until(collector.connected.is_set, 15, "collector did not connect")


def test_the_collector_replaces_a_foreign_retained_document_and_raises_one_alert(
    site: Site, broker: MosquittoBroker, fast_collector: Collector
) -> None:
    collector = fast_collector
    key_1 = key_1_retired(site)
    own = site.bundle_path(CONFIG_FILE).read_bytes()
    topic = topics.config(SITE)
    start(collector)
    with MqttWatcher(broker.url, topic) as attacker:
        attacker.wait_for(topic, lambda m: m.payload == own, 15, "the published config")
        seen = len(attacker.on(topic))
        forgeries = [forged(site, "config", key_1, 1, 1001 + i) for i in range(3)]
        for forgery in forgeries:  # a thief keeps publishing
            attacker.publish(topic, forgery, retain=True)

        def retained() -> bytes:
            with MqttWatcher(broker.url, topic) as late:
                return late.wait_for(topic, lambda m: m.retain, 15, "retained config").payload

        wait_until(lambda: retained() == own, 30, "the collector did not replace the forgery")
        wait_until(lambda: collector.stats["foreign_documents"] == 3, 15, "3 findings")
        time.sleep(REPUBLISH_AFTER_S + 1)  # any republication still due has happened
        after = [m.payload for m in attacker.on(topic)[seen:]]
    alerts = [a for a in site.alerts.list() if a.kind == "foreign_document"]
    assert len(alerts) == 1 and alerts[0].priority == "high"
    assert "config v1001 (root 3) signed by key 1, a retired key" in alerts[0].detail
    # No publish war: its own config went out again at most twice for three forgeries
    # (at once, and once more REPUBLISH_AFTER_S later for those that came meanwhile).
    assert 1 <= after.count(own) <= 2 and after[-1] == own


def test_the_collectors_own_echo_and_a_stale_document_raise_nothing(
    site: Site, broker: MosquittoBroker, fast_collector: Collector
) -> None:
    collector = fast_collector
    old = site.bundle_path(REGISTER_FILE).read_bytes()
    site.issue_pass("6-6-606", "郑十一")
    own = site.bundle_path(REGISTER_FILE).read_bytes()
    topic = topics.register(SITE)
    start(collector)
    with MqttWatcher(broker.url, topic) as other:
        other.wait_for(topic, lambda m: m.payload == own, 15, "the published register")
        other.publish(topic, old, retain=True)  # an older register of its own, replayed
        other.wait_for(topic, lambda m: m.payload == old, 15, "the replay")
        wait_until(
            lambda: other.last(topic).payload == own,  # type: ignore[union-attr]
            30,
            "the collector did not publish its register again",
        )
    assert [a.kind for a in site.alerts.list()] == []
    assert collector.watch.found["stale"] >= 1 and collector.stats["foreign_documents"] == 0
    assert json.loads(own)["version"] > json.loads(old)["version"]


def a_delta(site: Site, key: Ed25519PrivateKey, key_id: int, version: int) -> bytes:
    """A register delta of the bundle's snapshot (nothing changed), signed by `key`."""
    snapshot = parse_document(
        site.bundle_path(REGISTER_FILE).read_bytes(), kind="register", site=SITE
    )
    body = delta_body(snapshot.version, RegisterDelta())
    issued = datetime.now(UTC).isoformat(timespec="milliseconds")
    return sign_document(
        DELTA, SITE, version, issued, body, key_id, key, root=snapshot.root, chain=snapshot.chain
    ).encode()


def test_the_delta_topic_is_judged_against_the_snapshot_while_the_bundle_holds_no_delta(
    site: Site,
) -> None:
    """No delta in the bundle (a new snapshot cut it): an empty delta topic is the published
    state; a delta of this server's active key numbered at most the snapshot's is stale, one
    above it or signed by a retired key is foreign."""
    key_1 = key_1_retired(site)
    assert not site.bundle_path(DELTA_FILE).exists()
    watch = DocumentWatch(
        SITE,
        {"register": site.bundle_path(REGISTER_FILE), DELTA: site.bundle_path(DELTA_FILE)},
        site.known_keys,
    )
    version = site.published_versions()["register"]
    key_2 = load_key(site.dir, 2)
    assert watch.check(DELTA, b"") == (None, False)
    stale, _ = watch.check(DELTA, a_delta(site, key_2, 2, version))
    assert stale is not None and not stale.foreign
    above, alert = watch.check(DELTA, a_delta(site, key_2, 2, version + 500))
    assert above is not None and above.foreign and alert
    assert f"above the published v{version}" in above.detail
    retired, _ = watch.check(DELTA, a_delta(site, key_1, 1, version + 1))
    assert retired is not None and retired.foreign and "a retired key" in retired.detail


def test_a_foreign_retained_delta_is_cleared_and_raises_an_alert(
    site: Site, broker: MosquittoBroker, fast_collector: Collector
) -> None:
    collector = fast_collector
    key_1 = key_1_retired(site)
    topic, register = topics.register_delta(SITE), topics.register(SITE)
    start(collector)
    with MqttWatcher(broker.url, topic) as attacker:
        forgery = a_delta(site, key_1, 1, 1001)
        attacker.publish(topic, forgery, retain=True)
        attacker.wait_for(topic, lambda m: m.payload == forgery, 15, "the forgery")
        wait_until(
            lambda: attacker.last(topic).payload == b"",  # type: ignore[union-attr]
            30,
            "the collector did not clear the forged delta",
        )
    wait_until(lambda: collector.stats["foreign_documents"] >= 1, 15, "the finding")
    (alert,) = [a for a in site.alerts.list() if a.kind == "foreign_document"]
    assert "register_delta v1001" in alert.detail and "a retired key" in alert.detail
    # The delta topic first: a retained delta would be delivered before the snapshot.
    with MqttWatcher(broker.url, topic, register) as late:
        late.wait_for(register, lambda m: m.retain, 15, "the retained snapshot")
        assert late.on(topic) == []
