"""Site databases made before the storage layer upgrade in place, with nothing lost.

`tests/data/server-db-2026-11.sqlite` is a site's server.db as the code of commit ccc2fbb
(the last before server/storage/) wrote it, through that code's own entry points: a register
import, passes (visitors', a revoked one, a household under quarantine), three gates' events
with times in +08:00 and in UTC, a gate that began a new epoch, one that reused seqs and sent
renumbered events (event_aliases), replay conflicts, alerts (some acknowledged), gate
statuses and outages, an operator with a session and failed logins, audit rows, rejected
messages. `tests/data/make_legacy_db.py` made it (run against ccc2fbb; its docstring says
how) and wrote beside it the site's signing key 2, with which the upgraded site signs.

Every test opens a copy: the state before the upgrade is read with plain sqlite3, and so
is the state after, so that what is compared does not depend on the code under test.
"""

from __future__ import annotations

import calendar
import json
import os
import shutil
import sqlite3
import subprocess
import sys
from collections import Counter
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from menwei.mosquitto import MosquittoBroker
from protocol import topics
from protocol.broker import parse_broker
from protocol.events import Ack, encode_batch
from server.collector import Collector
from server.site import Site
from server.storage import Store
from server.storage.migrate import HEAD, revision
from tests import collected
from tests.conftest import REPO
from tests.e2e.helpers import Message, MqttWatcher, make_event, mqtt_client, publish, wait_until
from tests.server.test_storage_schema import schema_differences

DATA = Path(__file__).resolve().parents[1] / "data"
LEGACY = DATA / "server-db-2026-11.sqlite"
KEY = DATA / "server-db-2026-11-key-2.pem"
SLUG = "sunny-garden"
MADE_AT = datetime(2026, 11, 29, 17, 30, tzinfo=UTC)
"""Shortly after the database was made: the site's clock in these tests, so that what the
register holds does not depend on the day the tests run."""
EAST_OLD, EAST_NEW = "", "3e5d0c7a9b1f2e48"
NORTH = "9f3c2a1b7d5e4f60"
WEST_LOST, WEST_NEW = "a1b2c3d4e5f60718", "c0ffee00d15ea5e5"
NEW_TABLES = {
    "alembic_version",
    "household_days",
    "job_runs",
    "login_challenges",
    "recovery_codes",
    "rejection_counts",
    "roots",
}

Dump = dict[str, tuple[tuple[str, ...], list[tuple[Any, ...]]]]


def dump(db: Path) -> Dump:
    """Every table of `db`: its columns and its rows, read with plain sqlite3."""
    conn = sqlite3.connect(db)
    try:
        names = [
            str(n)
            for (n,) in conn.execute(
                "SELECT name FROM sqlite_master WHERE type = 'table'"
                " AND name NOT LIKE 'sqlite_%' ORDER BY name"
            )
        ]
        return {
            name: (
                tuple(str(c[1]) for c in conn.execute(f"PRAGMA table_info([{name}])")),
                conn.execute(f"SELECT * FROM [{name}]").fetchall(),
            )
            for name in names
        }
    finally:
        conn.close()


def rows(d: Dump, table: str, *columns: str) -> list[dict[str, Any]]:
    names, values = d[table]
    return [
        {c: v for c, v in zip(names, row, strict=True) if not columns or c in columns}
        for row in values
    ]


def assert_nothing_lost(before: Dump, after: Dump, grown: frozenset[str] = frozenset()) -> None:
    """Every table of `before` is in `after` with the same rows: the same count, and the
    same values in every column it had (compared as multisets: row order is not data).
    Tables in `grown` may have gained rows, never lost or changed one."""
    assert set(before) <= set(after)
    for table, (columns, old) in before.items():
        new_columns, new = after[table]
        assert set(columns) <= set(new_columns), table
        index = [new_columns.index(c) for c in columns]
        kept = Counter(tuple(r[i] for i in index) for r in new)
        if table in grown:
            assert not Counter(old) - kept, table
        else:
            assert len(new) == len(old), table
            assert kept == Counter(old), table


