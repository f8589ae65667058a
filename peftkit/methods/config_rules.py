"""Checks and per-module settings that many methods' configs share (peft's rules, peft's messages' meaning)."""

from __future__ import annotations

import dataclasses
import re

from peftkit.core.errors import ConfigError


def require_positive(name: str, value, integer: bool = False) -> None:
    kinds = (int,) if integer else (int, float)
    if isinstance(value, bool) or not isinstance(value, kinds) or value <= 0:
        kind = "a positive integer" if integer else "positive"
        raise ConfigError(f"{name} must be {kind}, got {value!r}")


def require_probability(name: str, value) -> None:
    """A dropout rate: a number in [0, 1)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value < 1:
        raise ConfigError(f"{name} must be in [0, 1), got {value!r}")


def require_choice(name: str, value, choices: tuple) -> None:
    if value not in choices:
        raise ConfigError(f"{name} must be one of {', '.join(repr(c) for c in choices)}, got {value!r}")


def pattern_value(patterns: dict, module_name: str, default):
    """peft's rule for ``rank_pattern`` / ``alpha_pattern``: the first pattern that matches the end of the module
    name at a dot boundary gives the value; otherwise ``default``."""
    for pattern, value in patterns.items():
        if re.match(rf"(?:^|.*\.){pattern}$", module_name):
            return value
    return default


def sub_config(name: str, value, settings_cls: type) -> dict:
    """A nested settings object of peft's (``loftq_config``, ``eva_config``, ``corda_config``) given as its dataclass
    or a mapping: a dict with the dataclass's defaults filled in; an unknown key is refused."""
    values = dataclasses.asdict(value) if dataclasses.is_dataclass(value) else dict(value or {})
    known = [item.name for item in dataclasses.fields(settings_cls)]
    unknown = sorted(set(values) - set(known))
    if unknown:
        raise ConfigError(f"{name} has unknown key(s) {', '.join(unknown)}; it takes {', '.join(known)}")
    return {**dataclasses.asdict(settings_cls()), **values}
