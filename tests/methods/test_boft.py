import peft.tuners.boft.layer as peft_boft
import pytest
import torch
from torch import nn

import peftkit
from peftkit.core.errors import ConfigError
from peftkit.methods.boft import BOFTConfig, butterfly_order
from tests.methods.peft_cross import outputs_cross_with_peft


class BlockDiagonalKernel:
    """What peft's CUDA extension computes (output[z] = block_diag(input[z])), on any device: without it peft drops
    to one butterfly factor."""

    @staticmethod
    def forward(blocks):
        return [torch.stack([torch.block_diag(*factor) for factor in blocks])]


def one_layer(**options):
    torch.manual_seed(0)
    model = peftkit.get_peft_model(nn.Sequential(nn.Linear(8, 5)).double(), BOFTConfig(target_modules=["0"], **options))
    layer = model.get_base_model()[0]
    with torch.no_grad():
        layer.boft_R["default"].normal_(0, 0.3)
        layer.boft_s["default"].normal_(1, 0.3)
    return layer


def cayley_blocks(free):
    skew = (free - free.transpose(-1, -2)) / 2
    eye = torch.eye(free.shape[-1], dtype=free.dtype)
    return [torch.block_diag(*[(eye - s) @ torch.linalg.inv(eye + s) for s in factor]) for factor in skew]


def test_one_factor_rotates_blocks_of_the_input_and_scales_the_output_without_the_bias():
    layer = one_layer(boft_block_size=4)
    (rotation,) = cayley_blocks(layer.boft_R["default"].detach())
    scale = layer.boft_s["default"].detach().flatten()
    base = layer.base_layer
    x = torch.randn(3, 8, dtype=torch.float64)
    assert torch.allclose(layer(x), scale * (x @ rotation @ base.weight.T) + base.bias, atol=1e-12)


def test_two_factors_interleave_half_blocks_between_the_rotations():
    layer = one_layer(boft_block_size=2, boft_n_butterfly_factor=2)
    first, second = cayley_blocks(layer.boft_R["default"].detach())
    order = [0, 2, 1, 3, 4, 6, 5, 7]  # stretches of 4 features, half-blocks of 1: evens, then odds
    assert butterfly_order(8, 4, 1).tolist() == order
    butterfly = second[order][:, order] @ first
    scale, base = layer.boft_s["default"].detach().flatten(), layer.base_layer
    x = torch.randn(3, 8, dtype=torch.float64)
    assert torch.allclose(layer(x), scale * (x @ butterfly @ base.weight.T) + base.bias, atol=1e-12)


@pytest.mark.parametrize("options", [{"boft_block_size": 4, "boft_n_butterfly_factor": 3},
                                     {"boft_block_num": 4, "boft_block_size": 0, "boft_n_butterfly_factor": 2}],
                         ids=str)
def test_butterfly_factors_cross_with_peft_s_kernel(options, tmp_path, monkeypatch):
    monkeypatch.setattr(peft_boft, "get_fbd_cuda", lambda: BlockDiagonalKernel)
    config = BOFTConfig(target_modules=["query", "value", "output.dense"], **options)
    assert outputs_cross_with_peft(config, tmp_path) <= 1e-6


def test_a_block_size_that_does_not_divide_the_layer_is_refused_in_one_line():
    model = nn.Sequential(nn.Linear(6, 5))
    with pytest.raises(ConfigError, match=r"^0: in_features 6 is not divisible by boft_block_size 4$"):
        peftkit.get_peft_model(model, BOFTConfig(target_modules=["0"], boft_block_size=4))