def upgrade(db: Path) -> tuple[Dump, Dump]:
    """`db` before, opened with today's Store (which migrates it), and after."""
    before = dump(db)
    with Store(f"sqlite:///{db}") as store:
        assert revision(store) == HEAD
        assert schema_differences(store) == []
    return before, dump(db)


def instant_us(at: str) -> int:
    """µs since the Unix epoch of an ISO 8601 time with an offset, computed here without
    server.storage.times (calendar.timegm of the UTC time tuple)."""
    t = datetime.fromisoformat(at)
    return calendar.timegm(t.utctimetuple()) * 1_000_000 + t.microsecond


@pytest.fixture
def legacy(tmp_path: Path) -> Path:
    """A copy of the legacy server.db in a server directory of its own."""
    directory = tmp_path / "server"
    directory.mkdir()
    shutil.copyfile(LEGACY, directory / "server.db")
    return directory / "server.db"


def test_the_legacy_database_is_what_the_old_code_wrote(legacy: Path) -> None:
    """The fixture holds every case below (a regenerated one must too)."""
    d = dump(legacy)
    assert "alembic_version" not in d
    assert len(d["_sqlite_migrations"][1]) == 10
    counts = {t: len(r) for t, (_c, r) in d.items()}
    assert counts["events"] == 87 and counts["event_aliases"] == 2
    assert counts["passes"] == 18 and counts["visitors"] == 2 and counts["persons"] == 14
    assert counts["sessions"] == 1 and counts["login_failures"] == 3
    assert counts["rejected_messages"] == 3 and counts["gate_outages"] == 4
    kinds = Counter(r["kind"] for r in rows(d, "conflicts"))
    assert kinds == {
        "daily_exits_over_quota": 6,
        "seq_reused": 3,
        "household_over_quota": 1,
        "pass_out_twice": 1,
        "revoked_pass_used": 1,
        "quarantined_exit": 1,
    }
    epochs = Counter((r["gate"], r["epoch"]) for r in rows(d, "events"))
    assert epochs == {
        ("east", EAST_OLD): 29,
        ("east", EAST_NEW): 6,
        ("north", NORTH): 9,
        ("west", WEST_LOST): 31,
        ("west", WEST_NEW): 12,
    }
    assert any(r["acked_at"] for r in rows(d, "alerts"))
    assert any(r["acked_at"] is None for r in rows(d, "alerts"))


def test_a_site_database_from_before_the_storage_layer_upgrades_with_nothing_lost(
    legacy: Path,
) -> None:
    before, after = upgrade(legacy)
    assert_nothing_lost(before, after)
    assert set(after) - set(before) == NEW_TABLES
    assert rows(after, "alembic_version") == [{"version_num": HEAD}]
    # The refused messages already stored are counted, each its own sample (r0004).
    counted = rows(after, "rejection_counts")
    assert sum(r["refused"] for r in counted) == sum(r["sampled"] for r in counted) == 3
    # Opening it again changes nothing.
    with Store(f"sqlite:///{legacy}") as store:
        assert revision(store) == HEAD
    assert dump(legacy) == after


def test_event_instants_roles_and_conflict_epochs_are_filled_in(legacy: Path) -> None:
    _before, after = upgrade(legacy)
    events = rows(after, "events")
    for e in events:
        assert e["at_us"] == instant_us(e["at"]), e
        assert e["role"] == json.loads(e["body"]).get("role"), e
    at_us = {(e["gate"], e["epoch"], e["seq"]): e["at_us"] for e in events}
    # Worked by hand: 2026-01-01T00:00Z is 1767225600 s; 2026-11-30 is 333 days later.
    assert at_us[("north", NORTH, 1)] == 1_796_054_400_250_000  # 2026-12-01T00:00:00.250+08:00
    assert at_us[("north", NORTH, 2)] == 1_796_079_600_250_000  # 2026-12-01T07:00:00.250+08:00
    assert at_us[("east", EAST_OLD, 29)] == 1_795_967_999_000_000  # 2026-11-29T23:59:59+08:00
    assert at_us[("west", WEST_LOST, 31)] == 1_796_099_400_125_000  # 2026-12-01T04:30:00.125Z
    # Texts with different offsets do not sort as instants: at_us does.
    by_text = sorted(events, key=lambda e: (e["at"], e["gate"], e["seq"]))
    by_instant = sorted(events, key=lambda e: (e["at_us"], e["gate"], e["seq"]))
    assert by_text != by_instant
    assert [e["at_us"] for e in by_instant] == sorted(instant_us(e["at"]) for e in events)
    roles = Counter(e["role"] for e in events)
    assert roles["resident"] > 0 and roles["staff"] > 0 and roles["visitor"] > 0
    assert {e["role"] for e in events if e["kind"] != "decision"} == {None}
    conflicts = rows(after, "conflicts")
    assert {(c["kind"], c["epoch"]) for c in conflicts if c["body"] is not None} == {
        ("seq_reused", WEST_LOST)
    }
    assert all(c["epoch"] is None for c in conflicts if c["body"] is None)


