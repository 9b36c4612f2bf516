"""MQTT topic names (DESIGN.md). `site` and `gate` are slugs."""

from __future__ import annotations

ROOT = "menwei"


def events(site: str, gate: str) -> str:
    """gate → server, QoS 1, batches of events."""
    return f"{ROOT}/{site}/{gate}/events"


def ack(site: str, gate: str) -> str:
    """server → gate, retained: highest contiguous committed seq."""
    return f"{ROOT}/{site}/{gate}/ack"


def status(site: str, gate: str) -> str:
    """gate → server, retained; the Last Will says offline."""
    return f"{ROOT}/{site}/{gate}/status"


def config(site: str) -> str:
    """server → gates, retained: policy, trust keys, versions (signed document)."""
    return f"{ROOT}/{site}/config"


def register(site: str) -> str:
    """server → gates, retained: register snapshot (signed document)."""
    return f"{ROOT}/{site}/register"


def register_delta(site: str) -> str:
    """server → gates, retained: what changed since the register snapshot (signed document,
    protocol.register_documents); emptied when a new snapshot makes it moot. Its leaf is no
    gate's: a gate named "register" writes only .../register/events and .../register/status."""
    return f"{ROOT}/{site}/register/delta"


def freshness(site: str) -> str:
    """server → gates, retained: signed statement naming the current config and register
    versions, re-issued on a schedule (protocol.freshness)."""
    return f"{ROOT}/{site}/freshness"


def passages(site: str) -> str:
    """server → gates: accepted passages of other gates."""
    return f"{ROOT}/{site}/passages"


def gate_wildcard(site: str, leaf: str) -> str:
    """Subscription for one leaf (events, status) of every gate of a site."""
    return f"{ROOT}/{site}/+/{leaf}"


def gate_of(topic: str) -> tuple[str, str, str] | None:
    """(site, gate, leaf) of a per-gate topic, None for anything else."""
    parts = topic.split("/")
    if len(parts) != 4 or parts[0] != ROOT:
        return None
    return parts[1], parts[2], parts[3]
