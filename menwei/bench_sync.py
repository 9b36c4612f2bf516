"""Sync benchmark: one gate's log → MQTT → the collector's store → acknowledgement back.

Everything is the real thing in one process: a private Mosquitto
(`MosquittoBroker`), a fresh `Site` with its `Collector`, a `GateStore` in a
temporary folder and its `GateSync`. The gate appends N decision events as
fast as SQLite commits them (one transaction each, `synchronous=FULL`, as
the daemon does); the sync sends them in batches while they are appended;
the run ends when the collector has acknowledged the last one. The gate's
log is then reconciled with the collector's store.

The CLI (`menwei bench sync`) calls `run_sync_bench`.
"""

from __future__ import annotations

import json
import resource
import sys
import tempfile
import threading
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from edge.store import GateStore
from edge.sync import GateSync, SyncSettings
from menwei.gate_traffic import numbered, resident_event
from menwei.mosquitto import MosquittoBroker
from menwei.reconcile import reconcile
from protocol.broker import parse_broker
from server.collector import Collector
from server.site import Site
from server.storage.engine import SQLITE_FILE

SITE = "bench-site"
GATE = "bench-gate"
LATENCY_SAMPLES = 1000  # about this many appends are timed until their ack is observed
SPACING = timedelta(milliseconds=200)  # between two decisions of the scripted day


class TimedSync(GateSync):
    """GateSync that notes when each acknowledgement is handled (instrumentation only)."""

    def __init__(self, *args: Any, **kw: Any) -> None:
        super().__init__(*args, **kw)
        self.ack_times: list[tuple[float, int]] = []  # (monotonic time, acked seq)
        self.all_acked = threading.Event()
        self.target = 0

    def _handle_ack(self, payload: bytes) -> None:
        super()._handle_ack(payload)
        if not self.ack_times or self.ack_times[-1][1] < self.acked:
            self.ack_times.append((time.monotonic(), self.acked))
        if self.target and self.acked >= self.target:
            self.all_acked.set()


def _percentile(values: list[float], q: float) -> float:
    if not values:
        return 0.0
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def run_sync_bench(
    events: int, batch_size: int = 50, window: int = 500, timeout_s: float | None = None
) -> dict[str, object]:
    """Append `events` events and wait until all are acknowledged; see the module doc.

    `seconds` runs from the first append to the ack of the last event;
    ack latency is append → the gate handling an ack that covers it, for about
    `LATENCY_SAMPLES` evenly spaced events; `gate_rss_mb` is this process's peak
    RSS (gate, collector and broker client together: an upper bound for a gate).
    """
    if events < 1 or batch_size < 1 or window < 1:
        raise ValueError("--events, --batch-size and --window must be positive")
    timeout = timeout_s if timeout_s is not None else 60.0 + events / 50.0
    with tempfile.TemporaryDirectory(prefix="menwei-bench-sync-") as tmp:
        work = Path(tmp)
        with MosquittoBroker(workdir=work) as broker:
            broker_addr = parse_broker(broker.url)
            site = Site.init(work / "server", SITE)
            collector = Collector(site, broker_addr)
            store = GateStore(work / "gate" / "gate.db")
            sync = TimedSync(
                SyncSettings(SITE, GATE, broker_addr, batch_size=batch_size, window=window),
                store,
                on_document=lambda _kind, _raw: None,
                status=lambda: {"gate": GATE, "site": SITE, "backlog": store.backlog()},
            )
            try:
                collector.start()
                if not collector.connected.wait(15):
                    raise TimeoutError("collector did not connect to the private broker")
                sync.start()
                end = time.monotonic() + 15
                while not sync.connected and time.monotonic() < end:
                    time.sleep(0.01)
                if not sync.connected:
                    raise TimeoutError("gate sync did not connect to the private broker")
                sync.target = events
                every = max(1, events // LATENCY_SAMPLES)
                appended: dict[int, float] = {}
                start_at = datetime.now(UTC)
                t0 = time.monotonic()
                for i in range(events):
                    event = resident_event(SITE, GATE, i, start_at, every=SPACING)
                    e = store.append(numbered(event), state=None, clock_floor=0.0)
                    if e.seq % every == 0 or e.seq == events:
                        appended[e.seq] = time.monotonic()
                    sync.notify()
                append_s = time.monotonic() - t0
                if not sync.all_acked.wait(timeout):
                    raise TimeoutError(
                        f"only {sync.acked} of {events} events acknowledged after {timeout:.0f}s"
                    )
                seconds = sync.ack_times[-1][0] - t0
                stats = dict(sync.stats)
            finally:
                sync.close()
                collector.close()
                store.close()
                site.close()
            rss_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
            r = reconcile([work / "gate" / "gate.db"], work / "server" / SQLITE_FILE)
    latencies = _ack_latencies_ms(appended, sync.ack_times)
    return {
        "events": events,
        "batch_size": batch_size,
        "window": window,
        "seconds": round(seconds, 3),
        "events_per_s": round(events / seconds, 1) if seconds > 0 else 0.0,
        "append_per_s": round(events / append_s, 1) if append_s > 0 else 0.0,
        "ack_latency_p50_ms": round(_percentile(latencies, 0.5), 2),
        "ack_latency_p95_ms": round(_percentile(latencies, 0.95), 2),
        "latency_samples": len(latencies),
        "resends": stats["resends"],
        "batches": stats["batches"],
        "gate_rss_mb": round(rss_kb / 1024, 1),  # Linux: ru_maxrss is in KiB
        "collector_events": r.collector_events,
        "lost": r.lost,
        "duplicates": r.duplicates,
        "pending": r.pending,
    }


def _ack_latencies_ms(appended: dict[int, float], acks: list[tuple[float, int]]) -> list[float]:
    """For each timed seq: the first ack (in time order, seqs ascending) that covers it."""
    out: list[float] = []
    k = 0
    for seq in sorted(appended):
        while k < len(acks) and acks[k][1] < seq:
            k += 1
        if k == len(acks):
            break
        out.append((acks[k][0] - appended[seq]) * 1000.0)
    return out


if __name__ == "__main__":
    # For the module's author; the user-facing entry point is `menwei bench sync`.
    print(json.dumps(run_sync_bench(int(sys.argv[1]) if len(sys.argv) > 1 else 2000), indent=2))
