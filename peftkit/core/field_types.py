"""A config field's value checked against the field's annotation, so a value of the wrong kind (``rank_pattern=5``,
``r="eight"``) is a one-line ``ConfigError`` naming the field when the config is made, not a crash inside a
method later. Lenient where files and YAML are: an int is a float, a tuple or set is a list, an enum member
is its string."""

from __future__ import annotations

import dataclasses
import enum
import functools
import types
import typing
from typing import Any

from peftkit.core.errors import ConfigError

_NAMES = {bool: "true or false", int: "a whole number", float: "a number", str: "a text", dict: "a mapping",
          list: "a list", type(None): "none"}


def _accepts(annotation: Any, value: Any) -> bool:
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        return any(_accepts(option, value) for option in typing.get_args(annotation))
    if annotation is Any:
        return True
    if annotation is type(None):
        return value is None
    if annotation is bool:
        return isinstance(value, bool)
    if annotation is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if annotation is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if annotation is str:
        return isinstance(value, str)
    if annotation is dict or origin is dict:
        if not isinstance(value, dict):
            return False
        args = typing.get_args(annotation)
        return not args or all(_accepts(args[0], k) and _accepts(args[1], v) for k, v in value.items())
    if annotation is list or origin is list:
        if not isinstance(value, (list, tuple, set)):
            return False
        args = typing.get_args(annotation)
        return not args or all(_accepts(args[0], item) for item in value)
    return True  # an annotation this check does not read (a class of its own): the method's validate() checks it


def describe(annotation: Any) -> str:
    """``list[str] | str | None`` -> "a list of texts, a text or none"."""
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        parts = [describe(option) for option in typing.get_args(annotation)]
        return ", ".join(parts[:-1]) + " or " + parts[-1]
    if origin is list:
        return f"a list of {_plural(describe(typing.get_args(annotation)[0]).removeprefix('a '))}"
    if origin is dict:
        key, value = typing.get_args(annotation)
        return f"a mapping of {describe(key).removeprefix('a ')} to {describe(value).removeprefix('a ')}"
    return _NAMES.get(annotation, getattr(annotation, "__name__", str(annotation)))


def _plural(phrase: str) -> str:
    """"whole number" -> "whole numbers", "list of texts" -> "lists of texts"."""
    head, of, rest = phrase.partition(" of ")
    return f"{head}s{of}{rest}"


@functools.cache
def _field_types(cls: type) -> dict[str, Any]:
    hints = typing.get_type_hints(cls)
    return {f.name: hints[f.name] for f in dataclasses.fields(cls)}


def check_field_types(config: Any) -> None:
    """Raise ``ConfigError`` for the first field of the dataclass ``config`` whose value its annotation refuses."""
    for name, annotation in _field_types(type(config)).items():
        value = getattr(config, name)
        if isinstance(value, enum.Enum):
            value = value.value
        if not _accepts(annotation, value):
            raise ConfigError(f"{type(config).__name__}.{name} must be {describe(annotation)}, got {value!r}")
