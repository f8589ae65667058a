"""peft's DEFT type: the adapted weight is (I − P_proj) W + s · Q_P R, for both projections and for PaRa."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from peftkit.core.errors import ConfigError
from peftkit.methods.deft import DeftConfig, DeftLinear


def layer_with(config: DeftConfig) -> DeftLinear:
    torch.manual_seed(0)
    layer = DeftLinear(nn.Linear(24, 16).double())
    layer.add_adapter("a", config, "proj")
    layer.active_adapters = ["a"]
    with torch.no_grad():
        for parameter in (layer.deft_P["a"], *layer.deft_R.values()):
            parameter.normal_()
    return layer.eval()


@pytest.mark.parametrize("method", ["relu", "qr"])
def test_the_layer_computes_the_residual_projection_of_the_weight_plus_the_injection(method):
    layer = layer_with(DeftConfig(r=4, alpha=8, decomposition_method=method))
    p, r, w = layer.deft_P["a"], layer.deft_R["a"], layer.base_layer.weight
    q = torch.linalg.qr(p)[0] if method == "qr" else p
    right = q if method == "qr" else torch.relu(p)
    adapted = (torch.eye(16, dtype=w.dtype) - q @ right.T) @ w + (8 / 4) * q @ r
    x = torch.randn(3, 24, dtype=w.dtype)
    assert torch.allclose(layer(x), x @ adapted.T + layer.base_layer.bias, atol=1e-9)
    assert torch.allclose(layer.delta_weight("a"), adapted - w, atol=1e-9)


def test_para_removes_the_subspace_and_injects_nothing():
    layer = layer_with(DeftConfig(r=3, para=True))
    assert list(layer.adapter_state_dict("a")) == ["deft_P"]
    p, w = layer.deft_P["a"], layer.base_layer.weight
    assert torch.allclose(layer.delta_weight("a"), -(p @ torch.relu(p).T) @ w, atol=1e-9)


def test_the_identity_start_holds_for_a_rank_above_the_output_width():
    torch.manual_seed(0)
    layer = DeftLinear(nn.Linear(24, 16))
    layer.add_adapter("a", DeftConfig(r=32), "proj")
    layer.active_adapters = ["a"]
    assert layer.deft_P["a"].shape == (16, 16)
    x = torch.randn(2, 24)
    assert torch.allclose(layer(x), layer.base_layer(x), atol=1e-5)


@pytest.mark.parametrize("field, value", [("decomposition_method", "svd"), ("deft_dropout", 1.0), ("r", 0)])
def test_bad_values_are_refused_in_one_line_naming_the_field(field, value):
    with pytest.raises(ConfigError, match=field) as error:
        DeftConfig(**{field: value})
    assert "\n" not in str(error.value)
