"""Every configuration key is documented in docs/configuration.md, under its own table, and
every number has a range, documented on its key's line (policy keys: docs/policy.md)."""

from __future__ import annotations

import dataclasses
import types
import typing
from pathlib import Path

from edge.config import GateConfig, GpioSection
from protocol.policy import Policy
from protocol.schema import ranges
from server.config import ServerConfig

DOC = Path(__file__).resolve().parents[1] / "docs" / "configuration.md"
POLICY_DOC = DOC.with_name("policy.md")


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


def sections(root: type) -> list[tuple[str, type]]:
    hints = typing.get_type_hints(root)
    return [
        (f.name, hints[f.name])
        for f in dataclasses.fields(root)
        if dataclasses.is_dataclass(hints[f.name])
    ]


def numbers(section: type) -> list[str]:
    """The fields of `section` that hold a number (int or float, perhaps optional)."""
    found = []
    for f in dataclasses.fields(section):
        tp = typing.get_type_hints(section)[f.name]
        options = typing.get_args(tp) if isinstance(tp, types.UnionType) else (tp,)
        if {int, float} & set(options):
            found.append(f.name)
    return found


def test_every_number_has_a_range() -> None:
    """Issue 11: nan, inf, 1e9 and negatives passed where they mean nothing."""
    unbounded = [
        f"[{table}] {key}"
        for root in (GateConfig, ServerConfig)
        for table, section in sections(root)
        for key in numbers(section)
        if key not in ranges(section)
    ]
    assert unbounded == []
    assert numbers(GpioSection) and "relay_pin" in ranges(GpioSection)  # the check sees them


def test_every_range_is_documented_on_its_key_s_line() -> None:
    text = DOC.read_text(encoding="utf-8")
    gate, server = text.split("## server.toml")
    policy = POLICY_DOC.read_text(encoding="utf-8")
    missing = []
    for doc, root in ((gate, GateConfig), (server, ServerConfig)):
        for table, section in sections(root):
            page = policy if section is Policy else doc
            mark = "{key} =" if section is Policy else "`{key}`"
            for key, limit in ranges(section).items():
                lines = [line for line in page.splitlines() if mark.format(key=key) in line]
                if not any(str(limit) in line for line in lines):
                    missing.append(f"[{table}] {key}: {limit}")
    assert missing == []
