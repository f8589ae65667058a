import math

import pytest
import torch
from torch import nn

from peftkit.core.errors import ConfigError
from peftkit.methods.fourierft import FourierFTConfig, FourierFTLinear


def test_the_update_is_the_scaled_real_inverse_dft_of_the_sparse_spectrum():
    torch.manual_seed(0)
    layer = FourierFTLinear(nn.Linear(6, 4))
    layer.add_adapter("a", FourierFTConfig(n_frequency=7, scaling=3.0, random_loc_seed=5), "q")
    rows, columns = layer.positions["a"]
    assert len({(int(u), int(v)) for u, v in zip(rows, columns)}) == 7
    coefficients = layer.fourierft_spectrum["a"].detach().double()
    expected = torch.zeros(4, 6, dtype=torch.float64)
    for p in range(4):
        for q in range(6):
            expected[p, q] = sum(c * math.cos(2 * math.pi * (u * p / 4 + v * q / 6))
                                 for c, u, v in zip(coefficients.tolist(), rows.tolist(), columns.tolist()))
    expected *= 3.0 / (4 * 6)
    assert torch.allclose(layer.update("a").double(), expected, atol=1e-6)


def test_a_zero_n_frequency_is_refused_in_one_line():
    with pytest.raises(ConfigError, match="n_frequency") as error:
        FourierFTConfig(n_frequency=0)
    assert "\n" not in str(error.value)
