"""Site: a server directory with keys, store, register and the provisioning bundle."""

from __future__ import annotations

import json
import re
import stat
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest

from protocol.documents import (
    CONFIG_FILE,
    FRESHNESS_FILE,
    REGISTER_FILE,
    TRUST_FILE,
    decode_document,
    decode_trust,
)
from protocol.passes import verify_pass
from protocol.register import Register
from protocol.register_documents import DELTA, DELTA_FILE
from server.cards import cards_for
from server.config import CONFIG_NAME, ServerConfigError, load_server_config
from server.keys import key_path
from server.register_import import import_register
from server.site import DOCUMENTS, IssuedPass, Site, SiteError
from server.storage import audit, meta, passes
from server.storage.engine import lock
from tests.conftest import SITE


def store_of(store_url: str) -> str | None:
    """Site.init's store for a `store_url` test: PostgreSQL's database, or on SQLite the
    default (the file in the server directory), as `menwei server init` makes it."""
    return store_url if store_url.startswith("postgresql") else None


@pytest.fixture
def site(tmp_path: Path, store_url: str) -> Iterator[Site]:
    """Every test of this module that takes a site runs on both stores."""
    with Site.init(tmp_path / "server", SITE, store=store_of(store_url)) as s:
        yield s


def trust(site: Site) -> dict:
    return {k.key_id: k for k in site.trust_keys()}


@dataclass(frozen=True)
class Published:
    """The register the bundle gives gates (its snapshot with its delta applied), the version
    gates report holding it, and the key of the newest register document."""

    version: int
    key_id: int
    register: Register


def register_doc(site: Site) -> Published:
    keys = trust(site)
    docs = [
        decode_document(site.bundle_path(name).read_bytes(), kind=kind, site=SITE, trust_keys=keys)
        for kind, name in (("register", REGISTER_FILE), (DELTA, DELTA_FILE))
        if site.bundle_path(name).exists()
    ]
    register = site.published_register()
    assert register is not None
    version = site.published_versions()["register"]
    (newest,) = [d for d in docs if d.version == version]
    return Published(version, newest.key_id, register)


def test_init_writes_config_key_and_bundle(site: Site) -> None:
    assert site.site == SITE
    assert (site.dir / "server.toml").is_file()
    for name in (CONFIG_FILE, REGISTER_FILE, TRUST_FILE):
        assert site.bundle_path(name).is_file(), name
    trust_site, keys = decode_trust(site.bundle_path(TRUST_FILE).read_bytes())
    assert trust_site == SITE and list(keys) == [1]
    config = decode_document(
        site.bundle_path(CONFIG_FILE).read_bytes(), kind="config", site=SITE, trust_keys=keys
    )
    assert "policy" in config.body and config.root == 1  # its keys: trust root 1, in the chain
    assert [c.version for c in config.chain] == [1] and config.chain[0].body["keys"]
    summary = site.summary()
    assert summary["keys"] == [1] and summary["register"] == 1 and summary["config"] == 1


def test_init_refuses_an_existing_directory(site: Site) -> None:
    before = site.bundle_path(REGISTER_FILE).read_bytes()
    key_before = key_path(site.dir, 1).read_bytes()
    with pytest.raises(SiteError, match="refusing to overwrite"):
        Site.init(site.dir, "other-site")
    assert site.bundle_path(REGISTER_FILE).read_bytes() == before
    assert key_path(site.dir, 1).read_bytes() == key_before
    assert site.summary()["site"] == SITE


def test_init_refuses_a_directory_holding_only_a_store(tmp_path: Path) -> None:
    d = tmp_path / "srv"
    d.mkdir()
    (d / "server.db").write_bytes(b"")
    with pytest.raises(SiteError):
        Site.init(d, SITE)


def test_init_refuses_a_store_that_already_holds_a_site(tmp_path: Path, store_url: str) -> None:
    with Site.init(tmp_path / "first", SITE, store=store_url) as first:
        versions = first.published_versions()
    with pytest.raises(SiteError, match="already holds a Menwei site"):
        Site.init(tmp_path / "second", "other-site", store=store_url)
    assert not (tmp_path / "second" / CONFIG_NAME).exists()
    with Site(tmp_path / "first") as first:
        assert first.site == SITE and first.published_versions() == versions


