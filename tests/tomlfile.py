"""Writing the TOML files the tests vary: tables of plain values, as tomllib reads them back
(also nan and inf, which TOML allows and Menwei's configurations refuse)."""

from __future__ import annotations

import json
import math
import tomllib
from pathlib import Path
from typing import Any


def toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return {math.inf: "inf", -math.inf: "-inf"}.get(value, repr(value))  # nan: "nan"
    if isinstance(value, str):
        return json.dumps(value)
    if isinstance(value, list):
        return "[" + ", ".join(map(toml_value, value)) + "]"
    return str(value)


def rewrite(source: Path, target: Path, overrides: dict[str, Any]) -> Path:
    """`source` with `overrides` ("table.key" -> value) written to `target` (may be `source`)."""
    tables = tomllib.loads(source.read_text(encoding="utf-8"))
    for dotted, value in overrides.items():
        table, key = dotted.split(".")
        tables.setdefault(table, {})[key] = value
    lines = []
    for table, keys in tables.items():
        lines.append(f"[{table}]")
        lines += [f"{key} = {toml_value(value)}" for key, value in keys.items()]
    target.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return target
