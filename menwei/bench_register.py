"""Register benchmark: a large compound's register from the server's store to a gate.

A fresh `Site` (SQLite in a temporary folder) imports a register of households
of 1 to 4 people (household slugs and rooms like "12-3-1502", Chinese names,
~1 % staff), `issue_all` signs a pass for every one of them (timed), a few
visitors get a pass, ~1 % of the passes are revoked and ~1 % of the households
are put under home quarantine, and the register is published as a new
snapshot (timed). Then one more pass is issued (what one change costs the
gates: a delta), and a gate verifies and applies the provisioning bundle
(`edge.provision.read_bundle`, what `gate init` and a running gate do with the
same documents), timed and with its peak of Python memory (tracemalloc).

The CLI (`menwei bench register`) calls `run_register_bench`.
"""

from __future__ import annotations

import random
import sys
import tempfile
import time
import tracemalloc
import zlib
from datetime import UTC, datetime
from pathlib import Path

from edge.provision import read_bundle
from menwei.residents import GIVEN, SURNAMES
from protocol.documents import BUNDLE_DIR, MAX_DOCUMENT_BYTES, canonical_json
from server.register import RegisterRow, place_label
from server.site import Site
from server.storage import households, passes

SITE = "bench-site"
REVOKED_SHARE = 0.01
QUARANTINED_SHARE = 0.01
VISITOR_SHARE = 0.005
STAFF_SHARE = 0.01


def _people(count: int, rng: random.Random) -> list[RegisterRow]:
    """`count` registered people in households of 1-4, in buildings of 4 units x 33 floors."""
    rows: list[RegisterRow] = []
    n = 0
    while len(rows) < count:
        n += 1
        building, rest = divmod(n, 4 * 33 * 4)
        unit, rest = divmod(rest, 33 * 4)
        floor, flat = divmod(rest, 4)
        room = f"{floor + 1}{flat + 1:02d}"
        household = place_label(str(building + 1), str(unit + 1), room)
        for _ in range(min(rng.choice((1, 2, 2, 3, 3, 4)), count - len(rows))):
            given = "".join(rng.choice(GIVEN) for _ in range(rng.choice((1, 2, 2))))
            rows.append(
                RegisterRow(
                    row=len(rows) + 2,
                    household=household,
                    building=str(building + 1),
                    unit=str(unit + 1),
                    room=room,
                    grid=f"g{building % 9 + 1}",
                    name=rng.choice(SURNAMES) + given,
                    phone=f"13{rng.randrange(10**9):09d}",
                    role="staff" if rng.random() < STAFF_SHARE else "resident",
                )
            )
    return rows


def _register_documents(bundle: Path) -> dict[str, tuple[float, int]]:
    """Bundle files holding the register (the snapshot and any delta): name → (mtime, bytes)."""
    return {
        p.name: (p.stat().st_mtime, p.stat().st_size) for p in sorted(bundle.glob("register*.json"))
    }


def _apply_bundle(bundle: Path) -> tuple[float, float, int]:
    """A gate verifying and applying the bundle: (seconds, peak MiB of Python memory, version)."""
    started = time.perf_counter()
    know, _ = read_bundle(bundle)
    seconds = time.perf_counter() - started
    tracemalloc.start()
    read_bundle(bundle)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    return seconds, peak / 2**20, know.register_version


def run_register_bench(count: int, seed: int = 0) -> dict[str, object]:
    """Build a register of about `count` passes and measure it; see the module doc."""
    if count < 1:
        raise ValueError("--passes must be at least 1")
    rng = random.Random(seed)
    with tempfile.TemporaryDirectory(prefix="menwei-bench-register-") as tmp:
        work = Path(tmp)
        with Site.init(work / "server", SITE) as site:
            bundle = work / "server" / BUNDLE_DIR
            visitors = int(count * VISITOR_SHARE)
            cap = site.published_policy().policy.passes_per_household_max
            people = _people(count - visitors, rng)
            site.registry.apply_import(people)
            print(f"issuing {len(people)} passes...", file=sys.stderr)
            started = time.perf_counter()
            counts = site.issue_all()
            issue_all_s = time.perf_counter() - started
            # Hosts below the cap: issue_pass refuses even a visitor's pass to a full household.
            sizes: dict[str, int] = {}
            for person in people:
                sizes[person.household] = sizes.get(person.household, 0) + 1
            hosts = sorted(h for h, n in sizes.items() if n < cap)
            for v in range(visitors):
                host = rng.choice(hosts)
                site.issue_pass(host, f"访客{v}", "visitor", room=host, publish=False)
            with site.store.write() as tx:
                held = passes.find(tx, unrevoked=True)
                now = datetime.now(UTC).isoformat()
                for p in rng.sample(held, int(len(held) * REVOKED_SHARE)):
                    passes.revoke(tx, p.pass_id, rng.choice(("挂失", "迁出", "lost")), now)
                homes = sorted({p.household for p in people})
                for h in rng.sample(homes, int(len(homes) * QUARANTINED_SHARE)):
                    households.set_quarantine(tx, h, True, None, now)
            started = time.perf_counter()
            site.publish_register(snapshot=True)
            publish_s = time.perf_counter() - started
            register = site.register()
            raw = canonical_json(register.to_json())
            published = _register_documents(bundle)
            apply_s, peak_mb, version = _apply_bundle(bundle)

            before = _register_documents(bundle)
            host = rng.choice(hosts)
            started = time.perf_counter()
            site.issue_pass(host, "新访客", "visitor", room=host)
            one_pass_s = time.perf_counter() - started
            after = _register_documents(bundle)
            changed = {n: s for n, (m, s) in after.items() if before.get(n, (None,))[0] != m}
            apply_after_s, _, version_after = _apply_bundle(bundle)
    return {
        "passes": len(register.passes),
        "revoked": len(register.revoked),
        "quarantined": len(register.quarantine),
        "issue_all": {
            "people": sum(counts.values()),  # rows of one household with the same name are one
            **counts,
            "seconds": round(issue_all_s, 2),
            "ms_per_pass": round(1000 * issue_all_s / max(1, counts["issued"]), 3),
        },
        "register_json_bytes": len(raw),
        "register_zlib_bytes": len(zlib.compress(raw)),
        "published": {
            "version": version,
            "publish_s": round(publish_s, 3),
            "bytes": {n: s for n, (_, s) in published.items()},
        },
        "one_pass_issued": {
            "version": version_after,
            "seconds": round(one_pass_s, 3),
            "bytes": changed,
        },
        "max_document_bytes": MAX_DOCUMENT_BYTES,
        "fits": all(s <= MAX_DOCUMENT_BYTES for _, s in after.values()),
        "gate": {
            "apply_s": round(apply_s, 3),
            "peak_mib": round(peak_mb, 1),
            "apply_after_one_pass_s": round(apply_after_s, 3),
        },
    }