def test_private_key_is_0600_in_a_0700_folder(site: Site) -> None:
    path = key_path(site.dir, 1)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    assert b"PRIVATE KEY" in path.read_bytes()
    # the key is nowhere in the bundle gates receive
    for name in (CONFIG_FILE, REGISTER_FILE, TRUST_FILE):
        assert b"PRIVATE" not in site.bundle_path(name).read_bytes()


def test_issue_pass_bumps_register_version_and_lists_the_pass(site: Site) -> None:
    v0 = register_doc(site).version
    issued = site.issue_pass("1-2-301", "李四", room="1-2-301")
    doc = register_doc(site)
    assert doc.version == v0 + 1
    (entry,) = doc.register.passes.values()
    assert entry.pass_id == issued.pass_id and entry.household == "1-2-301"
    second = site.issue_pass("1-2-301", "王五")
    assert register_doc(site).version == v0 + 2
    assert second.pass_id == issued.pass_id + 1
    p = verify_pass(issued.qr, SITE, trust(site))
    assert p.pass_id == issued.pass_id and p.household == "1-2-301"


def test_bundle_files_are_replaced_atomically(site: Site) -> None:
    """A reader (the collector, a gate being provisioned) never sees half a register."""
    stop = threading.Event()
    reads: list[int] = []
    errors: list[str] = []

    def reader() -> None:
        path = site.bundle_path(REGISTER_FILE)
        while not stop.is_set():
            raw = path.read_bytes()
            try:
                reads.append(json.loads(raw)["version"])
            except ValueError as exc:
                errors.append(f"{len(raw)} bytes: {exc}")

    t = threading.Thread(target=reader)
    t.start()
    try:
        for i in range(40):
            site.issue_pass(f"2-1-{100 + i}", "赵" + "六" * (1 + i % 5), room=f"2-1-{100 + i}")
    finally:
        stop.set()
        t.join()
    assert not errors, errors[:3]
    assert len(reads) > 0
    assert reads == sorted(reads), "versions read never go backwards"
    leftovers = [p.name for p in site.bundle_path(REGISTER_FILE).parent.iterdir()]
    assert sorted(leftovers) == sorted([CONFIG_FILE, FRESHNESS_FILE, REGISTER_FILE, TRUST_FILE]), (
        leftovers
    )


def test_revoke_moves_the_pass_to_revoked_and_twice_is_an_error(
    site: Site, resident: IssuedPass
) -> None:
    v = register_doc(site).version
    site.revoke_pass(resident.pass_id, "moved out")
    doc = register_doc(site)
    assert doc.version == v + 1
    assert doc.register.revoked == {resident.pass_id: "moved out"}
    assert resident.pass_id not in doc.register.passes
    with pytest.raises(SiteError, match="already revoked"):
        site.revoke_pass(resident.pass_id, "again")
    with pytest.raises(SiteError):
        site.revoke_pass(9999, "no such pass")
    assert register_doc(site).version == v + 1, "a refused revocation publishes nothing"


def test_register_masks_names(site: Site) -> None:
    site.issue_pass("3-1-101", "张三丰", room="3-1-101")
    site.issue_pass("3-1-102", "欧阳娜娜")
    site.issue_pass("3-1-103", "Alice")
    register = register_doc(site).register
    text = json.dumps(register.to_json(), ensure_ascii=False)
    for full in ("张三丰", "欧阳娜娜", "Alice"):
        assert full not in text, f"full name {full} leaked into the register bundle"
    names = sorted(p.display_name for p in register.passes.values())
    assert names == sorted(["张*丰", "欧**娜", "A***e"])
    # the server itself keeps the full name
    with site.store.read() as tx:
        stored = {p.name for p in passes.find(tx)}
    assert {"张三丰", "欧阳娜娜", "Alice"} <= stored


