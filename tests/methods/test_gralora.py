import peft
import pytest
import torch
from torch import nn

import peftkit
from peftkit.core.errors import ConfigError
from peftkit.methods.gralora import GraloraConfig, GraloraLinear
from tests.conftest import logits, randomize_trainable, tiny_model


def test_each_block_of_the_update_is_its_own_low_rank_product():
    torch.manual_seed(0)
    layer = GraloraLinear(nn.Linear(6, 4))
    layer.add_adapter("a", GraloraConfig(r=4, alpha=2.0, gralora_k=2, init_weights=False), "q")
    a, b = layer.gralora_A["a"].detach(), layer.gralora_B["a"].detach()  # 2 × 3 × 4, 2 × 4 × 2
    expected = torch.zeros(4, 6)
    for j in range(2):  # output slice
        for n in range(2):  # input slice
            block = a[n][:, 2 * j:2 * j + 2] @ b[j][2 * n:2 * n + 2, :]  # in/k × out/k, rank 2
            expected[2 * j:2 * j + 2, 3 * n:3 * n + 3] = block.T
    expected *= 2.0 / 4
    assert torch.allclose(layer.update("a").detach(), expected, atol=1e-6)
    layer.active_adapters = ["a"]
    x = torch.randn(5, 6)
    assert torch.allclose(layer(x), layer.base_layer(x) + x @ expected.T, atol=1e-6)


def test_hybrid_gralora_loads_in_peft_and_merges(tmp_path):
    config = dict(r=4, hybrid_r=2, alpha=8, gralora_k=2, target_modules=["query", "value"])
    model = peftkit.get_peft_model(tiny_model("bert").double(), GraloraConfig(**config))
    randomize_trainable(model)
    expected = logits(model)
    model.save_pretrained(tmp_path / "ours")
    theirs = peft.PeftModel.from_pretrained(tiny_model("bert").double(), tmp_path / "ours").eval()
    assert (logits(theirs) - expected).abs().max() <= 1e-6
    assert (logits(model.merge_and_unload()) - expected).abs().max() <= 1e-6


def test_a_rank_not_divisible_by_k_is_refused_in_one_line():
    with pytest.raises(ConfigError, match="gralora_k") as error:
        GraloraConfig(r=6, gralora_k=4)
    assert "\n" not in str(error.value)
