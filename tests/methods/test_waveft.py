import math

import peft
import pytest
import torch
from peft.tuners.waveft.layer import WaveFTLinear as PeftWaveFTLinear
from torch import nn

from peftkit.core.errors import ConfigError
from peftkit.methods.waveft import WaveFTConfig, WaveFTLinear


def test_one_detail_coefficient_spreads_as_the_haar_filters_over_its_two_by_two_block():
    layer = WaveFTLinear(nn.Linear(4, 4))
    layer.add_adapter("a", WaveFTConfig(n_frequency=16, scaling=2.0), "q")
    rows, columns = layer.positions["a"]
    with torch.no_grad():  # the coefficient of C_H (top-right quarter) at (p, q) = (1, 0)
        layer.waveft_spectrum["a"].copy_(((rows == 1) & (columns == 2)).float() * 3.0)
    expected = torch.zeros(4, 4)
    expected[2:4, 0:2] = torch.tensor([[1.0, 1.0], [-1.0, -1.0]]) * 3.0 * 2.0 / 2  # hi down the rows, lo across
    assert torch.allclose(layer.update("a").detach(), expected, atol=1e-6)
    assert math.isclose(expected.norm().item(), 6.0)  # the transform is orthonormal: ‖ΔW‖ = s · |c|


@pytest.mark.parametrize("use_idwt", [True, False])
def test_the_update_equals_peft_s_on_odd_sizes(use_idwt):
    torch.manual_seed(0)
    base = nn.Linear(7, 5)
    ours = WaveFTLinear(base)
    ours.add_adapter("a", WaveFTConfig(n_frequency=20, random_loc_seed=3, use_idwt=use_idwt, init_weights=False), "q")
    theirs = PeftWaveFTLinear(base, "a", peft.WaveFTConfig(n_frequency=20, random_loc_seed=3, use_idwt=use_idwt),
                              n_frequency=20)
    with torch.no_grad():
        theirs.waveft_spectrum["a"].copy_(ours.waveft_spectrum["a"])
    assert torch.allclose(ours.update("a"), theirs.get_delta_weight("a"), atol=1e-7)


def test_another_wavelet_family_is_refused_in_one_line():
    with pytest.raises(ConfigError, match="wavelet_family") as error:
        WaveFTConfig(wavelet_family="db4")
    assert "\n" not in str(error.value)
