import peft
import pytest
import torch
from torch import nn

import peftkit
from peftkit.core.errors import ConfigError
from peftkit.methods.miss import MissConfig, MissLinear
from tests.conftest import logits, randomize_trainable, tiny_model


def test_the_block_is_shared_by_every_slice_of_the_weight_the_last_one_cut_short():
    torch.manual_seed(0)
    layer = MissLinear(nn.Linear(7, 4))
    layer.add_adapter("a", MissConfig(r=3, init_weights=False), "q")
    block = layer.miss_block["a"].detach()  # 3 × 4
    expected = torch.cat([block.T, block.T, block.T[:, :1]], dim=1)
    assert torch.allclose(layer.update("a").detach(), expected, atol=1e-6)
    layer.active_adapters = ["a"]
    x = torch.randn(5, 7)
    assert torch.allclose(layer(x), layer.base_layer(x) + x @ expected.T, atol=1e-6)


def test_the_block_affine_form_multiplies_each_weight_block_and_unmerges_exactly():
    torch.manual_seed(0)
    layer = MissLinear(nn.Linear(4, 4))
    layer.add_adapter("a", MissConfig(r=2, init_weights="bat"), "q")
    with torch.no_grad():
        layer.miss_block["a"].normal_(0, 0.3)
    weight, block = layer.base_layer.weight.detach().clone(), layer.miss_block["a"].detach()
    expected = torch.empty(4, 4)
    for i in range(2):
        for j in range(2):
            expected[2 * i:2 * i + 2, 2 * j:2 * j + 2] = weight[2 * i:2 * i + 2, 2 * j:2 * j + 2] @ block[i] + block[i]
    assert torch.allclose(layer.update("a").detach(), expected, atol=1e-6)
    layer.merge(["a"])
    assert torch.allclose(layer.base_layer.weight, weight + expected, atol=1e-6)
    layer.unmerge()
    assert torch.allclose(layer.base_layer.weight, weight, atol=1e-5)


@pytest.mark.parametrize("form", ["bat", "mini"])
def test_the_other_forms_load_in_peft_with_equal_outputs(form, tmp_path):
    config = MissConfig(r=8, mini_r=4, init_weights=form, target_modules=["query", "value"])
    model = peftkit.get_peft_model(tiny_model("bert").double(), config)
    randomize_trainable(model)
    expected = logits(model)
    assert (expected - logits(tiny_model("bert").double())).abs().max() > 1e-3
    model.save_pretrained(tmp_path)
    theirs = peft.PeftModel.from_pretrained(tiny_model("bert").double(), tmp_path).eval()
    assert (logits(theirs) - expected).abs().max() <= 1e-6


def test_an_unknown_init_weights_is_refused_in_one_line():
    with pytest.raises(ConfigError, match="init_weights") as error:
        MissConfig(init_weights="bone")
    assert "\n" not in str(error.value)
