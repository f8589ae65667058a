"""The training budget chosen from the data: batch size by row count, epochs until 6,000 rows are seen, max
length from the tokenised lengths; what the user or the recipe gives wins."""

from __future__ import annotations

import dataclasses

import pytest

from peftkit.recipes.budget import fixed_budget, settle_budget
from peftkit.recipes.training import TrainOptions


@pytest.mark.parametrize("rows, batch, epochs", [
    (40, 8, 30.0),  # 150 passes wanted, at most 30
    (194, 8, 30.0),  # CommitmentBank-sized
    (499, 8, 13.0),  # ceil(6000 / 499)
    (2213, 8, 3.0),  # RTE-sized
    (4999, 8, 2.0),
    (5000, 16, 2.0),
    (6920, 16, 1.0),  # the bundled SST-2
    (49_999, 16, 1.0),
    (50_000, 32, 1.0),
])
def test_batch_size_and_epochs_follow_the_row_count(rows, batch, epochs):
    options, budget = settle_budget(TrainOptions(), rows, [10] * rows, None)
    assert (options.batch_size, options.epochs) == (batch, epochs)
    assert (budget.batch_size, budget.epochs) == (batch, epochs)


@pytest.mark.parametrize("lengths, expected", [
    ([5] * 100, 64),
    ([24] * 98 + [55, 80], 64),  # 99 of 100 within 64: the longest one is cut
    ([56] * 90 + [197] * 9 + [289], 256),  # the 99th row has 197 tokens
    ([300] * 100, 320),
])
def test_max_length_is_the_multiple_of_64_holding_99_percent_of_the_rows(lengths, expected):
    options, budget = settle_budget(TrainOptions(), len(lengths), lengths, None)
    assert options.max_length == expected
    assert f"the longest has {max(lengths)}" in budget.reasons["max_length"]


def test_the_share_of_rows_held_is_rounded_down_so_a_cut_row_never_shows_as_100_percent():
    _, budget = settle_budget(TrainOptions(), 2000, [100] * 1999 + [129], None)
    assert budget.reasons["max_length"] == "holds 99.9% of the rows; the longest has 129"


def test_the_model_positions_cap_the_length():
    options, budget = settle_budget(TrainOptions(), 100, [900] * 100, 512)
    assert options.max_length == 512 and budget.reasons["max_length"] == "the model's positions"


def test_given_values_win_over_the_recipe_defaults_which_win_over_the_rules():
    given = TrainOptions(batch_size=4, epochs=2.0)
    options, budget = settle_budget(given, 100, [10] * 100, None, {"batch_size": 16, "max_length": 384})
    assert (options.batch_size, options.epochs, options.max_length) == (4, 2.0, 384)
    assert budget.reasons["batch_size"] == "given" and budget.reasons["max_length"] == "the recipe's default"


def test_the_description_counts_the_steps_and_the_warm_up():
    _, budget = settle_budget(TrainOptions(), 194, [72] * 194, 512)
    assert budget.describe() == ("30 epoch(s) = 750 steps (194 rows: passes until 6,000 rows are seen, at most "
                                    "30), batch 8 (194 rows: under 5,000), 128 tokens (holds 100.0% of the rows; the "
                                    "longest has 72), warm-up 45 steps")
    _, budget = settle_budget(TrainOptions(max_steps=7), 194, [72] * 194, 512)
    assert budget.describe().startswith("7 steps (--max-steps)")
    assert dataclasses.replace(budget, processes=2).steps() == 7


def test_fixed_budget_keeps_given_values_and_fills_the_rest():
    options = fixed_budget(TrainOptions(batch_size=4), {"max_length": 64})
    assert (options.batch_size, options.epochs, options.max_length) == (4, 1.0, 64)


def test_a_fixed_length_filled_in_is_lowered_to_the_models_positions(model_dir):
    options = fixed_budget(TrainOptions(model=str(model_dir)))
    assert options.max_length == 32  # the tiny BERT's positions, not 128
    assert fixed_budget(TrainOptions(model=str(model_dir), max_length=200)).max_length == 200  # given: prepare_run's
