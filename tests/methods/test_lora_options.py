"""LoRA's peft options beyond rank and alpha: ``lora_bias`` (a trained bias on B), checked against the formula,
against peft both ways, and through merging."""

from __future__ import annotations

import peft
import pytest
import torch

import peftkit
from peftkit.core.errors import ConfigError
from tests.conftest import randomize_trainable, tiny_batch, tiny_model

BERT_TARGETS = ["query", "value", "output.dense"]


def outputs(model) -> torch.Tensor:
    with torch.no_grad():
        return model(**tiny_batch()).logits


def test_lora_bias_adds_a_scaled_bias_to_the_update():
    model = peftkit.get_peft_model(tiny_model("bert").double(), peftkit.LoraConfig(r=2, lora_alpha=6,
                                                                                   target_modules=["query"],
                                                                                   lora_bias=True))
    layer = model.get_base_model().bert.encoder.layer[0].attention.self.query
    randomize_trainable(model)
    x = torch.randn(3, 32, dtype=torch.float64)
    a, b, c = layer.lora_A["default"].weight, layer.lora_B["default"].weight, layer.lora_B["default"].bias
    assert c.abs().sum() > 0
    assert torch.allclose(layer(x), layer.base_layer(x) + 3.0 * (x @ a.T @ b.T + c), atol=1e-10)


def test_lora_bias_round_trips_through_peft_and_merges(tmp_path):
    config = peftkit.LoraConfig(r=2, target_modules=BERT_TARGETS, lora_bias=True, task_type="SEQ_CLS")
    ours = peftkit.get_peft_model(tiny_model("bert").double(), config)
    randomize_trainable(ours)
    expected = outputs(ours)
    assert not torch.allclose(expected, outputs(tiny_model("bert").double()), atol=1e-4)
    ours.save_pretrained(tmp_path / "ours")
    theirs = peft.PeftModel.from_pretrained(tiny_model("bert").double(), tmp_path / "ours").eval()
    assert torch.allclose(outputs(theirs), expected, atol=1e-8)
    theirs.save_pretrained(tmp_path / "theirs")
    back = peftkit.PeftModel.from_pretrained(tiny_model("bert").double(), tmp_path / "theirs")
    assert torch.allclose(outputs(back), expected, atol=1e-8)
    assert torch.allclose(outputs(back.merge_and_unload()), expected, atol=1e-8)


def test_lora_bias_on_a_layer_without_a_bias_refuses_to_merge_and_leaves_the_model():
    model = peftkit.get_peft_model(tiny_model("llama").double(),
                                   peftkit.LoraConfig(r=2, target_modules=["q_proj"], lora_bias=True))
    randomize_trainable(model)
    expected = outputs(model)
    with pytest.raises(ConfigError, match="no bias to merge it into") as error:
        model.merge_and_unload()
    assert "\n" not in str(error.value)
    assert torch.allclose(outputs(model), expected, atol=1e-12)


@pytest.mark.parametrize("settings, message", [({"use_dora": True}, "use_dora"),
                                               ({"init_lora_weights": "gaussian"}, "init_lora_weights")])
def test_lora_bias_refuses_what_peft_refuses(settings, message):
    with pytest.raises(ConfigError, match=message):
        peftkit.LoraConfig(lora_bias=True, **settings)


def test_olora_starts_from_the_qr_factors_and_keeps_the_residual_in_the_base():
    original = tiny_model("llama").model.layers[0].self_attn.q_proj.weight.detach().clone()
    model = peftkit.get_peft_model(tiny_model("llama"), peftkit.LoraConfig(r=4, lora_alpha=8,
                                                                           init_lora_weights="olora"))
    layer = model.get_base_model().model.layers[0].self_attn.q_proj
    q, upper = torch.linalg.qr(original)
    assert torch.allclose(layer.lora_B["default"].weight.abs(), q[:, :4].abs(), atol=1e-5)
    assert torch.allclose(layer.base_layer.weight + layer.delta_weight("default"), original, atol=1e-5)
    assert torch.allclose(outputs(model), outputs(tiny_model("llama")), atol=1e-5)  # unchanged at the start


def test_olora_adapters_round_trip_through_peft(tmp_path):
    """In float32: peft's OLoRA refuses float64 weights (and, like peftkit, redoes the QR split when loading)."""
    config = peftkit.LoraConfig(r=4, lora_alpha=8, init_lora_weights="olora", target_modules=["q_proj", "v_proj"])
    ours = peftkit.get_peft_model(tiny_model("llama"), config)
    randomize_trainable(ours)
    expected = outputs(ours)
    ours.save_pretrained(tmp_path / "ours")
    theirs = peft.PeftModel.from_pretrained(tiny_model("llama"), tmp_path / "ours").eval()
    assert torch.allclose(outputs(theirs), expected, atol=1e-5)
    theirs.save_pretrained(tmp_path / "theirs")
    back = peftkit.PeftModel.from_pretrained(tiny_model("llama"), tmp_path / "theirs")
    assert torch.allclose(outputs(back), expected, atol=1e-5)
