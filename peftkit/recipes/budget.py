"""The training budget ``peftkit train`` chooses from the data when the user names none.

One epoch of batches of 32 suits a few thousand rows, not 200: on a 200-row set it is 7 optimiser steps, and
the adapter has barely left its initialisation. So, for each setting the user did not give:

- batch size: 8 below 5,000 training rows, 16 below 50,000, else 32 (small sets get more, noisier updates);
- epochs: enough passes for ``MIN_ROWS_SEEN`` rows to be seen in all (epochs × rows ≥ 6,000), at least one
  epoch and at most ``MAX_EPOCHS``; ``--max-steps`` replaces this;
- max length: the training rows' tokenised lengths, measured before any cut: the smallest multiple of 64 that
  holds 99 % of them, within the model's positions (a longer row is cut there, and counted in a note);
- warm-up: 6 % of the steps (linear schedule), so it grows and shrinks with the budget.

A recipe may start from its own defaults (the settings its benchmark uses) instead of these rules: what the user
gives wins, then the recipe's default, then the rule. ``Budget.describe`` is the line the summary prints.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from dataclasses import dataclass

from peftkit.core.mechanics.sharding import process_count
from peftkit.core.pretrained import position_limit, resolve_causal_lm_dir, resolve_model_dir

MIN_ROWS_SEEN = 6000
MAX_EPOCHS = 30
LENGTH_STEP = 64
LENGTH_SHARE = 0.99
WARMUP_SHARE = 0.06
FIXED = {"epochs": 1.0, "batch_size": 32, "max_length": 128}


@dataclass(frozen=True)
class Budget:
    """The settled budget and, for each setting, why it has its value."""

    epochs: float
    batch_size: int
    max_length: int
    max_steps: int | None
    reasons: dict[str, str]
    rows: int  # training rows
    processes: int = 1  # torchrun / accelerate processes, each taking a batch a step

    def steps(self) -> int:
        if self.max_steps:
            return self.max_steps
        return math.ceil(self.epochs * math.ceil(self.rows / (self.batch_size * self.processes)))

    def describe(self) -> str:
        steps = self.steps()
        length = f"{self.max_length} tokens ({self.reasons['max_length']})"
        size = f"batch {self.batch_size} ({self.reasons['batch_size']})"
        span = (f"{steps} steps (--max-steps)" if self.max_steps else
                f"{self.epochs:g} epoch(s) = {steps} steps ({self.reasons['epochs']})")
        return f"{span}, {size}, {length}, warm-up {max(1, math.ceil(WARMUP_SHARE * steps))} steps"


def settle_budget(options, rows: int, lengths: Sequence[int], position_limit: int | None,
                  recipe_defaults: dict | None = None):
    """(options with epochs, batch size and max length settled, the ``Budget``) for ``rows`` training rows of
    the tokenised ``lengths`` (uncut), the model taking at most ``position_limit`` positions (None: no limit)."""
    defaults = recipe_defaults or {}
    reasons = {}
    batch_size, reasons["batch_size"] = _pick(options.batch_size, defaults.get("batch_size"),
                                              lambda: _batch_for(rows))
    epochs, reasons["epochs"] = _pick(options.epochs, defaults.get("epochs"),
                                      lambda: _epochs_for(rows))
    max_length, reasons["max_length"] = _pick(options.max_length, defaults.get("max_length"),
                                              lambda: _length_for(lengths))
    if position_limit is not None and max_length > position_limit:
        max_length, reasons["max_length"] = position_limit, "the model's positions"
    budget = Budget(epochs=epochs, batch_size=batch_size, max_length=max_length, max_steps=options.max_steps,
                    reasons=reasons, rows=rows, processes=process_count())
    return dataclasses.replace(options, epochs=epochs, batch_size=batch_size, max_length=max_length), budget


def fixed_budget(options, recipe_defaults: dict | None = None):
    """``options`` with an unset epochs, batch size or max length given the recipe's default, else one epoch
    of batches of 32 at 128 tokens: for the recipes whose budget does not follow the data (PET, masked-LM
    pre-training, LiST, transfer). A length filled in is lowered to the model's positions, as a given one is
    before the run (``prepare_run``)."""
    settled = {**FIXED, **(recipe_defaults or {})}
    unset = {name: value for name, value in settled.items() if getattr(options, name) is None}
    if "max_length" in unset:
        model_dir = (resolve_causal_lm_dir if options.task == "causal-lm" else resolve_model_dir)(options.model)
        limit = position_limit(model_dir)
        unset["max_length"] = min(unset["max_length"], limit) if limit is not None else unset["max_length"]
    return dataclasses.replace(options, **unset)


def _pick(given, recipe_default, rule):
    if given is not None:
        return given, "given"
    if recipe_default is not None:
        return recipe_default, "the recipe's default"
    return rule()


def _batch_for(rows: int) -> tuple[int, str]:
    if rows < 5000:
        return 8, f"{rows:,} rows: under 5,000"
    if rows < 50_000:
        return 16, f"{rows:,} rows: under 50,000"
    return 32, f"{rows:,} rows"


def _epochs_for(rows: int) -> tuple[float, str]:
    epochs = min(MAX_EPOCHS, max(1, math.ceil(MIN_ROWS_SEEN / rows)))
    if epochs == 1:
        return 1.0, f"{rows:,} rows: one pass sees at least {MIN_ROWS_SEEN:,}"
    most = f", at most {MAX_EPOCHS}" if epochs == MAX_EPOCHS else ""
    return float(epochs), f"{rows:,} rows: passes until {MIN_ROWS_SEEN:,} rows are seen{most}"


def _length_for(lengths: Sequence[int]) -> tuple[int, str]:
    ordered = sorted(lengths)
    covered = ordered[max(0, math.ceil(LENGTH_SHARE * len(ordered)) - 1)] if ordered else LENGTH_STEP
    length = max(LENGTH_STEP, LENGTH_STEP * math.ceil(covered / LENGTH_STEP))
    longest = ordered[-1] if ordered else 0
    held = sum(n <= length for n in ordered)
    share = math.floor(1000 * held / max(1, len(ordered))) / 10  # rounded down: 100% only when every row fits
    return length, f"holds {share:.1f}% of the rows; the longest has {longest}"
