"""What each ``peftkit train`` option may hold: one table, checked when ``TrainOptions`` is made, so the command
line, a YAML / JSON config file and Python callers get the same one-line error before anything loads."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from peftkit.core.errors import ConfigError

TASKS = ("classification", "token-classification", "causal-lm")
RECIPES = ("pet", "list", "mlm", "self-evolution", "keyphrase")


@dataclass(frozen=True)
class Rule:
    accepts: Callable[[Any], bool]
    description: str
    optional: bool = False  # None is allowed


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def whole(minimum: int, optional: bool = False) -> Rule:
    return Rule(lambda v: isinstance(v, int) and not isinstance(v, bool) and v >= minimum,
                f"a whole number ≥ {minimum}", optional)


def positive(optional: bool = False) -> Rule:
    return Rule(lambda v: _is_number(v) and v > 0, "a finite number > 0", optional)


def at_least_zero() -> Rule:
    return Rule(lambda v: _is_number(v) and v >= 0, "a finite number ≥ 0")


def between_zero_and_one() -> Rule:
    return Rule(lambda v: _is_number(v) and 0 < v < 1, "a number between 0 and 1 (exclusive)")


def choice(values: tuple[str, ...], optional: bool = False) -> Rule:
    return Rule(lambda v: v in values, f"one of {', '.join(values)}", optional)


def text(optional: bool = True) -> Rule:
    return Rule(lambda v: isinstance(v, str) and v != "", "a non-empty text", optional)


def flag() -> Rule:
    return Rule(lambda v: isinstance(v, bool), "true or false")


RULES: dict[str, Rule] = {
    "task": choice(TASKS), "recipe": choice(RECIPES, optional=True), "train": text(), "eval": text(),
    "model": text(), "method": text(optional=False), "epochs": positive(optional=True),
    "max_steps": whole(1, optional=True), "lr": positive(optional=True), "batch_size": whole(1, optional=True),
    "max_length": whole(1, optional=True), "seed": whole(0),
    "bf16": flag(), "output": text(optional=False), "text_column": text(), "text_pair_column": text(),
    "label_column": text(), "eval_text_column": text(), "eval_text_pair_column": text(),
    "eval_label_column": text(), "eval_fraction": between_zero_and_one(),
    "method_options": Rule(lambda v: isinstance(v, dict), "a mapping of method options"),
    "density_loss": at_least_zero(), "init_prompt": text(), "teacher": text(), "distill_weight": at_least_zero(),
    "pattern": text(), "verbalizer": Rule(lambda v: isinstance(v, (dict, str)), "a mapping of label -> word(s)",
                                          optional=True),
    "shots": whole(1), "unlabelled": whole(1, optional=True), "rounds": whole(1), "save_steps": whole(1, optional=True),
    "resume": flag(), "overwrite": flag(), "gradient_checkpointing": flag(), "fsdp": flag(),
    "packing": choice(("auto", "on", "off")),
}


def check_options(values: dict[str, Any]) -> None:
    """A ``ConfigError`` naming the first option whose value its rule refuses (the flag and the config key)."""
    for name, value in values.items():
        rule = RULES[name]
        if value is None and rule.optional:
            continue
        if not rule.accepts(value):
            flag_name = "--" + name.replace("_", "-")
            raise ConfigError(f"{name} ({flag_name}) must be {rule.description}, got {value!r}")
