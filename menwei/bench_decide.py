"""Decision-core benchmark: `decide` + `advance` on scripted scans, and a bare verify loop.

The gate's knowledge is the real thing: a fresh `Site` issues passes (valid,
expired, a visitor's, one revoked), a gate is provisioned from its bundle and
`load_knowledge` reads it back, as the daemon does. Forged passes are signed
with a key the site never trusted (same key id: bad_signature); a few scans
are not passes at all (malformed). The scripted clock starts at 10:00 local
time (inside the default outing window) and moves 1 s per scan; residents go
out and in, some with a fever reading or none, so the household rules, the
fever recheck and anti-passback all run.

The CLI (`menwei bench decide`) calls `run_decide_bench`.
"""

from __future__ import annotations

import json
import random
import statistics
import sys
import tempfile
import time
from datetime import datetime, timedelta
from pathlib import Path
from typing import Literal

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from edge.config import load_config
from edge.decision import GateState, Now, Scan, Temperature, advance, decide
from edge.knowledge import Knowledge
from edge.provision import load_knowledge, provision
from edge.store import GateStore
from protocol.errors import PassError
from protocol.passes import PassPayload, Role, sign_pass, verify_pass
from server.site import Site

SITE = "bench-site"
HOUSEHOLDS = 40

Script = list[tuple[Scan, Temperature | None]]


def _site_and_passes(work: Path) -> tuple[Knowledge, dict[str, list[str]], datetime]:
    """Issue the passes, provision a gate, and return its knowledge, the QR texts by kind and
    the scripted start time."""
    kinds: dict[str, list[str]] = {"valid": [], "expired": [], "forged": [], "visitor": []}
    with Site.init(work / "server", SITE) as site:
        tz = site.config.tz
        today = datetime.now(tz).replace(hour=10, minute=0, second=0, microsecond=0)
        since = today - timedelta(days=2)
        for h in range(HOUSEHOLDS):
            household = f"{1 + h // 10}-1-{101 + h % 10}"
            for member in range(2):
                issued = site.issue_pass(household, f"住户{h}-{member}", valid_from=since)
                kinds["valid"].append(issued.qr)
            # an old pass that ran out yesterday (the household's cap counts valid ones only)
            old = site.issue_pass(
                household,
                f"旧证{h}",
                valid_from=since - timedelta(days=30),
                valid_until=today - timedelta(days=1),
            )
            kinds["expired"].append(old.qr)
        for v in range(5):
            kinds["visitor"].append(
                site.issue_pass("9-9-999", f"访客{v}", role="visitor", valid_from=since).qr
            )
        revoked = site.issue_pass("9-9-998", "挂失", valid_from=since)
        site.revoke_pass(revoked.pass_id, "lost")
        kinds["revoked"] = [revoked.qr]
        forger = Ed25519PrivateKey.generate()
        key_id = site.active_key_id()
        for h in range(10):
            payload = PassPayload(
                key_id,
                100_000 + h,
                SITE,
                f"{1 + h}-1-101",
                Role.RESIDENT,
                int(since.timestamp()),
                int((today + timedelta(days=30)).timestamp()),
            )
            kinds["forged"].append(sign_pass(payload, forger))
    gate_dir = work / "gate"
    provision(gate_dir, work / "server", "bench-gate", "both", simulated=True)
    config = load_config(gate_dir / "gate.toml")
    with GateStore(gate_dir / "gate.db") as store:
        know = load_knowledge(config, store)
    return know, kinds, today


def _script(n: int, kinds: dict[str, list[str]], seed: int) -> Script:
    """N scans: 80 % valid residents (direction alternating per pass, 8 % of entries with a
    fever reading, 2 % without a reading), the rest expired, forged, visitor, revoked and
    malformed."""
    rng = random.Random(seed)
    is_out: dict[str, bool] = {}
    script: Script = []
    for _ in range(n):
        r = rng.random()
        if r < 0.80:
            text = rng.choice(kinds["valid"])
        elif r < 0.88:
            text = rng.choice(kinds["expired"])
        elif r < 0.94:
            text = rng.choice(kinds["forged"])
        elif r < 0.97:
            text = rng.choice(kinds["visitor"])
        elif r < 0.98:
            text = kinds["revoked"][0]
        else:
            text = "MW1:NOT-A-PASS" if rng.random() < 0.5 else "https://example.com/x"
        direction: Literal["in", "out"] = "in" if is_out.get(text, False) else "out"
        is_out[text] = not is_out.get(text, False)
        temperature: Temperature | None = None
        if direction == "in":
            t = rng.random()
            if t < 0.08:
                temperature = Temperature(38.2)
            elif t < 0.10:
                temperature = Temperature(None, "no_reading")
            else:
                temperature = Temperature(round(rng.uniform(36.0, 37.0), 1))
        script.append((Scan(text, direction), temperature))
    return script


def run_decide_bench(scans: int, seed: int = 0) -> dict[str, object]:
    """Time `decide` (and the state update `advance`) over `scans` scripted scans, then a bare
    `verify_pass` loop over the same QR texts; see the module doc."""
    if scans < 1:
        raise ValueError("--scans must be positive")
    with tempfile.TemporaryDirectory(prefix="menwei-bench-decide-") as tmp:
        know, kinds, start = _site_and_passes(Path(tmp))
    script = _script(scans, kinds, seed)
    trust = dict(know.trust_keys)
    state = GateState()
    decide_ns: list[int] = []
    advance_ns = 0
    reasons: dict[str, int] = {}
    clock = time.perf_counter_ns
    t_all = clock()
    for i, (scan, temperature) in enumerate(script):
        now = Now(start + timedelta(seconds=i), True)
        t0 = clock()
        d = decide(scan, temperature, state, know, now)
        t1 = clock()
        state = advance(state, d, now, policy=know.policy, uuid=f"bench-{i}")
        advance_ns += clock() - t1
        decide_ns.append(t1 - t0)
        reasons[d.reason] = reasons.get(d.reason, 0) + 1
    total_s = (clock() - t_all) / 1e9

    verify_ns: list[int] = []
    refused = 0
    for scan, _ in script:
        t0 = clock()
        try:
            verify_pass(scan.qr, know.site, trust)
        except PassError:
            refused += 1
        verify_ns.append(clock() - t0)

    decide_total = sum(decide_ns)
    ordered = sorted(decide_ns)
    p95 = ordered[min(len(ordered) - 1, round(0.95 * (len(ordered) - 1)))]
    return {
        "scans": scans,
        "seconds": round(total_s, 3),
        "decisions_per_s": round(scans / total_s, 1),
        "decide_only_per_s": round(scans / (decide_total / 1e9), 1),
        "decide_p50_us": round(statistics.median(decide_ns) / 1000, 1),
        "decide_p95_us": round(p95 / 1000, 1),
        "advance_mean_us": round(advance_ns / scans / 1000, 1),
        "verify_p50_us": round(statistics.median(verify_ns) / 1000, 1),
        "verify_per_s": round(scans / (sum(verify_ns) / 1e9), 1),
        "verify_share": round(sum(verify_ns) / decide_total, 3),
        "verify_refused": refused,
        "reasons": dict(sorted(reasons.items())),
    }


if __name__ == "__main__":
    # For the module's author; the user-facing entry point is `menwei bench decide`.
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 20000
    print(json.dumps(run_decide_bench(n), indent=2, ensure_ascii=False))
