"""Prometheus metrics of one gate, read from the live daemon at scrape time.

`gate_registry(daemon)` gives a `CollectorRegistry` of its own (never the global
one, so tests and a process with several daemons do not collide) holding one
custom collector. Nothing is counted twice: every value is read from the
counters the daemon, its store, sync and drivers already keep. The guard page
serves it as `/metrics` (edge/guard_page.py); see docs/hardware.md "Metrics".
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING, Any, get_args

from prometheus_client import CollectorRegistry
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    InfoMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

from edge.storage_fault import FaultKind

if TYPE_CHECKING:
    from edge.daemon import GateDaemon

CAMERA_STATES = ("ok", "lost", "recovering")
STORAGE_FAULT_KINDS: tuple[FaultKind, ...] = get_args(FaultKind)
THERMOMETER_COUNTERS = (
    ("reads", "Register reads requested from the MLX90614."),
    ("retries", "Extra I2C attempts after a failed one."),
    ("pec_mismatches", "Words whose PEC checksum did not match."),
    ("error_flags", "Words with the sensor's error flag (bit 15) set."),
    ("out_of_range", "Words outside the physical range."),
    ("failures", "Reads that ended in a sensor error."),
)
SYNC_COUNTERS = (
    ("batches", "Event batches published to the broker."),
    ("resends", "Times sending went back to the last acknowledged seq."),
    ("publish_errors", "Publishes paho refused."),
    ("bad_messages", "Messages from the server that could not be used."),
)


class GateCollector(Collector):
    """Reads a `GateDaemon` at scrape time (on the guard page's thread)."""

    def __init__(self, daemon: GateDaemon) -> None:
        self.daemon = daemon

    def describe(self) -> Iterable[Metric]:
        return ()  # registering must not scrape the daemon

    def collect(self) -> Iterable[Metric]:
        d = self.daemon
        cfg = d.config.gate
        yield _info(
            "menwei_gate",
            "The gate this daemon runs.",
            {"site": cfg.site, "gate": cfg.id, "direction": cfg.direction},
        )

        decisions = CounterMetricFamily(
            "menwei_gate_decisions",
            "Decisions taken since the daemon started.",
            labels=["reason", "decision", "direction"],
        )
        for (reason, decision, direction), n in sorted(d.decisions.items()):
            decisions.add_metric([reason, decision, direction], n)
        yield decisions

        yield from _storage(d)
        yield _counter(
            "menwei_gate_relay_releases",
            "Times the relay released the gate since start.",
            d.hw.relay.releases,
        )
        yield from _sync(d)
        yield from _camera(d)
        yield from _decoder(d)
        yield from _thermometer(d)

        now = d.clock.now()
        yield _gauge(
            "menwei_gate_clock_trusted",
            "1 when the wall clock is trusted.",
            1 if now.trusted else 0,
        )
        yield _counter(
            "menwei_gate_clock_jumps", "Wall-clock jumps seen since start.", d.clock.jump_count
        )
        age = d.know.data_age_hours(now.utc)
        if age is not None:
            yield _gauge(
                "menwei_gate_data_age_hours",
                "Hours since the gate last had signed proof that policy and register are current.",
                age,
            )
        stale = age is None or age > d.know.policy.max_data_age_h
        yield _gauge(
            "menwei_gate_data_stale",
            "1 when policy/register are older than max_data_age_h (guard confirms).",
            1 if stale else 0,
        )
        versions = GaugeMetricFamily(
            "menwei_gate_data_version",
            "Version of each signed document held.",
            labels=["document"],
        )
        for document, version in sorted(d.know.versions().items()):
            versions.add_metric([document], version)
        yield versions
        yield _gauge(
            "menwei_gate_trust_root",
            "Version of the trust root the gate holds (the keys it trusts).",
            d.know.trust_root().version,
        )
        yield _counter(
            "menwei_gate_untrusted_documents",
            "Documents refused since start because the trust root does not vouch for them.",
            d.refused_documents,
        )


def gate_registry(daemon: GateDaemon) -> CollectorRegistry:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(GateCollector(daemon))
    return registry


def _storage(d: GateDaemon) -> Iterable[Metric]:
    """The store's figures (absent while it cannot be read) and its health."""
    figures = d.store_figures()
    for name, key, doc in (
        ("menwei_gate_outbox_backlog", "backlog", "Events not yet acknowledged by the collector."),
        ("menwei_gate_last_seq", "last_seq", "Sequence number of the last logged event."),
        ("menwei_gate_acked_seq", "acked_seq", "Highest seq the collector acknowledged."),
    ):
        value = figures[key]
        if value is not None:
            yield _gauge(name, doc, value)
    fault = d.store.health.fault
    yield _gauge(
        "menwei_gate_storage_ok",
        "1 while the gate's database can be written; 0 during a storage fault (every scan "
        "refused).",
        1 if fault is None else 0,
    )
    kinds = GaugeMetricFamily(
        "menwei_gate_storage_fault",
        "1 for the kind of the current storage fault.",
        labels=["kind"],
    )
    for kind in STORAGE_FAULT_KINDS:
        kinds.add_metric([kind], 1 if fault is not None and fault.kind == kind else 0)
    yield kinds
    yield _counter(
        "menwei_gate_storage_faults", "Storage faults since start.", d.store.health.episodes
    )
    free = d.data_free_bytes()
    if free is not None:
        yield _gauge(
            "menwei_gate_data_free_bytes", "Bytes free on the data partition (data_dir).", free
        )


def _sync(d: GateDaemon) -> Iterable[Metric]:
    if d.sync is None:  # broker "none": no sync metrics, so no "disconnected" alert fires
        return
    yield _gauge(
        "menwei_gate_sync_connected",
        "1 while connected to the MQTT broker.",
        1 if d.sync.connected else 0,
    )
    stats = dict(d.sync.stats)
    for key, doc in SYNC_COUNTERS:
        yield _counter(f"menwei_gate_sync_{key}", doc, stats.get(key, 0))


def _camera(d: GateDaemon) -> Iterable[Metric]:
    camera = d.hw.camera
    state = GaugeMetricFamily(
        "menwei_gate_camera_state", "1 for the camera's current state.", labels=["state"]
    )
    for name in CAMERA_STATES:
        state.add_metric([name], 1 if camera.state == name else 0)
    yield state
    yield _counter("menwei_gate_camera_losses", "Times the camera was lost.", camera.losses)
    yield _counter(
        "menwei_gate_camera_open_attempts", "Times the camera was (re)opened.", camera.open_attempts
    )
    # Frames the grabber thread overwrote before the loop read them (live cameras only);
    # the count restarts with each reopened source, which Prometheus reads as a reset.
    source: Any = getattr(camera, "_source", None)
    dropped = getattr(source, "dropped", None)
    if isinstance(dropped, int):
        yield _counter(
            "menwei_gate_camera_dropped_frames",
            "Frames dropped by the current camera source.",
            dropped,
        )


def _decoder(d: GateDaemon) -> Iterable[Metric]:
    s = d.hw.decoder.stats
    yield _counter("menwei_gate_decoder_frames", "Frames given to the QR decoder.", s.frames)
    yield _counter(
        "menwei_gate_decoder_frames_with_code",
        "Frames in which a code was read.",
        s.frames_with_code,
    )
    yield _counter("menwei_gate_decoder_seconds", "Time spent decoding.", s.total_ms / 1000.0)
    yield _gauge(
        "menwei_gate_decoder_max_seconds", "Slowest single frame decode.", s.max_ms / 1000.0
    )
    stages = CounterMetricFamily(
        "menwei_gate_decoder_decoded",
        "Frames decoded, by the stage that read them.",
        labels=["stage"],
    )
    for stage, n in sorted(dict(s.by_stage).items()):
        stages.add_metric([stage], n)
    yield stages


def _thermometer(d: GateDaemon) -> Iterable[Metric]:
    stats = getattr(d.hw.thermometer, "stats", None)
    if stats is None:
        return
    for key, doc in THERMOMETER_COUNTERS:
        yield _counter(f"menwei_gate_thermometer_{key}", doc, getattr(stats, key))


def _gauge(name: str, doc: str, value: float) -> GaugeMetricFamily:
    return GaugeMetricFamily(name, doc, value=value)


def _counter(name: str, doc: str, value: float) -> CounterMetricFamily:
    return CounterMetricFamily(name, doc, value=value)


def _info(name: str, doc: str, labels: dict[str, str]) -> InfoMetricFamily:
    return InfoMetricFamily(name, doc, value=labels)
