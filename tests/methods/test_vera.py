"""VeRA's update against its formula, its projections against peft's draw, and both checkpoint layouts (projections
saved, or drawn again from the key) read by peft and by peftkit."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file

import peftkit
from peftkit.core.errors import ConfigError
from peftkit.methods.vera import VeraConfig
from tests.conftest import randomize_trainable, tiny_batch, tiny_model

TARGETS = ["q_proj", "v_proj", "gate_proj", "down_proj"]


def logits(model) -> torch.Tensor:
    with torch.no_grad():
        return model(**tiny_batch()).logits


def test_the_update_is_lambda_b_b_lambda_d_a_with_the_shared_corners():
    model = peftkit.get_peft_model(tiny_model("llama"), VeraConfig(r=6, target_modules=TARGETS))
    randomize_trainable(model)
    layer = model.base_model.model.model.layers[0].mlp.down_proj  # 48 → 32: uses A[:, :48] and B[:32]
    shared = model.shared_tensors["default"]
    assert tuple(shared.vera_A.shape) == (6, 48) and tuple(shared.vera_B.shape) == (48, 6)
    a, b = shared.vera_A[:, :48], shared.vera_B[:32]
    lambda_b, lambda_d = layer.vera_lambda_b["default"], layer.vera_lambda_d["default"]
    expected = torch.diag(lambda_b) @ b @ torch.diag(lambda_d) @ a
    assert torch.allclose(layer.delta_weight("default"), expected, atol=1e-6)
    x = torch.randn(3, 48)
    assert torch.allclose(layer(x), layer.base_layer(x) + x @ expected.T, atol=1e-5)


def test_the_projections_are_peft_s_draw_from_the_key():
    import peft

    config = dict(r=6, target_modules=TARGETS, projection_prng_key=7)
    ours = peftkit.get_peft_model(tiny_model("llama"), VeraConfig(**config)).shared_tensors["default"]
    theirs = peft.get_peft_model(tiny_model("llama"), peft.VeraConfig(**config)).base_model
    assert torch.equal(ours.vera_A, theirs.vera_A["default"]) and torch.equal(ours.vera_B, theirs.vera_B["default"])


@pytest.mark.parametrize("save_projection", [True, False])
def test_both_layouts_load_in_peft_and_back(save_projection, tmp_path):
    import peft

    config = VeraConfig(r=6, target_modules=TARGETS, save_projection=save_projection)
    model = peftkit.get_peft_model(tiny_model("llama").double(), config)
    randomize_trainable(model)
    expected = logits(model)
    model.save_pretrained(tmp_path / "ours")
    keys = load_file(tmp_path / "ours" / "adapter_model.safetensors")
    assert ("base_model.vera_A" in keys) == save_projection and ("base_model.vera_B" in keys) == save_projection
    theirs = peft.PeftModel.from_pretrained(tiny_model("llama").double(), tmp_path / "ours").eval()
    assert torch.allclose(logits(theirs), expected, atol=1e-6)
    theirs.save_pretrained(tmp_path / "theirs")
    back = peftkit.PeftModel.from_pretrained(tiny_model("llama").double(), tmp_path / "theirs")
    assert torch.allclose(logits(back), expected, atol=1e-6)


def test_a_rank_of_zero_is_refused_naming_the_field():
    with pytest.raises(ConfigError, match="^r must be a positive integer, got 0$"):
        VeraConfig(r=0)
