"""menwei/reconcile.py on both backends: what gates logged against what a store holds."""

from __future__ import annotations

from menwei.reconcile import reconcile_keys
from server.storage import Store
from server.storage.schema import event_aliases, events
from server.storage.times import instant_us

AT = "2026-11-29T08:00:00.000+08:00"


def store_events(
    url: str, keys: list[tuple[str, str, int, str]], aliases: list[tuple[str, str, int, str]]
) -> None:
    """Rows as the collector writes them (only the columns the reconciliation reads vary)."""
    with Store(url) as store, store.write() as tx:
        for gate, epoch, seq, uuid in keys:
            tx.execute(
                events.insert().values(
                    gate=gate,
                    epoch=epoch,
                    seq=seq,
                    uuid=uuid,
                    at=AT,
                    at_us=instant_us(AT),
                    kind="decision",
                    reason="ok",
                    body="{}",
                    received_at=AT,
                )
            )
        for gate, epoch, seq, uuid in aliases:
            tx.execute(event_aliases.insert().values(gate=gate, epoch=epoch, seq=seq, uuid=uuid))


def test_lost_and_doubled_events_are_counted(store_url: str) -> None:
    east = [("east", "e1", seq, f"u{seq}") for seq in (1, 2, 3, 4)]
    moved = ("west", "w2", 1, "u9")  # sent again under a new epoch: held as an alias
    stray = ("west", "w1", 7, "u7")  # stored, never logged
    store_events(store_url, [*east[:3], stray], [moved])
    r = reconcile_keys({*east, moved}, store_url, pending=2)
    # east seq 4 is lost; the moved event is not; the stray one counts as a duplicate
    assert (r.gate_events, r.collector_events, r.lost, r.duplicates, r.pending) == (5, 4, 1, 1, 2)
