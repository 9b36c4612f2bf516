"""Every command of the command line is documented in the README (sqlite-utils' habit)."""

from __future__ import annotations

import argparse
from pathlib import Path

from menwei.cli import build_parser

README = Path(__file__).resolve().parents[1] / "README.md"


def commands(parser: argparse.ArgumentParser, prefix: tuple[str, ...] = ()) -> list[str]:
    found: list[str] = []
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                found += commands(sub, (*prefix, name))
    return found or [" ".join(prefix)]


def test_every_command_is_in_the_readme() -> None:
    text = README.read_text(encoding="utf-8")
    every = commands(build_parser())
    assert len(every) > 25
    missing = [c for c in every if f"menwei {c}" not in text]
    assert missing == []
