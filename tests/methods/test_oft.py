import pytest
import torch
from torch import nn

import peftkit
from peftkit.core.errors import ConfigError
from peftkit.methods.oft import OFTConfig
from tests.methods.peft_cross import outputs_cross_with_peft


def one_layer(in_features=8, **options):
    """A peftkit OFT layer on a seeded float64 Linear(in_features, 5), its generators random."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(in_features, 5)).double()
    model = peftkit.get_peft_model(model, OFTConfig(target_modules=["0"], **options))
    layer = model.get_base_model()[0]
    with torch.no_grad():
        layer.oft_R["default"].weight.normal_(0, 0.3)
    return layer


def skew(vector, k):
    q = torch.zeros(k, k, dtype=vector.dtype)
    q[torch.triu_indices(k, k, 1).unbind()] = vector
    return q - q.T


def test_exact_cayley_rotates_each_block_of_the_input_orthogonally():
    layer = one_layer(oft_block_size=4, use_cayley_neumann=False)
    eye = torch.eye(4, dtype=torch.float64)
    blocks = []
    for vector in layer.oft_R["default"].weight.detach():
        q = skew(vector, 4)
        blocks.append((eye - q) @ torch.linalg.inv(eye + q))
    rotation = torch.block_diag(*blocks)
    assert torch.allclose(rotation.T @ rotation, torch.eye(8, dtype=torch.float64), atol=1e-12)
    x = torch.randn(3, 8, dtype=torch.float64)
    base = layer.base_layer
    assert torch.allclose(layer(x), base(x @ rotation), atol=1e-12)


def test_the_neumann_series_is_peft_s_five_terms():
    layer = one_layer(oft_block_size=8)
    q = skew(layer.oft_R["default"].weight.detach()[0], 8)
    rotation = torch.eye(8, dtype=torch.float64) + 2 * q + 2 * q @ q + 2 * q @ q @ q + q @ q @ q @ q
    x = torch.randn(3, 8, dtype=torch.float64)
    assert torch.allclose(layer(x), layer.base_layer(x @ rotation), atol=1e-12)


@pytest.mark.parametrize("options", [
    {"oft_block_size": 32},  # 48-wide layers: moved to 24, as peft does
    {"r": 4, "oft_block_size": 0},
    {"block_share": True},
    {"use_cayley_neumann": False},
    {"num_cayley_neumann_terms": 3},
    {"coft": True, "eps": 0.5},  # clipped: the random generators are far larger
], ids=str)
def test_settings_beyond_the_defaults_cross_with_peft(options, tmp_path):
    options = {"oft_block_size": 16, **options}
    config = OFTConfig(target_modules=["query", "value", "output.dense"], **options)
    assert outputs_cross_with_peft(config, tmp_path) <= 1e-6


def test_coft_clips_each_block_to_its_norm_bound():
    layer = one_layer(oft_block_size=4, coft=True, eps=1e-2)
    layer(torch.randn(2, 8, dtype=torch.float64))
    vectors = layer.oft_R["default"].weight.detach()
    norms = torch.stack([skew(v, 4).norm() for v in vectors])
    assert torch.allclose(norms, torch.full((2,), 1e-2 / 2 ** 0.5, dtype=torch.float64), atol=1e-12)


def test_r_and_block_size_together_are_refused_in_one_line():
    with pytest.raises(ConfigError, match=r"^set exactly one of r \(4\) and oft_block_size \(8\)[^\n]*$"):
        OFTConfig(r=4, oft_block_size=8)
