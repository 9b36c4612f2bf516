"""Backlog benchmark: one gate's offline backlog drained through the real `GateSync`.

The collector is the deployed one in its own process: a private Mosquitto
(`MosquittoBroker`), a server directory made by `menwei server init`, and one
`menwei server run` on it (`CollectorFleet`). The gate is this process: a
`GateStore` in a temporary folder and its `GateSync` (edge/sync.py), as the gate
daemon builds them.

While the gate is offline its store is filled with N logged decisions
(menwei/gate_traffic.py, one every second of the day before) through
`GateStore.append`, the daemon's own call: the same rows, outbox entries and
numbering. One shortcut, for speed only: the N appends run inside one outer
transaction (each append is then a savepoint), so the fill commits once instead
of syncing the disk N times; what is on disk afterwards is what N separate
appends leave.

Then the gate connects: `drain_s` runs from `GateSync.start()` to the gate
handling the collector's ack of its last seq. `gate_rss_mb` is this process's
peak RSS during the drain (VmHWM, reset through /proc/self/clear_refs before the
gate connects; where the kernel refuses the reset, the peak of the whole run,
fill included). Then the gate's log is reconciled with the collector's store.

The CLI (`menwei bench backlog`) calls `run_backlog_bench`.
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

from edge.store import GateStore
from edge.sync import SyncSettings
from menwei.bench_sync import TimedSync
from menwei.collector_process import CollectorFleet, init_server, peak_rss_mb
from menwei.gate_traffic import numbered, resident_event
from menwei.mosquitto import MosquittoBroker
from menwei.reconcile import reconcile
from protocol.broker import parse_broker
from server.storage import default_url

SITE = "bench-site"
GATE = "bench-gate"
EVERY = timedelta(seconds=1)  # between two decisions logged offline


def fill_offline(store: GateStore, events: int, start: datetime) -> None:
    """Log `events` decisions of GATE from `start`, one every EVERY, in one transaction (see
    the module doc)."""
    with store.db.atomic():
        for i in range(events):
            event = resident_event(SITE, GATE, i, start, every=EVERY)
            store.append(numbered(event), state=None, clock_floor=0.0)


def reset_peak_rss() -> bool:
    """Start this process's VmHWM again from its current RSS; False where not allowed."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        return False
    return True


def run_backlog_bench(
    events: int = 100_000,
    batch_size: int = SyncSettings.batch_size,
    window: int = SyncSettings.window,
    timeout_s: float | None = None,
) -> dict[str, object]:
    """Fill, connect, drain and reconcile (module doc); returns the numbers, `complete` false
    when the drain did not end within `timeout_s` (default 120 s + 10 ms per event; then
    `drain_s` is that time and `events_per_s` counts the acknowledged events). Raises
    ValueError for bad sizes, CollectorProcessError or BrokerError when a part does not
    start."""
    if events < 1 or batch_size < 1 or window < batch_size:
        raise ValueError("--events and --batch-size must be positive, --window >= --batch-size")
    timeout = timeout_s if timeout_s is not None else 120.0 + events / 100.0
    with contextlib.ExitStack() as stack:
        work = Path(
            stack.enter_context(tempfile.TemporaryDirectory(prefix="menwei-bench-backlog-"))
        )
        broker = stack.enter_context(MosquittoBroker(workdir=work))
        server_dir = work / "server"
        init_server(server_dir, SITE)
        stack.enter_context(CollectorFleet(server_dir, SITE, broker.url, log_dir=work))
        gate_db = work / "gate" / "gate.db"
        store = stack.enter_context(GateStore(gate_db))
        t0 = time.monotonic()
        fill_offline(store, events, datetime.now(UTC) - EVERY * events)
        fill_s = time.monotonic() - t0
        settings = SyncSettings(
            SITE, GATE, parse_broker(broker.url), batch_size=batch_size, window=window
        )
        sync = TimedSync(
            settings,
            store,
            on_document=lambda _kind, _raw: None,
            status=lambda: {"gate": GATE, "site": SITE, "backlog": store.backlog()},
        )
        sync.target = events
        drain_only = reset_peak_rss()
        t0 = time.monotonic()
        sync.start()
        try:
            complete = sync.all_acked.wait(timeout)
            drain_s = (sync.ack_times[-1][0] if complete else time.monotonic()) - t0
            acked = sync.acked
            rss = peak_rss_mb(os.getpid())
            stats = dict(sync.stats)
        finally:
            sync.close()
        store.close()
        r = reconcile([gate_db], default_url(server_dir))
    return {
        "events": events,
        "batch_size": batch_size,
        "window": window,
        "fill_s": round(fill_s, 3),
        "drain_s": round(drain_s, 3),
        "events_per_s": round(acked / drain_s, 1) if drain_s > 0 else 0.0,
        "gate_rss_mb": round(rss, 1),
        "gate_rss_scope": "drain" if drain_only else "run",
        "batches": stats["batches"],
        "resends": stats["resends"],
        "complete": complete,
        "collector": "menwei server run",
        "collector_events": r.collector_events,
        "lost": r.lost,
        "duplicates": r.duplicates,
        "pending": r.pending,
    }


if __name__ == "__main__":
    # For the module's author; the user-facing entry point is `menwei bench backlog`.
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 10_000
    print(json.dumps(run_backlog_bench(n), indent=2))
