"""Register, cards, keys and reports from the command line (`menwei register|keys|report ...`,
`menwei pass issue-all|cards`)."""

from __future__ import annotations

import argparse
from typing import Any


def register(groups: dict[str, Any]) -> None:
    """Add this module's commands to the `root`, `server` and `pass` subparser groups."""
    _ = groups, argparse
