"""PVeRA's mean update against its formula, its sampled training forward against peft's with the same seed, and
its config checks."""

from __future__ import annotations

import pytest
import torch

import peftkit
from peftkit.core.errors import ConfigError
from peftkit.methods.pvera import PveraConfig
from tests.conftest import randomize_trainable, tiny_batch, tiny_model

TARGETS = ["q_proj", "v_proj", "gate_proj", "down_proj"]


def test_the_merged_update_uses_the_mean_half():
    model = peftkit.get_peft_model(tiny_model("llama"), PveraConfig(r=5, target_modules=TARGETS))
    randomize_trainable(model)
    shared = model.shared_tensors["default"]
    assert tuple(shared.pvera_A.shape) == (10, 48) and tuple(shared.pvera_B.shape) == (48, 5)
    layer = model.base_model.model.model.layers[0].mlp.gate_proj  # 32 → 48
    lambda_b, lambda_d = layer.pvera_lambda_b["default"], layer.pvera_lambda_d["default"]
    a, b = shared.pvera_A[:, :32], shared.pvera_B
    expected = torch.diag(lambda_b) @ b @ torch.diag(lambda_d[:5]) @ a[:5]
    assert torch.allclose(layer.delta_weight("default"), expected, atol=1e-6)
    x = torch.randn(3, 32)
    assert torch.allclose(layer(x), layer.base_layer(x) + x @ expected.T, atol=1e-5)  # eval: z = μ


def test_training_samples_as_peft_does_with_the_same_seed(tmp_path):
    import peft

    config = PveraConfig(r=5, target_modules=TARGETS, generator_seed=3)
    model = peftkit.get_peft_model(tiny_model("llama").double(), config)
    randomize_trainable(model)
    model.save_pretrained(tmp_path)
    theirs = peft.PeftModel.from_pretrained(tiny_model("llama").double(), tmp_path)
    with torch.no_grad():
        ours_eval = model(**tiny_batch()).logits
        sampled = model.train()(**tiny_batch()).logits
        expected = theirs.train()(**tiny_batch()).logits
    assert not torch.allclose(sampled, ours_eval, atol=1e-4)  # the noise changes the output
    assert torch.allclose(sampled, expected, atol=1e-6)


def test_a_bad_bias_is_refused_naming_the_field():
    with pytest.raises(ConfigError, match="^bias must be one of 'none', 'all', 'pvera_only', got 'lora_only'$"):
        PveraConfig(bias="lora_only")
