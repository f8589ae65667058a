import json
import warnings

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from peftkit import ConfigError, LoraConfig


@pytest.mark.parametrize(
    ("field", "value"),
    [("r", 0), ("r", -2), ("r", 2.5), ("lora_alpha", 0), ("lora_alpha", -1.0), ("lora_dropout", 1.0),
     ("lora_dropout", -0.1), ("bias", "some"), ("init_lora_weights", "loftq"), ("layers_to_transform", [-1])],
)
def test_bad_values_raise_a_value_error_naming_the_field(field, value):
    with pytest.raises(ValueError, match=field):
        LoraConfig(**{field: value})


def test_unknown_field_in_constructor_is_a_value_error_with_a_hint():
    with pytest.raises(ConfigError, match=r"unknown field 'rank'.*did you mean 'r'"):
        LoraConfig(rank=4)


def test_unknown_field_in_a_user_dict_is_an_error():
    with pytest.raises(ConfigError, match="lora_alhpa"):
        LoraConfig.from_dict({"r": 4, "lora_alhpa": 8})


def test_peft_type_mismatch_is_an_error():
    with pytest.raises(ConfigError, match="peft_type"):
        LoraConfig.from_dict({"peft_type": "IA3"})


@settings(max_examples=60, deadline=None)
@given(
    r=st.integers(1, 64),
    alpha=st.one_of(st.integers(1, 128), st.floats(0.01, 100)),
    dropout=st.floats(0, 0.99),
    dora=st.booleans(),
    targets=st.one_of(st.lists(st.sampled_from(["q", "k", "v", "dense"]), min_size=1, unique=True),
                      st.just("all-linear")),
    layers=st.one_of(st.none(), st.lists(st.integers(0, 30), max_size=4)),
)
def test_json_round_trip_is_exact(r, alpha, dropout, dora, targets, layers):
    config = LoraConfig(r=r, lora_alpha=alpha, lora_dropout=dropout, use_dora=dora, target_modules=targets,
                        layers_to_transform=layers, rank_pattern={"q": r + 1})
    again = LoraConfig.from_dict(json.loads(config.to_json()))
    assert again == config


def test_saved_config_with_peft_fields_at_peft_s_defaults_loads_silently(recwarn):
    saved = {**LoraConfig(r=4).to_dict(), "use_qalora": False, "megatron_core": "megatron.core",
             "qalora_group_size": 16}
    config = LoraConfig.from_saved(saved)
    assert config.r == 4 and len(recwarn) == 0


def test_a_peft_field_at_another_value_is_an_error_even_when_it_looks_neutral():
    saved = {**LoraConfig(r=4).to_dict(), "qalora_group_size": 0, "megatron_core": None}
    with pytest.raises(ConfigError, match="qalora_group_size"):
        LoraConfig.from_saved(saved)


def test_fields_no_library_knows_load_with_one_warning_naming_them():
    saved = {**LoraConfig(r=4).to_dict(), "foo_unknown": 1, "new_knob": None}
    with pytest.warns(UserWarning, match="foo_unknown, new_knob"):
        assert LoraConfig.from_saved(saved).r == 4


def test_saved_config_with_an_unknown_field_that_changes_the_computation_is_an_error():
    saved = {**LoraConfig(r=4).to_dict(), "use_qalora": True}
    with pytest.raises(ConfigError, match="use_qalora"):
        LoraConfig.from_saved(saved)


def test_metadata_fields_are_accepted_silently():
    saved = {**LoraConfig(r=4).to_dict(), "peft_version": "0.99.0", "auto_mapping": None}
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert LoraConfig.from_saved(saved).r == 4


def test_config_errors_are_value_errors():
    assert issubclass(ConfigError, ValueError)