OPEN_WHEN_TOLD = """
import sys, time
from pathlib import Path
from server.storage import Store
ready, go, url = Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3]
ready.touch()
while not go.exists():
    time.sleep(0.001)
Store(url).close()
"""


def open_at_once(url: str, tmp_path: Path, processes: int = 3) -> None:
    """`processes` processes open the store at `url` at the same moment (as a collector, its
    dashboard and an operator's command may after an upgrade of Menwei); each must succeed."""
    go = tmp_path / "go"
    ready = [tmp_path / f"ready-{n}" for n in range(processes)]
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", OPEN_WHEN_TOLD, str(r), str(go), url],
            cwd=REPO,
            env={**os.environ, "PYTHONPATH": str(REPO)},
            stderr=subprocess.PIPE,
            text=True,
        )
        for r in ready
    ]
    try:
        wait_until(lambda: all(r.exists() for r in ready), 120, "processes not ready")
        go.touch()
        for p in procs:
            _out, err = p.communicate(timeout=120)
            assert p.returncode == 0, err
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()


def test_processes_opening_a_legacy_database_at_once_upgrade_it_once(
    legacy: Path, tmp_path: Path
) -> None:
    before = dump(legacy)
    open_at_once(f"sqlite:///{legacy}", tmp_path)
    after = dump(legacy)
    assert_nothing_lost(before, after)
    assert rows(after, "alembic_version") == [{"version_num": HEAD}]
    with Store(f"sqlite:///{legacy}") as store:
        assert schema_differences(store) == []


def test_processes_opening_a_new_store_at_once_make_it_once(store_url: str, tmp_path: Path) -> None:
    open_at_once(store_url, tmp_path)
    with Store(store_url) as store:
        assert revision(store) == HEAD
        assert schema_differences(store) == []


@pytest.mark.parametrize(
    "missing",
    [
        {"menwei-accounts": ("operators", "sessions", "login_failures")},
        {
            "menwei-accounts": ("operators", "sessions", "login_failures"),
            "menwei-visitors": ("visitors",),
        },
    ],
    ids=["before-accounts", "before-visitors-and-accounts"],
)
def test_a_database_with_only_some_legacy_sets_upgrades_too(
    legacy: Path, missing: dict[str, tuple[str, ...]]
) -> None:
    """A site made before the dashboard's accounts (and visitors) existed."""
    conn = sqlite3.connect(legacy)
    with conn:
        for migration_set, tables in missing.items():
            for table in tables:
                conn.execute(f"DROP TABLE [{table}]")
            conn.execute("DELETE FROM _sqlite_migrations WHERE migration_set = ?", [migration_set])
    conn.close()
    before, after = upgrade(legacy)
    assert_nothing_lost(before, after, grown=frozenset({"_sqlite_migrations"}))
    made = {t for tables in missing.values() for t in tables}
    assert set(after) - set(before) == NEW_TABLES | made
    assert all(after[t][1] == [] for t in made)
    sets = Counter(r["migration_set"] for r in rows(after, "_sqlite_migrations"))
    assert all(sets[s] == 1 for s in missing)


def acked(seq: int) -> Callable[[Message], bool]:
    return lambda m: Ack.decode(m.payload).acked_seq == seq