def test_issue_pass_validation(site: Site) -> None:
    with pytest.raises(SiteError):
        site.issue_pass("1-1-101", "   ")
    start = site.parse_time("2026-03-01")
    with pytest.raises(SiteError):
        site.issue_pass("1-1-101", "李四", valid_from=start, valid_until=start)
    with pytest.raises(Exception, match="household"):
        site.issue_pass("bad household!", "李四")


def test_issue_pass_default_validity(site: Site) -> None:
    issued = site.issue_pass("1-1-101", "李四")
    assert issued.valid_until - issued.valid_from == timedelta(days=site.config.server.pass_days)


def test_parse_time_in_site_timezone(site: Site) -> None:
    tz = ZoneInfo("Asia/Shanghai")
    assert site.config.tz == tz
    day = site.parse_time("2026-03-01")
    assert day == datetime(2026, 3, 1, tzinfo=tz)
    assert day.utcoffset() == timedelta(hours=8)
    assert day.timestamp() == datetime.fromisoformat("2026-02-28T16:00:00+00:00").timestamp()
    t = site.parse_time("2026-03-01T07:30")
    assert t == datetime(2026, 3, 1, 7, 30, tzinfo=tz)
    explicit = site.parse_time("2026-03-01T07:30:00+00:00")
    assert explicit.utcoffset() == timedelta(0), "an explicit offset is kept"
    # As a last valid day, a date includes that whole day; a time stays exact.
    assert site.parse_time("2026-03-01", end=True) == datetime(2026, 3, 2, tzinfo=tz)
    assert site.parse_time("2026-03-01T07:30", end=True) == t
    with pytest.raises(SiteError, match="not a date"):
        site.parse_time("tomorrow")


def test_pass_validity_from_parsed_dates(site: Site) -> None:
    start, end = site.parse_time("2026-03-01"), site.parse_time("2026-03-08")
    issued = site.issue_pass("1-1-101", "李四", valid_from=start, valid_until=end)
    p = verify_pass(issued.qr, SITE, trust(site))
    assert p.valid_from == int(start.timestamp()) and p.valid_until == int(end.timestamp())


def test_reopening_a_site(site: Site) -> None:
    issued = site.issue_pass("1-1-101", "李四")
    with Site(site.dir) as again:
        assert again.site == SITE
        assert issued.pass_id in again.register().passes
        assert again.issue_pass("1-1-101", "王五").pass_id == issued.pass_id + 1


# --- freshness statements ---------------------------------------------------------------------


def _bundle_doc(site: Site, name: str) -> dict[str, object]:
    return dict(json.loads(site.bundle_path(name).read_bytes()))


def test_every_document_change_is_followed_by_a_statement_naming_it(site: Site):
    first = _bundle_doc(site, FRESHNESS_FILE)
    site.issue_pass("3-3-303", "钱七")
    after = _bundle_doc(site, FRESHNESS_FILE)
    register = _bundle_doc(site, REGISTER_FILE)
    config = _bundle_doc(site, CONFIG_FILE)
    assert int(after["version"]) > int(first["version"])  # type: ignore[call-overload]
    assert after["body"] == {
        "versions": {"config": config["version"], "register": register["version"]}
    }
    keys = decode_trust(site.bundle_path(TRUST_FILE).read_bytes())[1]
    doc = decode_document(
        site.bundle_path(FRESHNESS_FILE).read_bytes(), kind="freshness", site=SITE, trust_keys=keys
    )
    assert doc.key_id == site.active_key_id()


def test_statements_carry_the_site_clock(tmp_path: Path, store_url: str):
    Site.init(tmp_path / "s", SITE, store=store_of(store_url)).close()
    moment = datetime(2027, 3, 1, 4, 5, 6, tzinfo=UTC)
    with Site(tmp_path / "s", clock=lambda: moment) as site:
        site.publish_freshness()
        doc = _bundle_doc(site, FRESHNESS_FILE)
    assert datetime.fromisoformat(str(doc["issued_at"])) == moment


