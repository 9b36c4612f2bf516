"""Typed errors of the protocol layer (one root for the package)."""

from __future__ import annotations


class ProtocolError(ValueError):
    """Root of every error raised by `protocol`: input that does not follow the contract."""


class PassError(ProtocolError):
    """A QR text is not a genuine, usable pass. `reason` is a reason code (see `reasons`)."""

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason
        self.detail = detail


class MessageError(ProtocolError):
    """An MQTT message or stored document does not follow its schema."""


class Superseded(MessageError):
    """A genuine document that what a gate holds has already replaced (e.g. a register delta
    of an older snapshot): ignored, and not kept to try again later."""
