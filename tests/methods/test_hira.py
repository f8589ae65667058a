import pytest
import torch
from torch import nn

from peftkit.core.errors import ConfigError
from peftkit.methods.hira import HiraConfig, HiraLinear


def test_the_update_is_the_weight_times_the_low_rank_product_entrywise_and_has_full_rank():
    torch.manual_seed(0)
    base = nn.Linear(6, 5)
    layer = HiraLinear(base)
    layer.add_adapter("a", HiraConfig(r=1, init_weights=False), "q")
    a, b = layer.hira_A["a"].detach(), layer.hira_B["a"].detach()
    expected = torch.stack([torch.stack([base.weight[i, j] * b[i, 0] * a[0, j] for j in range(6)]) for i in range(5)])
    update = layer.update("a").detach()
    assert torch.allclose(update, expected.detach(), atol=1e-6)
    assert torch.linalg.matrix_rank(update) == 5  # from a rank-1 product


def test_merging_two_adapters_scales_the_weight_from_before_the_first_and_unmerging_restores_it():
    torch.manual_seed(0)
    base = nn.Linear(6, 5)
    original = base.weight.detach().clone()
    layer = HiraLinear(base)
    for name in ("a", "b"):
        layer.add_adapter(name, HiraConfig(r=2, init_weights=False), "q")
    products = [layer.modulation(n).detach() for n in ("a", "b")]
    layer.merge(["a", "b"])
    assert torch.allclose(base.weight, original * (1 + products[0] + products[1]), atol=1e-5)
    layer.unmerge()
    assert torch.equal(base.weight, original)


def test_an_unknown_init_weights_is_refused_in_one_line():
    with pytest.raises(ConfigError, match="init_weights") as error:
        HiraConfig(init_weights="pissa")
    assert "\n" not in str(error.value)
