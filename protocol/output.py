"""How every `menwei` command prints a result: one JSON object with `--json` (the contract
operators' scripts read), else `key: value` lines for people. Pure formatting, no I/O."""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any


def render(result: Mapping[str, Any], as_json: bool) -> str:
    if as_json:
        return json.dumps(result, ensure_ascii=False)
    return "\n".join(f"{key}: {value}" for key, value in result.items())
