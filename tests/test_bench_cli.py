"""`menwei bench sync|decide|gate|collector|backlog|login` through the real command line, small
sizes: the JSON contract and the invariants (nothing lost or doubled, every scan decided). Speed is
never asserted."""

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


def test_bench_collector_commits_every_gates_events_once() -> None:
    proc = run_menwei(
        "bench", "collector", "--gates", "3", "--events-per-gate", "40", "--batch", "10", "--json"
    )
    r = last_json(proc.stdout)
    keys = {"events_per_s", "raw_events_per_s", "ratio", "collector_rss_mb", "lost", "duplicates"}
    assert keys <= r.keys(), r
    assert (r["events"], r["collector_events"], r["lost"], r["duplicates"]) == (120, 120, 0, 0), r
    assert (r["gates"], r["collectors"], r["store"], r["complete"]) == (3, 1, "sqlite", True), r
    assert r["events_per_s"] > 0 and r["raw_events_per_s"] > 0 and r["ratio"] > 0, r
    assert r["collector_rss_mb"] > 0, r
    # 40 events in batches of 10: at least 4 messages per gate reached the collector
    assert isinstance(r["batches_sent"], int) and r["batches_sent"] >= 12, r


def test_bench_collector_shares_the_events_between_two_collectors() -> None:
    # Gates' resends on: two collectors' writers on one SQLite file may meet a locked
    # database, and then the gate sends the batch again, as a real gate does.
    proc = run_menwei(
        "bench",
        "collector",
        "--gates",
        "3",
        "--events-per-gate",
        "40",
        "--batch",
        "10",
        "--collectors",
        "2",
        "--resend-after",
        "10",
        "--json",
    )
    r = last_json(proc.stdout)
    assert (r["collector_events"], r["lost"], r["duplicates"], r["complete"]) == (120, 0, 0, True)
    rss = r["collectors_rss_mb"]
    assert isinstance(rss, list) and len(rss) == 2 and all(x > 0 for x in rss), r


def test_bench_backlog_drains_every_event_once() -> None:
    proc = run_menwei("bench", "backlog", "--events", "500", "--json")
    r = last_json(proc.stdout)
    keys = {"drain_s", "events_per_s", "gate_rss_mb", "lost", "duplicates"}
    assert keys <= r.keys(), r
    assert (r["events"], r["collector_events"], r["lost"], r["duplicates"], r["pending"]) == (
        500,
        500,
        0,
        0,
        0,
    ), r
    assert r["drain_s"] > 0 and r["events_per_s"] > 0 and r["gate_rss_mb"] > 0, r
    # 500 events of at most 50 per message
    assert isinstance(r["batches"], int) and r["batches"] >= 10, r


def test_bench_collector_refuses_bad_sizes_in_one_line() -> None:
    proc = run_menwei("bench", "collector", "--batch", "501", "--json", check=False)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr
    assert "--batch" in proc.stderr, proc.stderr


def test_bench_help_lists_every_benchmark() -> None:
    out = run_menwei("bench", "--help").stdout
    names = ("sync", "decide", "gate", "collector", "backlog", "login", "register")
    assert all(name in out for name in names), out


def test_bench_login_answers_every_attempt_within_the_bound() -> None:
    proc = run_menwei("bench", "login", "--concurrency", "6", "--rounds", "2", "--json")
    r = last_json(proc.stdout)
    assert (r["concurrency"], r["rounds"], r["attempts"], r["other"]) == (6, 2, 12, 0), r
    assert r["logged_in"] >= 1 and r["logged_in"] + r["busy"] + r["limited"] == 12, r
    assert 1 <= r["checks_peak"] <= r["password_checks_at_once"] == 2, r
    assert 0 < r["rss_idle_mb"] <= r["rss_peak_mb"], r
    assert "HTTP Request" not in proc.stderr


def test_bench_gate_reports_every_figure_of_the_hot_path() -> None:
    proc = run_menwei("bench", "gate", "--passages", "4", "--seconds", "6", "--json")
    r = last_json(proc.stdout)
    assert {"cpus", "load_average", "empty_frame", "frame_to_relay", "gate_run"} <= r.keys(), r
    empty = r["empty_frame"]
    assert isinstance(empty, dict) and set(empty) == {"640x480", "1280x720"}, r
    for size in empty.values():
        assert size["gate_ms"] > 0 and size["bare_zxing_ms"] > 0 and size["ratio"] > 0, size
        assert size["gate_upscale_runs"] == 0, size  # issue 12: no retry without a code
    relay = r["frame_to_relay"]
    assert isinstance(relay, dict) and relay["passages"] == 4, r
    for part in ("with_settle", "without_settle", "baseline"):
        assert 0 < relay[part]["p50_ms"] <= relay[part]["p95_ms"] <= relay[part]["p99_ms"], r
    # The settle waits (samples - 1) x interval_s at least: 2 x 0.1 s by default.
    assert relay["with_settle"]["p50_ms"] >= relay["with_settle"]["settle_floor_ms"] == 200, r
    run = r["gate_run"]
    assert isinstance(run, dict) and run["fps"] == 15, r
    assert run["cpu_percent_of_a_core"] > 0 and run["rss_mb"] > 0, r
    # One passage in the 6 s clip (at 2.5 s), decided once: the clip kept its time.
    assert (run["passages_in_clip"], run["allowed_entries"]) == (1, 1), r


def test_bench_gate_refuses_a_clip_too_short_to_measure() -> None:
    proc = run_menwei("bench", "gate", "--passages", "1", "--seconds", "3", "--json", check=False)
    assert proc.returncode != 0 and "Traceback" not in proc.stderr, proc.stderr
    assert "--seconds must be at least 5" in proc.stderr, proc.stderr


def test_bench_register_measures_a_snapshot_and_the_delta_of_one_pass() -> None:
    proc = run_menwei("bench", "register", "--passes", "800", "--json")
    r = last_json(proc.stdout)
    keys = {"passes", "issue_all", "register_json_bytes", "published", "one_pass_issued", "gate"}
    assert keys <= r.keys(), r
    assert r["passes"] + r["revoked"] == 800 and r["quarantined"] > 0, r  # type: ignore[operator]
    issue_all = r["issue_all"]
    assert isinstance(issue_all, dict) and issue_all["issued"] == issue_all["people"] > 700, r
    snapshot = r["published"]["bytes"]  # type: ignore[index]
    assert list(snapshot) == ["register.json"], r
    assert snapshot["register.json"] < r["register_json_bytes"] / 4, "compressed"  # type: ignore[operator]
    one = r["one_pass_issued"]
    assert one["bytes"].keys() == {"register-delta.json"}, r  # type: ignore[index]
    assert one["version"] == r["published"]["version"] + 1, r  # type: ignore[index]
    assert r["fits"] is True and r["gate"]["peak_mib"] > 0, r  # type: ignore[index]
