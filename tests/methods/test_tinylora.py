"""TinyLoRA's update against its formula, its grouping of modules under shared vectors, and both checkpoint layouts
(projections saved, or drawn again from the seed) read by peft and by peftkit."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file

import peftkit
from peftkit.core.errors import ConfigError
from peftkit.methods.tinylora import TinyLoraConfig
from tests.conftest import randomize_trainable, tiny_batch, tiny_model

TARGETS = ["q_proj", "v_proj", "gate_proj", "down_proj"]


def logits(model) -> torch.Tensor:
    with torch.no_grad():
        return model(**tiny_batch()).logits


def test_the_update_is_the_svd_factors_around_the_mixed_projections():
    model = peftkit.get_peft_model(tiny_model("llama"), TinyLoraConfig(r=3, u=5, target_modules=TARGETS))
    randomize_trainable(model)
    layer = model.base_model.model.model.layers[0].mlp.down_proj  # 48 → 32, the 4th adapted module
    weight = layer.base_layer.weight
    u, s, vh = torch.linalg.svd(weight, full_matrices=False)
    a, b = s[:3].sqrt()[:, None] * vh[:3], u[:, :3] * s[:3].sqrt()
    assert torch.allclose(layer.tinylora_A["default"], a, atol=1e-5)
    assert torch.allclose(layer.tinylora_B["default"], b, atol=1e-5)
    p = torch.normal(0.0, 3**-0.5, size=(5, 3, 3), generator=torch.Generator().manual_seed(42 + 3))
    assert torch.equal(layer.tinylora_P["default"], p)
    v = model.shared_tensors["default"].tinylora_v["3"]
    expected = b @ sum(v[i] * p[i] for i in range(5)) @ a
    assert torch.allclose(layer.delta_weight("default"), expected, atol=1e-5)
    x = torch.randn(3, 48)
    assert torch.allclose(layer(x), layer.base_layer(x) + x @ expected.T, atol=1e-5)


def test_weight_tying_shares_one_vector_among_consecutive_modules():
    config = TinyLoraConfig(u=4, weight_tying=0.5, target_modules=TARGETS)  # 8 modules, 4 groups of 2
    shared = peftkit.get_peft_model(tiny_model("llama"), config).shared_tensors["default"]
    assert sorted(shared.tinylora_v) == ["0", "1", "2", "3"]
    assert list(shared.group.values()) == ["0", "0", "1", "1", "2", "2", "3", "3"]


@pytest.mark.parametrize("options", [{"save_projection": False}, {"weight_tying": 0.5}])
def test_other_layouts_load_in_peft_and_back(options, tmp_path):
    import peft

    model = peftkit.get_peft_model(tiny_model("llama").double(), TinyLoraConfig(u=4, target_modules=TARGETS, **options))
    randomize_trainable(model)
    expected = logits(model)
    model.save_pretrained(tmp_path / "ours")
    keys = load_file(tmp_path / "ours" / "adapter_model.safetensors")
    assert ("base_model.model.model.layers.0.mlp.down_proj.tinylora_P" in keys) == options.get("save_projection", True)
    assert sum(key.startswith("base_model.tinylora_v.") for key in keys) == 8 * (1 - options.get("weight_tying", 0))
    theirs = peft.PeftModel.from_pretrained(tiny_model("llama").double(), tmp_path / "ours").eval()
    assert torch.allclose(logits(theirs), expected, atol=1e-6)
    theirs.save_pretrained(tmp_path / "theirs")
    back = peftkit.PeftModel.from_pretrained(tiny_model("llama").double(), tmp_path / "theirs")
    assert torch.allclose(logits(back), expected, atol=1e-6)


def test_weight_tying_above_one_is_refused_naming_the_field():
    with pytest.raises(ConfigError, match=r"^weight_tying must be in \[0, 1\], got 1.5$"):
        TinyLoraConfig(weight_tying=1.5)