@pytest.fixture
def upgraded(legacy: Path) -> Iterator[Site]:
    """The legacy server.db in a server directory with a server.toml of before the storage
    layer (no [store]: the SQLite file beside it) and its signing key, opened as a Site whose
    clock is just after the database was made."""
    directory = legacy.parent
    (directory / "server.toml").write_text(
        f'[server]\nsite = "{SLUG}"\ntimezone = "Asia/Shanghai"\n', encoding="utf-8"
    )
    (directory / "keys").mkdir(mode=0o700)
    shutil.copyfile(KEY, directory / "keys" / "site-key-2.pem")
    (directory / "keys" / "site-key-2.pem").chmod(0o600)
    with Site(directory, clock=lambda: MADE_AT) as site:
        yield site


def test_the_upgraded_site_reads_its_history_and_issues_passes(upgraded: Site) -> None:
    site = upgraded
    register = site.register()
    assert sorted(register.passes) == [*range(1, 16), 17, 18]
    assert register.revoked == {16: "丢失 / card lost"}
    assert list(register.quarantine) == ["H108"]
    assert [k.key_id for k in site.trust_keys()] == [2]  # key 1 was retired
    # What the collector reads: every event as the gate sent it, gates, conflicts.
    bodies = Counter(json.dumps(e, sort_keys=True) for e in collected.events(site.store))
    stored = Counter(
        json.dumps(json.loads(r["body"]), sort_keys=True)
        for r in rows(dump(site.dir / "server.db"), "events")
    )
    assert sum(bodies.values()) == 87 and bodies == stored
    assert {g["gate"]: g["contiguous_seq"] for g in collected.gates(site.store)} == {
        "east": 6,
        "north": 9,
        "west": 14,
    }
    assert len(collected.conflicts(site.store)) == 13
    # The counters go on where the old code left them: no pass id or version reused.
    assert site.publish_config(site.config.policy).version == 4
    issued = site.issue_pass("H106", "新住户", room="2-2-301")
    assert issued.pass_id == 19
    assert 19 in site.register().passes


def test_the_collector_goes_on_from_the_upgraded_history(
    upgraded: Site, shared_broker: MosquittoBroker
) -> None:
    """New events after the upgrade: acknowledged from the old contiguous seqs (west's
    through its renumbered events' aliases), and checked for conflicts against passages
    stored before it (H101's member out through west at 12:30, stored as UTC text). The
    collector's site clock reads that day (it refuses events dated a day ahead of it)."""
    upgraded.publish_config(upgraded.config.policy)
    site = Site(upgraded.dir, clock=lambda: datetime(2026, 12, 1, 5, 0, tzinfo=UTC))
    north_out = make_event(
        SLUG,
        "north",
        10,
        epoch=NORTH,
        at="2026-12-01T12:40:00.250+08:00",
        pass_id=2,
        household="H101",
        direction="out",
    )
    west_in = make_event(
        SLUG,
        "west",
        15,
        epoch=WEST_NEW,
        at="2026-12-01T12:45:00.125+00:00",
        pass_id=6,
        household="H103",
        direction="in",
    )
    acks = [topics.ack(SLUG, "north"), topics.ack(SLUG, "west")]
    with (
        Collector(site, parse_broker(shared_broker.url), client_id="upgrade-test") as collector,
        MqttWatcher(shared_broker.url, *acks) as watcher,
    ):
        collector.start()
        wait_until(collector.connected.is_set, 30, "collector did not connect")
        gate = mqtt_client(shared_broker.url)
        try:
            publish(gate, topics.events(SLUG, "north"), encode_batch("north", [north_out]))
            publish(gate, topics.events(SLUG, "west"), encode_batch("west", [west_in]))
            for topic, seq in zip(acks, (10, 15), strict=True):
                watcher.wait_for(topic, acked(seq), 30, f"ack of seq {seq}")
        finally:
            gate.disconnect()
            gate.loop_stop()

        def found() -> set[str]:
            return {
                c["kind"]
                for c in collected.conflicts(site.store)
                if (c["gate"], c["seq"]) == ("north", 10)
            }

        wait_until(lambda: "household_over_quota" in found(), 30, "no conflict found")
    assert found() == {"household_over_quota", "daily_exits_over_quota"}
    assert sum(1 for _ in collected.events(site.store)) == 89
    site.close()