@pytest.mark.parametrize(
    ("server_lines", "policy_line", "error"),
    [
        ("freshness_interval_s = 2\n", None, "freshness_interval_s must be 5..21600"),
        ("freshness_interval_s = 30000\n", None, "freshness_interval_s must be 5..21600"),
        ('freshness_interval_s = "5m"\n', None, "expected a number"),
        ("freshness_interval_s = 1200\n", "max_data_age_h = 0.5", "at most half"),
    ],
)
def test_bad_freshness_settings_are_refused(
    tmp_path: Path, server_lines: str, policy_line: str | None, error: str
):
    Site.init(tmp_path / "s", SITE).close()
    toml = tmp_path / "s" / "server.toml"
    text = toml.read_text(encoding="utf-8")
    text = text.replace("freshness_interval_s = 300   #", "# was:", 1)
    text = text.replace("[server]\n", "[server]\n" + server_lines)
    if policy_line:
        text = text.replace("max_data_age_h = 24.0", policy_line)
    toml.write_text(text, encoding="utf-8")
    with pytest.raises(ServerConfigError, match=error):
        load_server_config(tmp_path / "s")


def test_fractional_data_age_and_a_short_interval_are_accepted(tmp_path: Path):
    Site.init(tmp_path / "s", SITE).close()
    toml = tmp_path / "s" / "server.toml"
    text = toml.read_text(encoding="utf-8").replace("max_data_age_h = 24.0", "max_data_age_h = 0.5")
    toml.write_text(text, encoding="utf-8")
    config = load_server_config(tmp_path / "s")
    assert config.policy.max_data_age_h == 0.5
    assert config.server.freshness_interval_s == 300


@pytest.mark.parametrize("table", ["server", "policy"])
def test_a_timezone_that_names_no_place_is_refused(site: Site, table: str) -> None:
    """Debian's zoneinfo has `localtime` (a link to /etc/localtime): the server and each gate
    would read their own system zone. Only the tz database's place names are accepted."""
    path = site.dir / CONFIG_NAME
    original = path.read_text(encoding="utf-8")
    assert original.count('timezone = "Asia/Shanghai"') == 2

    def with_zone(zone: str) -> str:
        line = 'timezone = "Asia/Shanghai"'
        at = original.index(line, original.index(f"[{table}]"))
        return f'{original[:at]}timezone = "{zone}"{original[at + len(line) :]}'

    for zone, why in (
        ("localtime", "each machine's own system zone"),
        ("Factory", "zone not set"),
        ("posixrules", "POSIX TZ strings"),
        ("asia/shanghai", "unknown timezone"),
        ("/etc/localtime", "unknown timezone"),
        ("Asia/../Asia/Shanghai", "unknown timezone"),
    ):
        path.write_text(with_zone(zone), encoding="utf-8")
        with pytest.raises(ServerConfigError, match=re.escape(repr(zone))) as err:
            load_server_config(site.dir)
        assert why in str(err.value) and "Asia/Shanghai" in str(err.value)
    path.write_text(with_zone("UTC"), encoding="utf-8")
    config = load_server_config(site.dir)
    zones = {"server": config.server.timezone, "policy": config.policy.timezone}
    assert zones == {"server": "Asia/Shanghai", "policy": "Asia/Shanghai"} | {table: "UTC"}


# --- what the register document holds ------------------------------------------------------


class Clock:
    """The site's clock, moved by the test (the seam Site takes for its time)."""

    def __init__(self, at: datetime) -> None:
        self.at = at

    def __call__(self) -> datetime:
        return self.at


