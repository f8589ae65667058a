import pytest
import torch
from torch import nn

import peftkit
from peftkit.core.errors import ConfigError
from peftkit.methods.hra import HRAConfig
from tests.methods.peft_cross import outputs_cross_with_peft


def one_layer(**options):
    torch.manual_seed(0)
    model = peftkit.get_peft_model(nn.Sequential(nn.Linear(6, 5)).double(), HRAConfig(target_modules=["0"], **options))
    layer = model.get_base_model()[0]
    with torch.no_grad():
        layer.hra_u["default"].normal_()
    return layer


def test_the_weight_is_multiplied_by_the_product_of_the_reflections():
    layer = one_layer(r=3)
    vectors = layer.hra_u["default"].detach()
    product = torch.eye(6, dtype=torch.float64)
    for u in vectors.T:
        u = u / u.norm()
        product = product @ (torch.eye(6, dtype=torch.float64) - 2 * torch.outer(u, u))
    base, x = layer.base_layer, torch.randn(4, 6, dtype=torch.float64)
    assert torch.allclose(layer(x), x @ (base.weight @ product).T + base.bias, atol=1e-12)


def test_gram_schmidt_reflects_once_in_the_span_of_the_vectors():
    layer = one_layer(r=3, apply_GS=True)
    basis, _ = torch.linalg.qr(layer.hra_u["default"].detach())
    reflection = torch.eye(6, dtype=torch.float64) - 2 * basis @ basis.T
    base, x = layer.base_layer, torch.randn(4, 6, dtype=torch.float64)
    assert torch.allclose(layer(x), x @ (base.weight @ reflection).T + base.bias, atol=1e-12)


def test_gram_schmidt_crosses_with_peft(tmp_path):
    config = HRAConfig(target_modules=["query", "value", "output.dense"], r=4, apply_GS=True)
    assert outputs_cross_with_peft(config, tmp_path) <= 1e-6


def test_an_even_rank_starts_in_equal_pairs_and_a_bad_rank_is_refused_in_one_line():
    vectors = peftkit.get_peft_model(nn.Sequential(nn.Linear(6, 5)), HRAConfig(target_modules=["0"], r=4)) \
        .get_base_model()[0].hra_u["default"]
    assert torch.equal(vectors[:, 0::2], vectors[:, 1::2]) and vectors.abs().min() > 0
    with pytest.raises(ConfigError, match=r"^r must be a positive integer, got 0$"):
        HRAConfig(r=0)
