import pytest
import torch
from torch import nn

from peftkit.core.errors import ConfigError
from peftkit.methods.peanut import PeanutConfig, PeanutLinear


def test_the_update_is_the_network_of_the_frozen_weight_and_unmerging_restores_it():
    torch.manual_seed(0)
    base = nn.Linear(5, 4).double()
    layer = PeanutLinear(base)
    layer.add_adapter("a", PeanutConfig(r=3, depth=2, act_fn="tanh", scaling=0.5, init_weights=False), "q")
    a, b = layer.peanut_A["a"].weight.detach(), layer.peanut_B["a"].weight.detach()
    e = [m.weight.detach() for m in layer.peanut_encoders["a"]]
    d = [m.weight.detach() for m in layer.peanut_decoders["a"]]
    w = base.weight.detach().clone()
    z0 = torch.tanh(w.T @ a.T)
    z1 = torch.tanh(z0 @ e[0].T)
    z2 = torch.tanh(z1 @ e[1].T)
    z = torch.tanh(z2 @ d[0].T) + z1
    z = torch.tanh(z @ d[1].T) + z0
    expected = 0.5 * (z @ b.T).T
    assert torch.allclose(layer.update("a").detach(), expected, atol=1e-6)
    layer.active_adapters = ["a"]
    x = torch.randn(3, 5, dtype=torch.float64)
    assert torch.allclose(layer(x), base(x) + x @ expected.T, atol=1e-6)
    layer.merge(["a"])
    assert torch.allclose(base.weight, w + expected, atol=1e-6)
    layer.unmerge()
    assert torch.equal(base.weight, w)


def test_an_unknown_activation_is_refused_in_one_line():
    with pytest.raises(ConfigError, match="act_fn") as error:
        PeanutConfig(act_fn="nope")
    assert "\n" not in str(error.value)
