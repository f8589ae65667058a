"""Prefix tuning on multi-head latent attention (DeepSeek-V3): a prefix holding the latents a real context leaves in
the cache continues that context exactly."""

from __future__ import annotations

import torch

import peftkit
from tests.conftest import tiny_batch, tiny_model


def test_a_prefix_equal_to_a_contexts_latent_cache_continues_the_context():
    tokens = tiny_batch(batch=1, length=12)["input_ids"]
    context, query = tokens[:, :5], tokens[:, 5:]
    base = tiny_model("deepseek_dense")
    with torch.no_grad():
        full = base(input_ids=torch.cat([context, query], 1)).logits[:, 5:]
        cache = base(input_ids=context, use_cache=True).past_key_values
    model = peftkit.get_peft_model(tiny_model("deepseek_dense"),
                                   peftkit.PrefixTuningConfig(num_virtual_tokens=5, task_type="CAUSAL_LM"))
    rows = [torch.cat([layer.keys[0, 0], layer.values[0, 0]], -1) for layer in cache.layers]  # 5 × (c + ρ) each
    with torch.no_grad():
        model.prompt_encoder["default"].embedding.weight.copy_(torch.cat(rows, -1))
        continued = model(input_ids=query, attention_mask=torch.ones_like(query)).logits
    assert continued.shape == full.shape
    assert torch.allclose(continued, full, atol=1e-5)
