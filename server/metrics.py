"""Prometheus metrics of the server, read at scrape time.

`server_registry(...)` gives a `CollectorRegistry` of its own (never the global
one) holding one custom collector that reads:
- the store, in one read transaction (server/storage/reports.py; a read never
  waits for the collector's writes): events stored, rejected messages,
  conflicts, open alerts; each gate's state and reported backlog;
- the live feed: subscribers and items published;
- the collector and its webhook sender, when it runs in this process and was
  handed over: batches, inserts, duplicates, rejects, conflicts, connection.

The dashboard serves it as `/metrics` without a login (server/web/app.py).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from datetime import datetime
from typing import TYPE_CHECKING, Any

from prometheus_client import CollectorRegistry
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector as PromCollector

from server.live import LiveFeed
from server.storage import Store
from server.storage import reports as reports_db

if TYPE_CHECKING:
    from server.collector import Collector

GATE_STATES = ("online", "offline", "silent", "unknown")
COLLECTOR_COUNTERS = (
    ("batches", "Event batches stored."),
    ("inserted", "Events inserted (new)."),
    ("duplicates", "Events received again and ignored (already stored)."),
    ("rejected", "Messages and events refused as malformed."),
    ("conflicts", "Conflicts found in arriving events."),
    ("freshness", "Freshness statements issued on schedule (documents are current)."),
)
WEBHOOK_COUNTERS = (
    ("queued", "Alerts queued for the webhook."),
    ("sent", "Alerts delivered."),
    ("failed", "Alerts not delivered after all attempts."),
    ("retries", "Extra delivery attempts."),
    ("dropped", "Alerts dropped because the queue was full."),
)


class ServerCollector(PromCollector):
    """`gates` returns one dict per gate with at least `gate`, `state` ("online", "offline",
    "silent", ...), `backlog` and `last_seen` (ISO time) — the dashboard's overview rows,
    so /metrics and the overview page agree on what "silent" means."""

    def __init__(
        self,
        store: Store,
        gates: Callable[[], Sequence[dict[str, Any]]],
        feed: LiveFeed,
        collector: Collector | None = None,
    ) -> None:
        self.store = store
        self.gates = gates
        self.feed = feed
        self.collector = collector

    def describe(self) -> Iterable[Metric]:
        return ()  # registering must not query the store

    def collect(self) -> Iterable[Metric]:
        yield from self._store()
        yield from self._gates()
        yield _gauge(
            "menwei_server_live_subscribers", "Open live-feed streams.", self.feed.subscribers
        )
        yield _counter(
            "menwei_server_live_published", "Items published to the live feed.", self.feed.published
        )
        if self.collector is not None:
            yield from _collector(self.collector)

    def _store(self) -> Iterable[Metric]:
        with self.store.read() as tx:
            figures = reports_db.store_figures(tx)
        yield _by_label(
            "menwei_server_events_stored",
            "Events stored, per gate.",
            "gate",
            figures.events_by_gate.items(),
        )
        yield _gauge(
            "menwei_server_rejected_messages",
            "Malformed MQTT messages and events refused, in the days still counted (30).",
            figures.rejected_messages,
        )
        yield _by_label(
            "menwei_server_conflicts",
            "Conflicts recorded, by kind.",
            "kind",
            figures.conflicts_by_kind.items(),
        )
        yield _by_label(
            "menwei_server_alerts_open",
            "Alerts not yet acknowledged, by kind.",
            "kind",
            figures.open_alerts_by_kind.items(),
        )

    def _gates(self) -> Iterable[Metric]:
        rows = list(self.gates())
        states = GaugeMetricFamily("menwei_server_gates", "Gates by state.", labels=["state"])
        counts = dict.fromkeys(GATE_STATES, 0)
        for row in rows:
            state = str(row.get("state") or "unknown")
            counts[state if state in counts else "unknown"] += 1
        for state, n in counts.items():
            states.add_metric([state], n)
        yield states
        up = GaugeMetricFamily(
            "menwei_server_gate_state", "1 for each gate's current state.", labels=["gate", "state"]
        )
        backlog = GaugeMetricFamily(
            "menwei_server_gate_backlog",
            "Outbox backlog each gate last reported.",
            labels=["gate"],
        )
        seen = GaugeMetricFamily(
            "menwei_server_gate_last_seen_timestamp_seconds",
            "When each gate was last heard from (Unix time).",
            labels=["gate"],
        )
        for row in rows:
            gate = str(row["gate"])
            up.add_metric([gate, str(row.get("state") or "unknown")], 1)
            if isinstance(row.get("backlog"), int):
                backlog.add_metric([gate], row["backlog"])
            if row.get("last_seen"):
                seen.add_metric([gate], datetime.fromisoformat(row["last_seen"]).timestamp())
        yield up
        yield backlog
        yield seen


def server_registry(
    store: Store,
    gates: Callable[[], Sequence[dict[str, Any]]],
    feed: LiveFeed,
    collector: Collector | None = None,
) -> CollectorRegistry:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(ServerCollector(store, gates, feed, collector))
    return registry


def _collector(c: Collector) -> Iterable[Metric]:
    yield _gauge(
        "menwei_collector_connected",
        "1 while the collector is connected to MQTT.",
        1 if c.connected.is_set() else 0,
    )
    stats = dict(c.stats)
    for key, doc in COLLECTOR_COUNTERS:
        yield _counter(f"menwei_collector_{key}", doc, stats.get(key, 0))
    if c.webhooks is not None:
        hooks = dict(c.webhooks.stats)
        for key, doc in WEBHOOK_COUNTERS:
            yield _counter(f"menwei_webhook_{key}", doc, hooks.get(key, 0))


def _by_label(name: str, doc: str, label: str, rows: Iterable[tuple[Any, ...]]) -> Metric:
    family = GaugeMetricFamily(name, doc, labels=[label])
    for key, n in rows:
        family.add_metric([str(key)], int(n))
    return family


def _gauge(name: str, doc: str, value: float) -> GaugeMetricFamily:
    return GaugeMetricFamily(name, doc, value=value)


def _counter(name: str, doc: str, value: float) -> CounterMetricFamily:
    return CounterMetricFamily(name, doc, value=value)
