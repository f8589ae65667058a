import pytest
import torch
from torch import nn

from peftkit.core.errors import ConfigError
from peftkit.methods.delora import DeloraConfig, DeloraLinear


def test_the_update_is_a_sum_of_normalised_rank_one_terms_bounded_by_lambda():
    torch.manual_seed(0)
    base = nn.Linear(6, 5)
    layer = DeloraLinear(base)
    layer.add_adapter("a", DeloraConfig(r=3, delora_lambda=2.0, init_weights=False), "q")
    a, b = layer.delora_A["a"].detach(), layer.delora_B["a"].detach()
    column_norms = torch.stack([base.weight[:, j].norm() for j in range(6)]).detach()
    expected = torch.zeros(5, 6)
    for i in range(3):
        expected += 2.0 / 3 * torch.outer(b[:, i], a[i]) / (a[i].norm() * b[:, i].norm())
    expected = expected * column_norms
    update = layer.update("a").detach()
    assert torch.allclose(update, expected, atol=1e-6)
    assert update.norm() <= 2.0 * column_norms.max() + 1e-6
    assert torch.allclose(layer.delora_w_norm["a"], column_norms) and not layer.delora_w_norm["a"].requires_grad
    layer.active_adapters = ["a"]
    x = torch.randn(4, 6)
    assert torch.allclose(layer(x), base(x) + x @ expected.T, atol=1e-6)


def test_a_negative_lambda_is_refused_in_one_line():
    with pytest.raises(ConfigError, match="delora_lambda") as error:
        DeloraConfig(delora_lambda=-1)
    assert "\n" not in str(error.value)
