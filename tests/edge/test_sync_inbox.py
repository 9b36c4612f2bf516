"""The sync thread's inbox: a gate back from a long absence verifies only the newest of the
freshness statements its session queued; documents and acks are all handled, in order."""

from __future__ import annotations

from pathlib import Path

from edge.store import GateStore
from edge.sync import GateSync, SyncSettings
from protocol import topics
from protocol.broker import parse_broker


def test_only_the_last_queued_statement_is_verified_documents_all_in_order(tmp_path: Path):
    seen: list[tuple[str, bytes]] = []
    with GateStore(tmp_path / "gate.db") as store:
        sync = GateSync(
            SyncSettings("s", "g", parse_broker("mqtt://127.0.0.1:1")),
            store,
            on_document=lambda kind, raw: seen.append((kind, raw)),
            status=dict,
        )
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
