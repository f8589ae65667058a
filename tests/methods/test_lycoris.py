"""LoHa's and LoKr's updates against their formulas, their low-rank factor forms against peft, and their dropouts."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import peftkit
from peftkit.core.errors import ConfigError
from peftkit.methods.loha import LoHaConfig, LoHaLinear
from peftkit.methods.lokr import LoKrConfig, LoKrLinear, factor_pair
from tests.conftest import randomize_trainable, tiny_batch, tiny_model


def layer_with(layer_cls, config, base=None):
    torch.manual_seed(0)
    layer = layer_cls(base or nn.Linear(48, 32))
    layer.add_adapter("a", config, "mlp.proj")
    layer.active_adapters = ["a"]
    for parameter in layer.parameters():
        if parameter.requires_grad:
            torch.nn.init.normal_(parameter)
    return layer.eval()


def test_loha_update_is_the_scaled_hadamard_product_of_two_low_rank_products():
    layer = layer_with(LoHaLinear, LoHaConfig(r=4, alpha=8))
    a1, b1, a2, b2 = (getattr(layer, f"hada_{n}")["a"] for n in ("w1_a", "w1_b", "w2_a", "w2_b"))
    expected = (8 / 4) * (a1 @ b1) * (a2 @ b2)
    x = torch.randn(3, 48)
    assert torch.allclose(layer(x), layer.base_layer(x) + x @ expected.T, atol=1e-4)


def test_lokr_low_rank_factors_give_the_scaled_kronecker_product():
    config = LoKrConfig(r=1, alpha=3, decompose_both=True, decompose_factor=4)
    layer = layer_with(LoKrLinear, config, nn.Linear(64, 32))
    assert sorted(layer.adapter_state_dict("a")) == ["lokr_w1_a", "lokr_w1_b", "lokr_w2_a", "lokr_w2_b"]
    w1 = layer.lokr_w1_a["a"] @ layer.lokr_w1_b["a"]
    w2 = layer.lokr_w2_a["a"] @ layer.lokr_w2_b["a"]
    assert w1.shape == (4, 4) and w2.shape == (8, 16)  # 32 = 4·8, 64 = 4·16
    assert torch.allclose(layer.delta_weight("a"), 3.0 * torch.kron(w1, w2), atol=1e-5)


@pytest.mark.parametrize("dimension, factor, pair", [(32, -1, (4, 8)), (48, -1, (6, 8)), (13, -1, (1, 13)),
                                                     (64, 4, (4, 16)), (30, 4, (3, 10))])
def test_lokr_factors_each_width_near_a_square_or_by_the_given_factor(dimension, factor, pair):
    assert factor_pair(dimension, factor) == pair


def test_lokr_low_rank_form_round_trips_through_peft(tmp_path):
    import peft

    config = LoKrConfig(r=2, alpha=4, decompose_both=True, target_modules=["q_proj", "v_proj", "down_proj"])
    model = peftkit.get_peft_model(tiny_model("llama").double(), config)
    randomize_trainable(model)
    with torch.no_grad():
        expected = model(**tiny_batch()).logits
    model.save_pretrained(tmp_path)
    theirs = peft.PeftModel.from_pretrained(tiny_model("llama").double(), tmp_path).eval()
    assert any("lokr_w2_a" in key for key in theirs.state_dict())
    with torch.no_grad():
        assert torch.allclose(theirs(**tiny_batch()).logits, expected, atol=1e-5)


def test_rank_dropout_zeroes_whole_output_rows_of_the_update_in_training_only():
    layer = layer_with(LoHaLinear, LoHaConfig(r=4, rank_dropout=0.5))
    x = torch.randn(5, 48)
    layer.train()
    torch.manual_seed(1)
    update = layer(x) - layer.base_layer(x)
    dropped = (update.abs().sum(0) == 0)
    assert 0 < dropped.sum() < 32  # some output units lose their whole update
    layer.eval()
    assert ((layer(x) - layer.base_layer(x)).abs().sum(0) > 0).all()


def test_module_dropout_one_minus_epsilon_skips_the_update_while_training():
    layer = layer_with(LoKrLinear, LoKrConfig(module_dropout=0.999999))
    x = torch.randn(2, 48)
    layer.train()
    assert torch.equal(layer(x), layer.base_layer(x))


@pytest.mark.parametrize("config_cls, field, value", [(LoHaConfig, "rank_dropout", 1.5), (LoKrConfig, "r", 0),
                                                      (LoKrConfig, "decompose_factor", 0),
                                                      (LoKrConfig, "init_weights", "gaussian")])
def test_bad_values_are_refused_in_one_line_naming_the_field(config_cls, field, value):
    with pytest.raises(ConfigError, match=field) as error:
        config_cls(**{field: value})
    assert "\n" not in str(error.value)
