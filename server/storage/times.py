"""Instants as the store keeps them for ordering and ranges: integer µs since the Unix epoch,
UTC. Text times from gates carry their own UTC offset (ISO 8601); a time without one is
taken as UTC."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_US = timedelta(microseconds=1)


def instant_us(at: datetime | str) -> int:
    """µs since 1970-01-01T00:00Z of `at` (an aware datetime or ISO 8601 text).
    Raises ValueError for text that is not ISO 8601."""
    t = datetime.fromisoformat(at) if isinstance(at, str) else at
    if t.tzinfo is None:
        t = t.replace(tzinfo=UTC)
    return (t - _EPOCH) // _US


def from_us(us: int) -> datetime:
    """The aware UTC datetime of `us`."""
    return _EPOCH + us * _US


def utcnow() -> str:
    """Now, as the store's text times are written: ISO 8601 UTC with milliseconds
    (`2026-03-01T08:00:00.123+00:00`); texts written so compare in time order."""
    return datetime.now(UTC).isoformat(timespec="milliseconds")
