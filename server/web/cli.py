"""`menwei operator ...` and the dashboard's command-line pieces."""

from __future__ import annotations

from typing import Any


def register(groups: dict[str, Any]) -> None:
    """Add this module's commands to the `root`, `server` and `pass` subparser groups."""
    _ = groups
