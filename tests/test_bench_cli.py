"""`menwei bench sync|decide` through the real command line, small sizes: the JSON contract
and the invariants (nothing lost or doubled, every scan decided). Speed is never asserted."""

from __future__ import annotations

import json

from tests.conftest import run_menwei


def last_json(stdout: str) -> dict[str, object]:
    return dict(json.loads(stdout.strip().splitlines()[-1]))


def test_bench_sync_delivers_every_event_exactly_once() -> None:
    proc = run_menwei(
        "bench", "sync", "--events", "300", "--batch-size", "20", "--window", "100", "--json"
    )
    r = last_json(proc.stdout)
    keys = {
        "events",
        "seconds",
        "events_per_s",
        "ack_latency_p50_ms",
        "ack_latency_p95_ms",
        "resends",
        "batches",
        "gate_rss_mb",
        "lost",
        "duplicates",
    }
    assert keys <= r.keys(), r
    assert (r["events"], r["collector_events"], r["lost"], r["duplicates"], r["pending"]) == (
        300,
        300,
        0,
        0,
        0,
    ), r
    assert r["seconds"] > 0 and r["events_per_s"] > 0 and r["gate_rss_mb"] > 0, r
    assert 0 <= r["ack_latency_p50_ms"] <= r["ack_latency_p95_ms"], r
    # at most 20 events per message: at least 15 batches carried the 300 events
    assert isinstance(r["batches"], int) and r["batches"] >= 15, r
    assert r["latency_samples"] == 300, r


def test_bench_decide_decides_every_scan() -> None:
    proc = run_menwei("bench", "decide", "--scans", "500", "--json")
    r = last_json(proc.stdout)
    keys = {"scans", "decisions_per_s", "decide_p50_us", "decide_p95_us", "verify_share"}
    assert keys <= r.keys(), r
    assert r["scans"] == 500, r
    reasons = r["reasons"]
    assert isinstance(reasons, dict) and sum(reasons.values()) == 500, r
    # the script's mix shows up: genuine, forged, expired and malformed passes
    assert {"ok", "bad_signature", "expired", "malformed"} <= reasons.keys(), reasons
    assert r["decisions_per_s"] > 0 and r["verify_per_s"] > 0, r
    assert 0 < r["decide_p50_us"] <= r["decide_p95_us"], r
    assert r["verify_share"] > 0, r


def test_bench_help_lists_sync_and_decide() -> None:
    out = run_menwei("bench", "--help").stdout
    assert "sync" in out and "decide" in out
