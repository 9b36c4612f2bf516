"""A first boot in the past is not believed: signed documents prove the time is at least when
they were issued (less a margin), whatever the clock's trust source says (issue 15)."""

from __future__ import annotations

import io
import json
import time
from collections.abc import Callable
from datetime import datetime, timedelta
from pathlib import Path

import pytest

from drivers.gpio import FakePins
from edge.clock import DOCUMENT_FLOOR_MARGIN_S
from edge.config import load_config
from edge.daemon import GateDaemon
from edge.provision import provision
from protocol.documents import FRESHNESS_FILE
from server.site import IssuedPass, Site
from tests.conftest import run_menwei
from tests.edge.test_daemon import RELAY, frame

DAY = 86400.0


def behind_by(seconds: float) -> Callable[[], float]:
    return lambda: time.time() - seconds


@pytest.fixture
def expired_yesterday(site: Site) -> IssuedPass:
    now = datetime.now(site.config.tz)
    return site.issue_pass(
        "6-1-601", "冯八", valid_from=now - timedelta(days=10), valid_until=now - timedelta(days=1)
    )


def gate_with_wall(site: Site, root: Path, wall: Callable[[], float]) -> GateDaemon:
    provision(root / "g", site.dir, "east", "in", simulated=True)  # trust = "assume"
    config = load_config(root / "g" / "gate.toml")
    assert config.clock.trust == "assume"
    return GateDaemon(config, broker="none", out=io.StringIO(), wall=wall)


def relay_opened(daemon: GateDaemon) -> bool:
    pins = daemon.hw.pins
    assert isinstance(pins, FakePins)
    return any(value for _t, pin, value in pins.history if pin == RELAY)


def test_a_clock_five_days_back_does_not_let_an_expired_pass_through(
    site: Site, tmp_path: Path, expired_yesterday: IssuedPass
):
    daemon = gate_with_wall(site, tmp_path, behind_by(5 * DAY))
    try:
        assert not daemon.clock.now().trusted, "documents issued today prove the clock wrong"
        daemon.handle_frame(frame(expired_yesterday.qr, {"forehead_c": 34.6}))
        (event,) = [e.event for e in daemon.store.log()]
        assert (event.decision, event.reason, event.detail["rule"]) == (
            "deny",
            "guard_confirm",
            "clock",
        )
        assert event.clock_trusted is False
        assert not relay_opened(daemon)
        assert daemon.status()["clock"]["trusted"] is False
    finally:
        daemon.close()


def test_the_same_gate_with_its_clock_right_says_expired(
    site: Site, tmp_path: Path, expired_yesterday: IssuedPass
):
    daemon = gate_with_wall(site, tmp_path, time.time)
    try:
        daemon.handle_frame(frame(expired_yesterday.qr, {"forehead_c": 34.6}))
        (event,) = [e.event for e in daemon.store.log()]
        assert (event.reason, event.clock_trusted) == ("expired", True)
    finally:
        daemon.close()


def test_a_small_skew_within_the_margin_stays_trusted(site: Site, tmp_path: Path):
    daemon = gate_with_wall(site, tmp_path, behind_by(DOCUMENT_FLOOR_MARGIN_S / 3))
    try:
        assert daemon.clock.now().trusted
    finally:
        daemon.close()


def test_a_statement_that_arrives_later_raises_the_floor_and_it_persists(
    site: Site, tmp_path: Path
):
    # The gate was provisioned yesterday (documents issued a day ago); its clock is 2 h slow.
    with Site(site.dir, clock=lambda: datetime.now(site.config.tz) - timedelta(days=1)) as old:
        old.publish_config()
        old.publish_register()
    daemon = gate_with_wall(site, tmp_path, behind_by(2 * 3600))
    try:
        assert daemon.clock.now().trusted, "yesterday's documents say nothing about 2 hours"
        site.publish_freshness()
        daemon.on_document("freshness", site.bundle_path(FRESHNESS_FILE).read_bytes())
        assert daemon.know.statement is not None
        assert not daemon.clock.now().trusted
        floor = daemon.clock.floor
        assert floor >= time.time() - DOCUMENT_FLOOR_MARGIN_S - 5
    finally:
        daemon.close()
    again = GateDaemon(
        load_config(tmp_path / "g" / "gate.toml"),
        broker="none",
        out=io.StringIO(),
        wall=behind_by(2 * 3600),
    )
    try:
        assert again.clock.floor >= floor and not again.clock.now().trusted
    finally:
        again.close()


def test_a_stored_statement_signed_by_a_key_retired_since_does_not_stop_the_gate(
    site: Site, tmp_path: Path
):
    """Rotate 1→2 (the gate stores a statement signed by key 2), rotate 2→3 and retire 2;
    the gate gets the new config but not the next statement, and restarts."""
    daemon = gate_with_wall(site, tmp_path, time.time)
    config = daemon.config

    def deliver(d: GateDaemon, *kinds: str) -> None:
        files = {"config": "config.json", "register": "register.json", "freshness": FRESHNESS_FILE}
        for kind in kinds:
            d.on_document(kind, site.bundle_path(files[kind]).read_bytes())

    try:
        site.rotate_key()
        deliver(daemon, "config", "register", "freshness")
        assert daemon.know.statement is not None and 2 in daemon.know.trust_keys
        held = daemon.know.statement.serial
        site.rotate_key()
        site.retire_key(2)
        deliver(daemon, "config")  # the link drops before the statement
        assert 2 not in daemon.know.trust_keys
    finally:
        daemon.close()
    again = GateDaemon(config, broker="none", out=io.StringIO())
    try:
        assert again.know.config_version == daemon.know.config_version
        assert again.know.statement is None, f"statement {held} signed by retired key 2"
        site.publish_freshness()
        deliver(again, "freshness")
        assert again.know.statement is not None and again.know.statement.serial > held
    finally:
        again.close()


def test_after_a_server_clock_that_ran_ahead_resign_and_reset_floor_restore_trust(
    site: Site, tmp_path: Path
):
    """A server clock a month ahead signed the documents: every gate's floor follows them
    and no clock is trusted. The way out: fix the server's clock, `menwei keys resign`, then
    `menwei gate clock --reset-floor` on each stopped gate."""
    ahead = datetime.now(site.config.tz) + timedelta(days=30)
    with Site(site.dir, clock=lambda: ahead) as wrong:
        wrong.publish_config()
        wrong.publish_register()
    daemon = gate_with_wall(site, tmp_path, time.time)
    daemon.close()
    assert not daemon.clock.now().trusted

    out = json.loads(run_menwei("keys", "resign", str(site.dir), "--json").stdout)
    assert out["config"] > daemon.know.config_version
    again = GateDaemon(daemon.config, broker="none", out=io.StringIO())
    try:
        for kind, name in (("config", "config.json"), ("register", "register.json")):
            again.on_document(kind, site.bundle_path(name).read_bytes())
        again.on_document("freshness", site.bundle_path(FRESHNESS_FILE).read_bytes())
        assert not again.clock.now().trusted, "the floor stays where the wrong clock put it"
    finally:
        again.close()
    config = str(tmp_path / "g" / "gate.toml")
    run_menwei("gate", "clock", "--config", config, "--reset-floor", "--json")
    fixed = GateDaemon(daemon.config, broker="none", out=io.StringIO())
    try:
        assert fixed.clock.now().trusted
    finally:
        fixed.close()