def test_the_register_holds_only_passes_that_can_still_be_presented(
    tmp_path: Path, store_url: str
) -> None:
    """A site that has issued passes for months: the expired ones (residents' and visitors',
    revoked or not) are left out, so the document is the size of what is current."""
    now = datetime.now(UTC).replace(microsecond=0)
    Site.init(tmp_path / "server", SITE, store=store_of(store_url)).close()
    with Site(tmp_path / "server", clock=Clock(now)) as site:
        for i in range(120):  # months of visitors and former residents, all ended days ago
            start = now - timedelta(days=90 - i // 2)
            site.issue_pass(
                f"old-{i}",
                "访客甲",
                role="visitor" if i % 2 else "resident",
                valid_from=start,
                valid_until=start + timedelta(days=1),
                publish=False,
            )
        site.revoke_pass(1, "lost")  # ended long ago: its revocation goes too
        current = site.issue_pass("1-1-101", "张三丰", room="1-1-101", publish=False)
        lost = site.issue_pass("1-1-102", "李四", publish=False)
        site.revoke_pass(lost.pass_id, "lost")
        later = site.issue_pass(
            "1-1-103",
            "王五",
            valid_from=now + timedelta(days=3),
            valid_until=now + timedelta(days=30),
            publish=False,
        )
        just_ended = site.issue_pass(
            "1-1-104",
            "赵六",
            valid_from=now - timedelta(days=5),
            valid_until=now - timedelta(hours=20),  # within the day of margin
            publish=False,
        )
        site.publish_register(snapshot=True)
        doc = register_doc(site)
        raw = site.bundle_path(REGISTER_FILE).read_bytes()

    held = sorted(doc.register.passes)
    assert held == [current.pass_id, later.pass_id, just_ended.pass_id]
    assert doc.register.revoked == {lost.pass_id: "lost"}
    # ~112 bytes a pass: 123 issued would be over 13 kB.
    assert len(raw) < 1500, len(raw)


def test_the_register_is_refreshed_when_passes_end_and_only_then(
    tmp_path: Path, store_url: str
) -> None:
    now = datetime.now(UTC).replace(microsecond=0)
    clock = Clock(now)
    Site.init(tmp_path / "server", SITE, store=store_of(store_url)).close()
    with Site(tmp_path / "server", clock=clock) as site:
        stays = site.issue_pass("1-1-101", "张三丰")
        ends = site.issue_pass(
            "1-1-102",
            "李四",
            valid_from=now - timedelta(days=1),
            valid_until=now + timedelta(hours=1),
        )
        site.set_quarantine("1-1-103", now + timedelta(hours=2))
        site.set_quarantine("1-1-104", None)
        v = register_doc(site).version
        assert site.refresh_register() is None, "nothing ended: nothing to sign"
        clock.at = now + timedelta(hours=12)
        assert site.refresh_register() is None, "ended, but within the day of margin"

        clock.at = now + timedelta(days=1, hours=2)
        fresh = site.refresh_register()

        assert fresh is not None and fresh.version == v + 1
        doc = register_doc(site)
        assert doc.version == v + 1
        assert list(doc.register.passes) == [stays.pass_id]
        assert ends.pass_id not in doc.register.passes
        assert doc.register.quarantine == {"1-1-104": None}
        assert site.refresh_register() is None
        assert register_doc(site).version == v + 1


def test_two_publishers_at_once_never_leave_an_older_register_with_the_higher_version(
    tmp_path: Path, store_url: str
) -> None:
    """Two connections (a command and the dashboard, or the collector's daily refresh) issue
    passes at the same time: the bundle's register is the newest one, holding every pass."""
    Site.init(tmp_path / "s", SITE, store=store_of(store_url)).close()
    errors: list[BaseException] = []

    def issue(prefix: str) -> None:
        try:
            with Site(tmp_path / "s") as site:
                for i in range(15):
                    site.issue_pass(f"{prefix}-1-{100 + i}", "钱" + "七" * (1 + i % 3))
        except BaseException as exc:  # reported below
            errors.append(exc)

    threads = [threading.Thread(target=issue, args=(p,)) for p in ("8", "9")]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    with Site(tmp_path / "s") as site:
        published = register_doc(site)
        with site.store.read() as tx:
            counter = meta.get(tx, "register_version")
        assert published.version == int(counter or 0)
        assert published.register == site.register()
        assert len(published.register.passes) == 30


def test_a_publisher_waits_while_another_transaction_holds_the_documents(site: Site) -> None:
    """Publishing reads, numbers and writes under the documents lock (PostgreSQL; SQLite's
    write lock): while another process's transaction holds it, nothing is published."""
    before = register_doc(site).version
    published: list[int] = []
    thread = threading.Thread(target=lambda: published.append(site.publish_register().version))
    with site.store.write() as tx:
        lock(tx, DOCUMENTS)
        thread.start()
        thread.join(1.0)
        assert thread.is_alive() and published == [], "published while the lock was held"
    thread.join(60)
    assert published == [before + 1] and register_doc(site).version == before + 1


def test_a_publish_interrupted_after_its_file_was_written_never_reuses_the_version(
    tmp_path: Path, store_url: str
) -> None:
    """Ctrl-C (or a kill) between writing bundle/register.json and the commit: the file holds
    a version the store's counter rolled back from. The next publish must not sign another
    document with that version (gates holding the first would ignore the second)."""
    Site.init(tmp_path / "s", SITE, store=store_of(store_url)).close()
    register = tmp_path / "s" / "bundle" / REGISTER_FILE
    first = register.read_bytes()

    def clock() -> datetime:  # Ctrl-C at the first reading after the new file was written
        if register.read_bytes() != first:
            raise KeyboardInterrupt
        return datetime.now(UTC)

    with Site(tmp_path / "s", clock=clock) as site:
        with pytest.raises(KeyboardInterrupt):
            site.publish_register()
        written = json.loads(site.bundle_path(REGISTER_FILE).read_bytes())["version"]
        with site.store.read() as tx:
            counter = meta.get(tx, "register_version")
        assert int(counter or 0) == written - 1, "the transaction rolled back, the file stayed"
    with Site(tmp_path / "s") as site:
        assert site.publish_register().version == written + 1


# --- a site's life, on either store -------------------------------------------------------


def test_a_site_lives_on_its_store(site: Site, tmp_path: Path) -> None:
    """Passes from an imported register and by name, a revocation, a quarantine, a key
    rotation and retirement, each published: the bundle, the cards and the audit log say so,
    and the site reopened from its directory carries on."""
    register_file = tmp_path / "register.csv"
    register_file.write_text(
        "household_id,building,unit,room,grid,name,phone,role\n"
        "H1,3,2,501,g1,张三明,13812345678,resident\n"
        "H1,3,2,501,g1,李娜,13912345678,staff\n"
        "H2,4,1,101,g2,王五,13712345678,visitor\n",
        encoding="utf-8",
    )
    assert import_register(site, register_file).imported == 3
    assert site.registry.household("H1").building == "3"  # type: ignore[union-attr]
    assert site.issue_all() == {"issued": 2, "already_valid": 0, "over_cap": 0}
    by_name = site.issue_pass("2-1-101", "赵六")
    site.revoke_pass(by_name.pass_id, "lost")
    site.set_quarantine("H2", None)
    previous, new = site.rotate_key()
    site.retire_key(previous)

    doc = register_doc(site)
    assert doc.key_id == new
    held = doc.register
    assert [(p.household, p.room) for p in held.passes.values()] == [("H1", "3-2-501")] * 2
    assert held.revoked == {by_name.pass_id: "lost"}
    assert held.quarantine == {"H2": None}
    config = decode_document(
        site.bundle_path(CONFIG_FILE).read_bytes(), kind="config", site=SITE, trust_keys=trust(site)
    )
    assert config.key_id == new and config.root == site.trust_root() == 3  # gates: the root's keys
    assert decode_trust(site.bundle_path(TRUST_FILE).read_bytes())[1].keys() == {new}
    assert [c.display_name for c in cards_for(site)] == ["张*明", "李*"]
    with site.store.read() as tx:
        actions = [e.action for e in reversed(audit.entries(tx))]
    assert actions == [
        "register_import",
        "pass_issue_all",
        "pass_revoke",
        "household_quarantine",
        "key_rotate",
        "key_retire",
    ]
    summary = site.summary()
    with Site(site.dir) as again:
        assert again.summary() == summary
        assert again.issue_pass("H2", "王五", role="visitor").pass_id == by_name.pass_id + 1
        assert register_doc(again).version == int(summary["register"]) + 1  # type: ignore[call-overload]