def test_a_site_and_its_gates_from_before_trust_roots_carry_on(
    upgraded: Site, tmp_path: Path
) -> None:
    """The legacy site has no trust root (key 1 retired, key 2 signs). Its bundle and its
    gate as the old code left them: a trust file of key 1 (provisioned before the rotation),
    key 2 learnt from a config, config and register in the old format. Upgraded in place,
    the gate keeps
    deciding at root 0; the site's first publication makes root 1 of its active keys, signed
    by the oldest (key 2), and the gate follows it and then holds only root 1's keys."""
    from edge.config import load_config
    from edge.decision import GateState, Now, Scan, Temperature, decide
    from edge.provision import load_knowledge, render_gate_toml
    from edge.store import GateStore
    from edge.trust import receive, save_received
    from protocol.documents import TRUST_FILE, parse_document, sign_document
    from server.keys import load_key

    site = upgraded
    assert site.trust_root() == 0
    _active, every = site.known_keys()
    key_2 = load_key(site.dir, 2)
    gate = tmp_path / "gate"
    gate.mkdir()
    (gate / "gate.toml").write_text(
        render_gate_toml(SLUG, "east", "in", True, "mqtt://127.0.0.1:1883"), "utf-8"
    )
    (gate / "stage").mkdir()
    legacy_trust = {"site": SLUG, "trust_keys": [every[1].to_json()]}
    (gate / TRUST_FILE).write_text(json.dumps(legacy_trust), "utf-8")
    issued = datetime.now(UTC).isoformat(timespec="milliseconds")
    learnt = [every[2].to_json()]
    config = {"policy": site.config.policy.to_json(), "trust_keys": learnt}
    old_config = sign_document("config", SLUG, 3, issued, config, 2, key_2)
    old_register = sign_document("register", SLUG, 9, issued, site.register().to_json(), 2, key_2)
    assert b'"root"' not in old_config.encode()  # the old format
    (site.dir / "bundle").mkdir()
    (site.dir / "bundle" / TRUST_FILE).write_text(json.dumps(legacy_trust), "utf-8")
    for doc in (old_config, old_register):
        site.bundle_path(f"{doc.kind}.json").write_bytes(doc.encode())
    with GateStore(gate / "gate.db") as store:
        store.save_document("config", 3, issued, old_config.encode(), learnt_keys=learnt)
        store.save_document("register", 9, issued, old_register.encode())

    def knowledge():  # type: ignore[no-untyped-def]
        config = load_config(gate / "gate.toml")
        with GateStore(config.db_path) as store:
            return load_knowledge(config, store)

    resident = site.issue_pass("H106", "新住户", room="2-2-301", publish=False)  # key 2
    know = knowledge()
    assert (know.trust_root().version, know.versions()) == (0, {"config": 3, "register": 9})
    now = Now(datetime.now(UTC), trusted=True)
    assert decide(Scan(resident.qr, "in"), Temperature(36.5), GateState(), know, now).reason == "ok"

    assert site.publish_freshness() is not None
    assert site.trust_root() == 1
    root_1 = parse_document(site.bundle_path("config.json").read_bytes(), kind="config", site=SLUG)
    assert (root_1.root, root_1.chain[0].key_id, root_1.chain[0].root) == (1, 2, 0)
    assert [k["key_id"] for k in root_1.chain[0].body["keys"]] == [2]
    assert json.loads(site.bundle_path(TRUST_FILE).read_bytes())["root"] == 1
    with GateStore(gate / "gate.db") as store:
        for kind in ("config", "register", "freshness"):
            raw = site.bundle_path(f"{kind}.json").read_bytes()
            got = receive(know, kind, raw)
            save_received(store, got, raw, datetime.now(UTC))
            know = got.know
    again = knowledge()
    assert again.trust_root().version == 1 and sorted(again.trust_keys) == [2]
    assert again.versions() == site.published_versions() and again.missing() == []
    assert (
        decide(Scan(resident.qr, "in"), Temperature(36.5), GateState(), again, now).reason == "ok"
    )
