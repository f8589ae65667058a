"""Adaption prompt: the gated prompt attention of one Llama layer by hand, the saved config, bad values."""

import json

import pytest
import torch

import peftkit
from peftkit import ConfigError
from peftkit.methods.adaption_prompt import AdaptionPromptConfig
from tests.conftest import randomize_trainable, tiny_batch
from tests.methods.test_contract import base_model


def test_the_top_layer_adds_the_gated_attention_over_its_prompt(tmp_path):
    model = peftkit.get_peft_model(base_model("llama"), AdaptionPromptConfig(adapter_len=3, adapter_layers=1))
    randomize_trainable(model, scale=1.0)
    layer = model.get_base_model().model.layers[1].self_attn
    attention = layer.base_layer
    inputs = top_attention_inputs(model)
    with torch.no_grad():
        got = layer(**inputs)[0]
        hidden, (cos, sin) = inputs["hidden_states"], inputs["position_embeddings"]
        prompt, gate = layer.adaption_prompt["default"][0], layer.adaption_gate["default"]
        q = attention.q_proj(hidden).view(2, -1, 4, 8)  # batch, tokens, heads, head width
        half = q.shape[-1] // 2
        q = q * cos[:, :, None] + torch.cat([-q[..., half:], q[..., :half]], -1) * sin[:, :, None]
        k = attention.k_proj(prompt).view(3, 2, 8).repeat_interleave(2, dim=1)  # 2 key heads for 4 query heads
        v = attention.v_proj(prompt).view(3, 2, 8).repeat_interleave(2, dim=1)
        weights = gate * torch.softmax(torch.einsum("bqhd,khd->bhqk", q, k) / 8 ** 0.5, dim=-1)
        added = attention.o_proj(torch.einsum("bhqk,khd->bqhd", weights, v).reshape(2, -1, 32))
        expected = attention(**inputs)[0] + added
    assert added.abs().max() > 1e-3
    assert torch.allclose(got, expected, atol=1e-6)
    model.save_pretrained(tmp_path)
    saved = json.loads((tmp_path / "adapter_config.json").read_text())
    assert (saved["target_modules"], saved["adapter_len"], saved["adapter_layers"]) == ("self_attn", 3, 1)


def top_attention_inputs(model):
    """The top attention layer's own inputs, captured from a forward pass of the model (without the cache)."""
    captured = {}
    attention = model.get_base_model().model.layers[1].self_attn.base_layer
    handle = attention.register_forward_pre_hook(lambda m, args, kwargs: captured.update(kwargs), with_kwargs=True)
    with torch.no_grad():
        model(**tiny_batch(), use_cache=False)
    handle.remove()
    return {key: value for key, value in captured.items() if key != "cache"}


def test_bad_values_name_the_field():
    with pytest.raises(ConfigError, match="adapter_len"):
        AdaptionPromptConfig(adapter_len=0, adapter_layers=1)
    with pytest.raises(ConfigError, match="adapter_layers"):
        peftkit.plan(base_model("llama"), AdaptionPromptConfig(adapter_len=2, adapter_layers=3))
    with pytest.raises(ConfigError, match="bert"):
        peftkit.plan(base_model("bert"), AdaptionPromptConfig(adapter_len=2, adapter_layers=1))
