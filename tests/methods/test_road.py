import pytest
import torch
from torch import nn

import peftkit
from peftkit.core.errors import ConfigError
from peftkit.methods.road import RoadConfig
from tests.methods.peft_cross import outputs_cross_with_peft


def one_layer(variant):
    torch.manual_seed(0)
    config = RoadConfig(target_modules=["0"], variant=variant, group_size=4, init_weights=False)
    layer = peftkit.get_peft_model(nn.Sequential(nn.Linear(3, 8)).double(), config).get_base_model()[0]
    return layer, layer.road_theta["default"].detach(), layer.road_alpha["default"].detach()


def rotation(cos_scale, cos_angle, sin_scale, sin_angle):
    """R (8 × 8) for groups of 4: feature i of a group paired with i + 2, one (a, θ, b, φ) per output feature."""
    turn = torch.zeros(8, 8, dtype=torch.float64)
    for group in (0, 4):
        for i in range(2):
            first, second = group + i, group + i + 2
            for row, partner, sign in ((first, second, -1), (second, first, 1)):
                turn[row, row] = cos_scale[row] * torch.cos(cos_angle[row])
                turn[row, partner] = sign * sin_scale[row] * torch.sin(sin_angle[row])
    return turn


@pytest.mark.parametrize("variant", ["road_1", "road_2", "road_4"])
def test_each_pair_of_outputs_is_rotated_and_scaled_as_the_paper_says(variant):
    layer, theta, alpha = one_layer(variant)
    if variant == "road_1":  # one (α, θ) per pair: the group's first half, used by both features of the pair
        per_feature = [v.reshape(2, 1, 2).expand(2, 2, 2).flatten() for v in (theta, alpha)]
        turn = rotation(per_feature[1], per_feature[0], per_feature[1], per_feature[0])
    elif variant == "road_2":
        turn = rotation(alpha, theta, alpha, theta)
    else:  # per group: [cos part (4) | sin part (4)]
        theta, alpha = theta.reshape(2, 2, 4), alpha.reshape(2, 2, 4)
        turn = rotation(alpha[:, 0].flatten(), theta[:, 0].flatten(), alpha[:, 1].flatten(), theta[:, 1].flatten())
    x = torch.randn(5, 3, dtype=torch.float64)
    assert torch.allclose(layer(x), layer.base_layer(x) @ turn.T, atol=1e-12)


@pytest.mark.parametrize("variant", ["road_2", "road_4"])
def test_the_other_variants_cross_with_peft(variant, tmp_path):
    config = RoadConfig(target_modules=["query", "value", "intermediate.dense"], variant=variant, group_size=16)
    assert outputs_cross_with_peft(config, tmp_path) <= 1e-6


def test_a_group_size_that_does_not_fit_is_refused_in_one_line():
    with pytest.raises(ConfigError, match=r"^group_size must be even \(features are paired within a group\), got 3$"):
        RoadConfig(group_size=3)
    with pytest.raises(ConfigError, match=r"^0: out_features 8 is not divisible by group_size 16; [^\n]*$"):
        peftkit.get_peft_model(nn.Sequential(nn.Linear(3, 8)), RoadConfig(target_modules=["0"], group_size=16))
