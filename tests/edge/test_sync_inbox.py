"""The sync thread's inbox: a gate back from a long absence verifies only the newest of the
freshness statements its session queued; documents and acks are all handled, in order."""

from __future__ import annotations

import time
from pathlib import Path

from edge.store import GateStore
from edge.sync import GateSync, SyncSettings
from protocol import topics
from protocol.broker import parse_broker


def receiving(store: GateStore, seen: list[tuple[str, bytes]]) -> GateSync:
    """The sync of gate "g" of site "s" (never connected), noting each document it hands on."""
    return GateSync(
        SyncSettings("s", "g", parse_broker("mqtt://127.0.0.1:1")),
        store,
        on_document=lambda kind, raw: seen.append((kind, raw)),
        status=dict,
    )


def test_only_the_last_queued_statement_is_verified_documents_all_in_order(tmp_path: Path):
    seen: list[tuple[str, bytes]] = []
    with GateStore(tmp_path / "gate.db") as store:
        sync = receiving(store, seen)
        queued = [(topics.freshness("s"), f"statement {n}".encode()) for n in range(30)]
        queued.insert(10, (topics.config("s"), b"config 4"))
        queued.insert(20, (topics.register("s"), b"register 9"))
        queued.append((topics.config("s"), b"config 5"))
        for item in queued:
            sync._inbox.put(item)
        sync._drain_inbox()
    assert seen == [
        ("config", b"config 4"),
        ("register", b"register 9"),
        ("freshness", b"statement 29"),
        ("config", b"config 5"),
    ]
    assert sync.stats["statements_skipped"] == 29


def test_after_connecting_the_retained_documents_go_on_newest_root_first(tmp_path: Path):
    """The retained documents of a new connection wait until every document topic delivered
    (SETTLE_S at most), then go on by the root they name, newest first: the statement whose
    chain reaches root 3 before the config and register a key retired by root 3 signed
    under root 2 (refused, instead of applied and withdrawn a moment later)."""
    seen: list[str] = []
    with GateStore(tmp_path / "gate.db") as store:
        sync = kinds_to(seen, store)
        sync._settle_until = time.monotonic() + 60  # as _on_connect sets it
        sync._inbox.put((topics.config("s"), b'{"kind": "config", "version": 1001, "root": 2}'))
        sync._inbox.put((topics.register("s"), b'{"kind": "register", "root": 2, "body": {}}'))
        sync._drain_inbox()
        assert seen == [], "the freshness topic has not delivered yet"
        sync._inbox.put((topics.freshness("s"), b'{"kind": "freshness", "root": 3}'))
        sync._drain_inbox()
        assert seen == ["freshness", "config", "register"]
        sync._inbox.put((topics.config("s"), b'{"kind": "config", "root": 3}'))
        sync._drain_inbox()  # outside the window: at once
        assert seen[-1] == "config"


def test_the_settle_window_ends_without_every_topic(tmp_path: Path):
    seen: list[str] = []
    with GateStore(tmp_path / "gate.db") as store:
        sync = kinds_to(seen, store)
        sync._settle_until = time.monotonic() - 0.001  # SETTLE_S passed: no freshness retained
        sync._inbox.put((topics.config("s"), b'{"kind": "config", "root": 2}'))
        sync._drain_inbox()
    assert seen == ["config"]


def kinds_to(seen: list[str], store: GateStore) -> GateSync:
    """A gate's sync (never connected) that notes the kind of each document it hands on."""
    return GateSync(
        SyncSettings("s", "g", parse_broker("mqtt://127.0.0.1:1")),
        store,
        on_document=lambda kind, raw: seen.append(kind),
        status=dict,
    )


def test_of_queued_snapshots_and_deltas_the_newest_counts_and_a_cleared_delta_is_nothing(
    tmp_path: Path,
):
    """A gate back from a long absence: its session queued every register snapshot and delta
    published meanwhile. A cumulative delta replaces the one before it and a snapshot all
    before it, so only the newest of each is verified (in the order they came); the empty
    retained message that clears the delta topic is no document."""
    seen: list[tuple[str, bytes]] = []
    with GateStore(tmp_path / "gate.db") as store:
        sync = receiving(store, seen)
        delta = topics.register_delta("s")
        queued = [
            (topics.register("s"), b"snapshot 5"),
            (delta, b"delta 6"),
            (delta, b"delta 7"),
            (topics.register("s"), b"snapshot 8"),
            (delta, b""),
            (delta, b"delta 9"),
            (delta, b"delta 10"),
        ]
        for item in queued:
            sync._inbox.put(item)
        sync._drain_inbox()
        assert seen == [("register", b"snapshot 8"), ("register_delta", b"delta 10")]
        assert sync.stats["documents_skipped"] == 5
        sync._inbox.put((delta, b""))
        sync._drain_inbox()
    assert len(seen) == 2
