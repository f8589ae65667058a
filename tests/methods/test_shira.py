import pytest
import torch
from peft.tuners.shira.mask_functions import random_mask
from torch import nn

from peftkit.core.errors import ConfigError
from peftkit.methods.shira import ShiraConfig, ShiraLinear


@pytest.mark.parametrize("seed", [None, 7])
def test_the_update_holds_the_trained_values_on_peft_s_random_entries(seed):
    torch.manual_seed(0)
    base = nn.Linear(9, 6)
    layer = ShiraLinear(base)
    layer.add_adapter("a", ShiraConfig(r=2, random_seed=seed, init_weights=False), "q")
    rows, columns = torch.where(random_mask(base, 2, random_seed=seed))
    assert torch.equal(layer.shira_indices["a"].long(), torch.stack([rows, columns]))
    assert rows.numel() == 2 * (9 + 6)
    values = layer.shira_weight["a"].detach()
    update = layer.update("a").detach()
    assert torch.equal(update[rows, columns], values)
    assert (update != 0).sum() == rows.numel() and torch.linalg.matrix_rank(update) == 6


def test_an_unknown_mask_type_is_refused_in_one_line():
    with pytest.raises(ConfigError, match="mask_type") as error:
        ShiraConfig(mask_type="magnitude")
    assert "\n" not in str(error.value)
