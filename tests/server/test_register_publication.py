"""The server sends the register as a delta of the snapshot gates hold, or as a new snapshot,
and refuses a change that would make either larger than gates accept (on both stores).

Large compounds: before, every change re-sent the whole register (~112 bytes a pass) to every
gate, and 30,000 passes were a 3.3 MB message the shipped broker refused."""

from __future__ import annotations

import base64
import json
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from protocol.documents import (
    FRESHNESS_FILE,
    MAX_DOCUMENT_BYTES,
    REGISTER_FILE,
    canonical_json,
    decode_document,
)
from protocol.register_documents import DELTA, DELTA_FILE, MAX_REGISTER_JSON_BYTES
from server.register import RegisterRow
from server.register_publication import DELTA_MAX_SHARE
from server.site import DocumentTooLarge, Site
from server.storage import households, meta, passes
from server.storage.passes import StoredPass
from tests.conftest import SITE, run_menwei
from tests.server.test_site import store_of


@pytest.fixture
def site(tmp_path: Path, store_url: str) -> Iterator[Site]:
    with Site.init(tmp_path / "server", SITE, store=store_of(store_url)) as s:
        yield s


def people(count: int, prefix: str = "1") -> list[RegisterRow]:
    """`count` residents, two to a household."""
    return [
        RegisterRow(
            row=i + 2,
            household=f"{prefix}-{i // 2 // 20 + 1}-{i // 2 % 20 + 101}",
            building=prefix,
            unit=str(i // 2 // 20 + 1),
            room=str(i // 2 % 20 + 101),
            grid="g1",
            name=f"住户{i}",
            phone=f"138{i:08d}",
            role="resident",
        )
        for i in range(count)
    ]


def bundle(site: Site) -> dict[str, bytes]:
    """The bundle's files (name → bytes)."""
    folder = site.bundle_path(REGISTER_FILE).parent
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


def doc_of(site: Site, name: str, kind: str) -> object:
    keys = {k.key_id: k for k in site.trust_keys()}
    return decode_document(
        site.bundle_path(name).read_bytes(), kind=kind, site=SITE, trust_keys=keys
    )


def test_one_pass_on_a_large_register_is_a_small_delta_the_statement_names(site: Site) -> None:
    site.registry.apply_import(people(400))
    assert site.issue_all()["issued"] == 400
    snapshot = bundle(site)[REGISTER_FILE]
    snapshot_version = site.published_versions()["register"]
    assert not site.bundle_path(DELTA_FILE).exists(), "issue-all: a new snapshot"

    issued = site.issue_pass("9-9-901", "新住户")

    files = bundle(site)
    assert files[REGISTER_FILE] == snapshot, "the snapshot is not sent again"
    delta = json.loads(files[DELTA_FILE])
    assert (delta["kind"], delta["body"]["base"]) == (DELTA, snapshot_version)
    assert delta["version"] == snapshot_version + 1 == site.published_versions()["register"]
    assert len(files[DELTA_FILE]) < 1000 < DELTA_MAX_SHARE * len(snapshot)
    statement = json.loads(files[FRESHNESS_FILE])
    assert statement["body"]["versions"]["register"] == delta["version"]
    published = site.published_register()
    assert published == site.register() and issued.pass_id in published.passes  # type: ignore[union-attr]


def test_deltas_grow_until_a_new_snapshot_is_cheaper(site: Site) -> None:
    """Each change re-sends the growing delta; once the deltas sent since the snapshot add up to
    about a snapshot (n * size / 2), the next register is a snapshot and the delta goes."""
    site.registry.apply_import(people(400))
    site.issue_all()
    start = site.published_versions()["register"]
    sizes: list[int] = []
    for i in range(200):
        site.issue_pass(f"8-1-{100 + i}", f"访客{i}", role="visitor")
        if not site.bundle_path(DELTA_FILE).exists():
            break
        sizes.append(len(site.bundle_path(DELTA_FILE).read_bytes()))
    else:
        pytest.fail("no new snapshot after 200 passes")
    cut = site.published_versions()["register"]
    assert cut == start + len(sizes) + 1
    snapshot_bytes = len(site.bundle_path(REGISTER_FILE).read_bytes())
    assert sizes == sorted(sizes) and len(sizes) >= 5, sizes
    assert sum(sizes) > snapshot_bytes / 2, (sum(sizes), snapshot_bytes)
    assert sum(sizes[:-1]) < 3 * snapshot_bytes, "not far past the point a snapshot is cheaper"
    assert site.published_register() == site.register()
    # The next change is a delta of the new snapshot.
    site.issue_pass("8-2-101", "访客乙", role="visitor")
    assert json.loads(site.bundle_path(DELTA_FILE).read_bytes())["body"]["base"] == cut


def test_a_new_trust_root_starts_a_new_snapshot_and_deltas_follow_it(site: Site) -> None:
    """Rotation and retirement make a new trust root and re-sign every document under it: the
    register as a new snapshot (the delta goes), signed by the new key; later changes are
    deltas of that snapshot, under that root."""
    site.registry.apply_import(people(400))
    site.issue_all()
    site.issue_pass("9-9-901", "新住户")
    assert site.bundle_path(DELTA_FILE).exists()
    previous, new = site.rotate_key()
    assert not site.bundle_path(DELTA_FILE).exists()
    snapshot = doc_of(site, REGISTER_FILE, "register")
    assert (snapshot.key_id, snapshot.root) == (new, site.trust_root())  # type: ignore[attr-defined]
    site.issue_pass("9-9-902", "又一户")
    delta = doc_of(site, DELTA_FILE, DELTA)
    assert (delta.key_id, delta.root) == (new, site.trust_root())  # type: ignore[attr-defined]
    assert delta.body["base"] == snapshot.version  # type: ignore[attr-defined]
    site.retire_key(previous)
    assert not site.bundle_path(DELTA_FILE).exists()
    assert doc_of(site, REGISTER_FILE, "register").root == site.trust_root()  # type: ignore[attr-defined]
    assert site.published_register() == site.register()


# --- too large: refused, and the change with it ----------------------------------------------


def incompressible(n_bytes: int) -> str:
    return base64.b64encode(os.urandom(n_bytes * 3 // 4)).decode()


def fill(site: Site, rooms: list[str]) -> None:
    """Passes with these rooms, stored without publishing (fast), then one snapshot."""
    with site.store.write() as tx:
        first = meta.next_counter(tx, "pass_id", count=len(rooms))
        passes.add_all(
            tx,
            [
                StoredPass(first + i, f"7-7-{i}", "孙八", room, "staff", 0, 2**32 - 1, 1, "qr", "t")
                for i, room in enumerate(rooms)
            ],
        )
    site.publish_register(snapshot=True)


def counters(site: Site) -> dict[str, str | None]:
    with site.store.read() as tx:
        return {k: meta.get(tx, k) for k in ("pass_id", "register_version", "freshness_version")}


def test_a_pass_that_would_make_the_register_too_large_to_publish_is_not_issued(
    site: Site,
) -> None:
    """The register is compressed: random room texts (which do not compress) make it ~8.3 MB
    with 82 passes. One more pass with such a room would pass MAX_DOCUMENT_BYTES: refused with
    the size and the limit, no pass stored, nothing written to the bundle."""
    fill(site, [incompressible(100_000)] * 82)
    assert len(bundle(site)[REGISTER_FILE]) > MAX_DOCUMENT_BYTES - 100_000
    before, numbers = bundle(site), counters(site)

    with pytest.raises(DocumentTooLarge) as refused:
        site.issue_pass("6-6-601", "周九", room=incompressible(120_000))

    message = str(refused.value)
    assert f"over the {MAX_DOCUMENT_BYTES} bytes gates accept" in message
    assert "nothing changed" in message
    size = int(message.split("-byte document")[0].rsplit(" ", 1)[1])
    assert size > MAX_DOCUMENT_BYTES
    assert site.registry.passes("6-6-601") == []
    assert site.registry.household("6-6-601") is None
    assert (bundle(site), counters(site)) == (before, numbers)
    # A pass that fits is issued as before, as a delta.
    site.issue_pass("6-6-602", "吴十")
    assert site.bundle_path(DELTA_FILE).exists()


def test_issue_all_that_would_pass_what_a_gate_decompresses_issues_nothing(site: Site) -> None:
    """A register within 2,500 bytes of MAX_REGISTER_JSON_BYTES (rooms of "x": they compress
    to almost nothing, so this limit is the one reached); 40 more passes would pass it."""
    fill(site, ["x" * 2**20] * 31)
    left = MAX_REGISTER_JSON_BYTES - len(canonical_json(site.register().to_json()))
    fill(site, ["x" * (left - 2_200)])
    assert MAX_REGISTER_JSON_BYTES - len(canonical_json(site.register().to_json())) < 2_500
    site.registry.apply_import(people(40))
    before, numbers = bundle(site), counters(site)

    with pytest.raises(DocumentTooLarge, match=f"over the {MAX_REGISTER_JSON_BYTES} bytes a gate"):
        site.issue_all()

    assert all(site.registry.passes(r.household) == [] for r in people(40))
    assert (bundle(site), counters(site)) == (before, numbers)


def test_revoking_and_quarantining_publish_in_the_same_transaction(site: Site) -> None:
    """A revocation the register cannot carry would be a revocation gates never learn: it is
    refused with the register (here: a register already over the limit, as a server directory
    of an earlier version could hold)."""
    fill(site, [incompressible(100_000)] * 70)
    huge = incompressible(2_000_000)
    with site.store.write() as tx:
        passes.add(tx, StoredPass(9000, "7-8-1", "钱七", huge, "staff", 0, 2**32 - 1, 1, "q", "t"))
    with pytest.raises(DocumentTooLarge):
        site.revoke_pass(1, "lost")
    with pytest.raises(DocumentTooLarge):
        site.set_quarantine("7-7-1", None)
    with site.store.read() as tx:
        (first,) = [p for p in passes.find(tx, household="7-7-0")]
        assert first.revoked_at is None
        assert households.quarantined(tx) == []


def test_the_command_says_why_and_exits_non_zero(site: Site) -> None:
    fill(site, [incompressible(100_000)] * 82)
    room = incompressible(120_000)  # under the 128 KiB Linux allows one argument
    proc = run_menwei(
        *("pass", "issue", str(site.dir), "--household", "6-6-601", "--name", "周九"),
        *("--room", room),
        check=False,
    )
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.startswith("menwei: error: the register of 83 passes would be a ")
    assert f"over the {MAX_DOCUMENT_BYTES} bytes gates accept" in proc.stderr
    assert "Traceback" not in proc.stderr
