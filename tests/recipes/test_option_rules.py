"""Every ``peftkit train`` option is checked before anything loads: from Python, a config file and the command
line alike, a bad value is one line naming the option (exit 2 on the command line)."""

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from peftkit.cli import main
from peftkit.core.errors import ConfigError
from peftkit.recipes.option_rules import RULES
from peftkit.recipes.training import TrainOptions

NOT_WHOLE = [0, -1, 2.5, "two", True, float("nan")]
NOT_POSITIVE = [0, -1, -0.5, float("nan"), float("inf"), "fast", True]
BAD_VALUES = {
    "task": ["regression", "", 3, None],
    "recipe": ["distil", "", 1],
    "method": ["", 5, None],
    "epochs": NOT_POSITIVE,  # None: chosen from the data
    "max_steps": NOT_WHOLE,
    "lr": NOT_POSITIVE,
    "batch_size": NOT_WHOLE,  # None: chosen from the data
    "max_length": NOT_WHOLE,
    "seed": [-1, 1.5, "x", None],
    "bf16": ["yes", 1, None],
    "output": ["", 3, None],
    "train": ["", 3, ["a.csv"]],
    "eval": ["", 4.0],
    "model": ["", 7],
    "text_column": ["", 1],
    "text_pair_column": ["", 2],
    "label_column": ["", 0],
    "eval_text_column": ["", 1],
    "eval_text_pair_column": ["", 2],
    "eval_label_column": ["", 3],
    "eval_fraction": [0, 1, 1.5, -0.1, float("nan"), "tenth"],
    "method_options": [None, "r=8", 3, ["r", 8]],
    "density_loss": [-1, float("nan"), float("inf"), "lots", None],
    "distill_weight": [-0.1, float("nan"), "half", None],
    "init_prompt": ["", 1],
    "teacher": ["", 2],
    "pattern": ["", 3],
    "verbalizer": [3, ["great"], 1.5],
    "shots": NOT_WHOLE,
    "unlabelled": NOT_WHOLE,
    "rounds": NOT_WHOLE,
    "save_steps": NOT_WHOLE,
    "resume": ["no", 0],
    "overwrite": ["yes", 1],
    "gradient_checkpointing": ["on", 1],
    "fsdp": ["true", 2],
    "packing": ["yes", True, "", None],
}
CASES = [(name, value) for name, values in BAD_VALUES.items() for value in values]


def test_every_option_has_a_rule_and_bad_values_here():
    fields = set(TrainOptions.__dataclass_fields__)
    assert set(RULES) == fields and set(BAD_VALUES) == fields


@pytest.mark.parametrize("name, value", CASES, ids=[f"{n}={v!r}" for n, v in CASES])
def test_a_bad_value_is_a_config_error_naming_the_option(name, value):
    with pytest.raises(ConfigError, match=rf"^{name} \(--{name.replace('_', '-')}\) must be .*, got "):
        TrainOptions(**{name: value})


def _json_safe(value) -> bool:
    try:
        json.dumps(value, allow_nan=False)
    except ValueError:
        return False
    return True


FILE_CASES = [case for case in CASES if _json_safe(case[1])]


@pytest.mark.parametrize("name, value", FILE_CASES, ids=[f"{n}={v!r}" for n, v in FILE_CASES])
def test_a_bad_value_in_a_config_file_is_one_line_and_exit_2(name, value, tmp_path, capsys):
    config = tmp_path / "config.json"
    config.write_text(json.dumps({name: value}))
    output = [] if name == "output" else ["--output", str(tmp_path / "out")]  # a flag would override the file
    assert main(["train", "--config", str(config), *output]) == 2
    error = capsys.readouterr().err
    assert error.count("\n") == 1 and error.startswith(f"peftkit: error: {name} (")
    assert not (tmp_path / "out").exists()


@settings(max_examples=60, deadline=None)
@given(name=st.sampled_from(sorted(RULES)), value=st.one_of(
    st.integers(-5, 5), st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=5), st.booleans(),
    st.none(), st.lists(st.integers(), max_size=2), st.dictionaries(st.text(max_size=3), st.integers(), max_size=2)))
def test_any_value_is_accepted_or_refused_with_a_config_error(name, value):
    """Whatever value an option is given, making the options either works or is a ConfigError — never another
    exception."""
    try:
        TrainOptions(**{name: value})
    except ConfigError as error:
        assert str(error).startswith(f"{name} (")
