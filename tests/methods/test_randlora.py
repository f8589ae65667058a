"""RandLoRA's update against its formula on a layer wider in than out, and several bases per layer (r < width), the
sparse bases and both checkpoint layouts read by peft and by peftkit."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file

import peftkit
from peftkit.core.errors import ConfigError
from peftkit.methods.randlora import RandLoraConfig
from tests.conftest import randomize_trainable, tiny_batch, tiny_model

TARGETS = ["q_proj", "v_proj", "gate_proj", "down_proj"]


def logits(model) -> torch.Tensor:
    with torch.no_grad():
        return model(**tiny_batch()).logits


def test_the_update_sums_the_scaled_random_bases():
    model = peftkit.get_peft_model(tiny_model("llama"), RandLoraConfig(r=8, randlora_alpha=16, target_modules=TARGETS))
    randomize_trainable(model)
    shared = model.shared_tensors["default"]
    assert tuple(shared.randlora_A.shape) == (8, 1, 48) and tuple(shared.randlora_B.shape) == (48, 6, 8)
    layer = model.base_model.model.model.layers[0].mlp.down_proj  # in 48 > out 32: m = 32, M = 48, n = 4 bases
    lambda_, gamma = layer.randlora_lambda["default"], layer.randlora_gamma["default"]
    a, b = shared.randlora_A[:, 0, :32], shared.randlora_B[:, :4]  # 8 × 32 (one A for all bases), 48 × 4 × 8
    # ΔWᵀ = s · Σ_{k, j} Λ[k, j] B[:, j', k'] (A[k] ⊙ Γ[j])ᵀ, pairing row k·n + j of Â with column j'·r + k' of B̂
    delta_t = torch.zeros(48, 32)
    for row in range(8 * 4):
        k, j = divmod(row, 4)
        j2, k2 = divmod(row, 8)
        delta_t += lambda_[k, j] * torch.outer(b[:, j2, k2], a[k] * gamma[j])
    expected = (16 / 8) * delta_t.T
    assert torch.allclose(layer.delta_weight("default"), expected, atol=1e-5)
    x = torch.randn(3, 48)
    assert torch.allclose(layer(x), layer.base_layer(x) + x @ expected.T, atol=1e-5)


@pytest.mark.parametrize("options", [{}, {"save_projection": False}, {"sparse": True}, {"very_sparse": True}])
def test_several_bases_and_each_layout_load_in_peft_and_back(options, tmp_path):
    import peft

    config = RandLoraConfig(r=8, target_modules=TARGETS, **options)
    model = peftkit.get_peft_model(tiny_model("llama").double(), config)
    randomize_trainable(model)
    expected = logits(model)
    model.save_pretrained(tmp_path / "ours")
    keys = load_file(tmp_path / "ours" / "adapter_model.safetensors")
    saved = options.get("save_projection", True)
    assert ("base_model.randlora_A" in keys) == saved
    assert ("base_model.model.model.layers.0.mlp.down_proj.randlora_B" in keys) == saved
    theirs = peft.PeftModel.from_pretrained(tiny_model("llama").double(), tmp_path / "ours").eval()
    assert torch.allclose(logits(theirs), expected, atol=1e-6)
    theirs.save_pretrained(tmp_path / "theirs")
    back = peftkit.PeftModel.from_pretrained(tiny_model("llama").double(), tmp_path / "theirs")
    assert torch.allclose(logits(back), expected, atol=1e-6)


def test_a_negative_dropout_is_refused_naming_the_field():
    with pytest.raises(ConfigError, match=r"^randlora_dropout must be in \[0, 1\), got -0.1$"):
        RandLoraConfig(randlora_dropout=-0.1)
