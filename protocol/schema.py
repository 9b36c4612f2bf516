"""Strict conversion of plain mappings (TOML tables, JSON objects) into frozen dataclasses.

Used for every configuration file and for the policy document: unknown keys
are errors, every value is type-checked against the field's annotation, and
the message names the file/table and key so an operator can fix it. Supports
the field types configuration needs: str, int, float, bool, Literal[...],
``X | None`` and ``list[str]`` / ``tuple[str, ...]``, and nested dataclasses.
A number is always finite (TOML and Python's JSON read nan and inf); a field
annotated ``Annotated[float, Range(low, high, unit)]`` must also lie in that
closed range (docs/configuration.md lists every one).
"""

from __future__ import annotations

import dataclasses
import functools
import math
import tomllib
import types
import typing
from collections.abc import Mapping
from typing import Any, TypeVar

from protocol.errors import ProtocolError

T = TypeVar("T")


class SchemaError(ProtocolError):
    """A configuration value or key does not fit its schema."""


@dataclasses.dataclass(frozen=True)
class Range:
    """The closed range [low, high] a number field must lie in, and its unit ("s", "°C", or
    "" for a count). Put on a field as ``Annotated[float, Range(0.1, 60, "s")]``."""

    low: float
    high: float
    unit: str = ""

    def __contains__(self, value: object) -> bool:
        return isinstance(value, int | float) and self.low <= value <= self.high

    def __str__(self) -> str:
        """As the documentation writes it: "0.1..60 s", "0..27"."""
        return f"{self.low:g}..{self.high:g}" + (f" {self.unit}" if self.unit else "")


def parse_toml(raw: bytes, where: str) -> dict[str, Any]:
    """A TOML document (bytes as read from a file) or a SchemaError naming `where`."""
    try:
        return tomllib.loads(raw.decode("utf-8"))
    except UnicodeDecodeError as exc:
        raise SchemaError(f"{where}: not UTF-8 text: {exc.reason} at byte {exc.start}") from None
    except tomllib.TOMLDecodeError as exc:
        raise SchemaError(f"{where}: not valid TOML: {exc}") from None


def from_mapping(cls: type[T], data: object, where: str) -> T:
    """Build dataclass `cls` from `data`; `where` names the table for messages."""
    if not isinstance(data, Mapping):
        raise SchemaError(f"{where}: expected a table")
    hints = typing.get_type_hints(cls, include_extras=True)
    known = {f.name for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    unknown = sorted(set(data) - known)
    if unknown:
        raise SchemaError(
            f"{where}: unknown key(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}"
        )
    values = {name: _convert(hints[name], value, f"{where} {name}") for name, value in data.items()}
    try:
        check_ranges(cls, values)
        return cls(**values)
    except (TypeError, ValueError) as exc:
        raise SchemaError(f"{where}: {exc}") from None


@functools.cache
def ranges(cls: type) -> dict[str, Range]:
    """The Range of each field of dataclass `cls` that has one (also of ``X | None`` fields)."""
    found: dict[str, Range] = {}
    for name, tp in typing.get_type_hints(cls, include_extras=True).items():
        for arg in (tp, *typing.get_args(tp)):
            if typing.get_origin(arg) is typing.Annotated:
                for limit in arg.__metadata__:
                    if isinstance(limit, Range):
                        found[name] = limit
    return found


def check_ranges(cls: type, values: Mapping[str, object]) -> None:
    """Raise ValueError naming the first of `values` (field name → value of dataclass `cls`)
    outside its field's Range; None (an unset optional) is in every range."""
    for name, limit in ranges(cls).items():
        value = values.get(name)
        if value is not None and value not in limit:
            raise ValueError(f"{name} must be {limit}, got {value!r}")


def _convert(tp: Any, value: object, where: str) -> Any:
    origin = typing.get_origin(tp)
    if origin is typing.Annotated:
        return _convert(tp.__origin__, value, where)
    if dataclasses.is_dataclass(tp):
        return from_mapping(tp, value, where)  # type: ignore[arg-type]
    if origin is typing.Union or origin is types.UnionType:
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _convert(arg, value, where)
            except SchemaError as exc:
                errors.append(str(exc))
        raise SchemaError(errors[0] if errors else f"{where}: bad value {value!r}")
    if origin is typing.Literal:
        choices = typing.get_args(tp)
        if value not in choices:
            raise SchemaError(f"{where}: {value!r} is not one of {', '.join(map(repr, choices))}")
        return value
    if origin in (list, tuple):
        if not isinstance(value, list | tuple):
            raise SchemaError(f"{where}: expected a list")
        (item,) = typing.get_args(tp)[:1]
        converted = [_convert(item, v, f"{where}[{i}]") for i, v in enumerate(value)]
        return tuple(converted) if origin is tuple else converted
    if tp is bool:
        if not isinstance(value, bool):
            raise SchemaError(f"{where}: expected true or false, got {value!r}")
        return value
    if tp is int:
        if not isinstance(value, int) or isinstance(value, bool):
            raise SchemaError(f"{where}: expected a whole number, got {value!r}")
        return value
    if tp is float:
        if not isinstance(value, int | float) or isinstance(value, bool):
            raise SchemaError(f"{where}: expected a number, got {value!r}")
        if not math.isfinite(value):
            raise SchemaError(f"{where}: expected a finite number, got {value!r}")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise SchemaError(f"{where}: expected a string, got {value!r}")
        return value
    raise SchemaError(f"{where}: unsupported field type {tp!r}")  # a bug in our schema, not input
