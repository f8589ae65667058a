import pytest
import torch
from torch import nn

from peftkit.core.errors import ConfigError
from peftkit.methods.c3a import C3AConfig, C3ALinear


def test_each_output_slice_is_a_sum_of_circular_correlations_of_the_input_slices():
    torch.manual_seed(0)
    layer = C3ALinear(nn.Linear(6, 9))
    layer.add_adapter("a", C3AConfig(block_size=3, init_weights="gaussian"), "q")
    layer.active_adapters = ["a"]
    kernel = layer.c3a_kernel["a"].detach()  # 3 × 2 × 3
    x = torch.randn(4, 6)
    expected = torch.zeros(4, 9)
    for m in range(3):
        for n in range(2):
            for t in range(3):
                expected[:, 3 * m + t] += sum(kernel[m, n, k] * x[:, 3 * n + (t + k) % 3] for k in range(3)) / 6
    assert torch.allclose(layer.update_output("a", x).detach(), expected, atol=1e-6)
    assert torch.allclose(x @ layer.update("a").detach().T, expected, atol=1e-6)
    assert torch.allclose(layer(x), layer.base_layer(x) + expected, atol=1e-6)


def test_a_block_size_that_is_not_positive_is_refused_in_one_line():
    with pytest.raises(ConfigError, match="block_size") as error:
        C3AConfig(block_size=0)
    assert "\n" not in str(error.value)
