"""Every configuration key is documented in docs/configuration.md, under its own table."""

from __future__ import annotations

import dataclasses
import typing
from pathlib import Path

from edge.config import GateConfig
from server.config import ServerConfig

DOC = Path(__file__).resolve().parents[1] / "docs" / "configuration.md"


def keys(root: type) -> list[tuple[str, str]]:
    hints = typing.get_type_hints(root)
    found = []
    for f in dataclasses.fields(root):
        section = hints[f.name]
        if dataclasses.is_dataclass(section):
            found += [(f.name, g.name) for g in dataclasses.fields(section)]
    return found


def test_every_gate_and_server_key_is_documented() -> None:
    text = DOC.read_text(encoding="utf-8")
    gate, server = text.split("## server.toml")
    missing = [
        f"[{table}] {key}"
        for doc, root in ((gate, GateConfig), (server, ServerConfig))
        for table, key in keys(root)
        if f"**[{table}]**" not in doc or f"`{key}`" not in doc
    ]
    assert missing == []
