import pytest
import torch
from torch import nn

from peftkit.core.errors import ConfigError
from peftkit.methods.beft import BeftConfig, BeftLinear


def test_the_output_moves_by_the_trained_bias_and_merging_folds_it_into_b():
    torch.manual_seed(0)
    base = nn.Linear(5, 3)
    layer = BeftLinear(base)
    layer.add_adapter("a", BeftConfig(init_weights=False), "value")
    layer.active_adapters = ["a"]
    beta = layer.beft_bias["a"].detach()
    assert beta.shape == (1, 3)
    x = torch.randn(4, 5)
    expected = x @ base.weight.detach().T + base.bias.detach() + beta[0]
    assert torch.allclose(layer(x), expected, atol=1e-6)
    layer.merge(["a"])
    assert torch.allclose(base(x), expected, atol=1e-6)


def test_merging_a_layer_without_bias_is_refused_in_one_line():
    layer = BeftLinear(nn.Linear(5, 3, bias=False))
    layer.add_adapter("a", BeftConfig(), "value")
    with pytest.raises(ConfigError, match="without a bias") as error:
        layer.merge(["a"])
    assert "\n" not in str(error.value)


def test_a_bad_init_weights_value_is_refused_in_one_line():
    with pytest.raises(ConfigError, match="init_weights") as error:
        BeftConfig(init_weights="yes")
    assert "\n" not in str(error.value)
