"""VB-LoRA's factors against their formula (top-k softmax mixtures of the one bank), and its config checks."""

from __future__ import annotations

import pytest
import torch

import peftkit
from peftkit.core.errors import ConfigError
from peftkit.methods.vblora import VBLoRAConfig
from tests.conftest import randomize_trainable, tiny_model


def test_each_piece_of_a_and_b_mixes_the_top_k_bank_vectors():
    config = VBLoRAConfig(r=2, num_vectors=6, vector_length=16, topk=2, target_modules=["q_proj", "gate_proj"])
    model = peftkit.get_peft_model(tiny_model("llama"), config)
    randomize_trainable(model)
    bank = model.shared_tensors["default"].vblora_vector_bank
    layer = model.base_model.model.model.layers[1].mlp.gate_proj  # 32 → 48: A 2 × (2 pieces), B (3 pieces) × 2
    assert layer.shared["default"] is model.shared_tensors["default"]

    def piece(logits):
        top = logits.topk(2).indices
        weights = torch.softmax(logits[top], dim=0)
        return weights[0] * bank[top[0]] + weights[1] * bank[top[1]]

    logits_a, logits_b = layer.vblora_logits_A["default"], layer.vblora_logits_B["default"]
    a = torch.stack([torch.cat([piece(logits_a[j, k]) for k in range(2)]) for j in range(2)])  # 2 × 32
    b = torch.stack([torch.cat([piece(logits_b[k, j]) for k in range(3)]) for j in range(2)], dim=1)  # 48 × 2
    assert torch.allclose(layer.delta_weight("default"), b @ a, atol=1e-6)
    x = torch.randn(3, 32)
    assert torch.allclose(layer(x), layer.base_layer(x) + x @ (b @ a).T, atol=1e-6)


def test_the_bank_trains_once_for_all_layers():
    model = peftkit.get_peft_model(tiny_model("llama"), VBLoRAConfig(num_vectors=8, vector_length=16,
                                                                     target_modules=["q_proj", "v_proj"]))
    trained = {name: p.numel() for name, p in model.named_parameters() if p.requires_grad}
    assert trained.pop("shared_tensors.default.vblora_vector_bank") == 8 * 16
    assert sorted({name.rsplit(".", 2)[-2] for name in trained}) == ["vblora_logits_A", "vblora_logits_B"]


def test_a_vector_length_that_does_not_divide_a_width_is_refused_naming_the_field():
    with pytest.raises(ConfigError, match="^vector_length 12 must divide the widths of 'model.layers.0.self_attn.q"):
        peftkit.get_peft_model(tiny_model("llama"), VBLoRAConfig(vector_length=12, target_modules=["q_proj"]))
