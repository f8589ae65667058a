"""Cartridges: the cache laid out by hand, frozen leading tokens, bad values."""

import pytest
import torch
from transformers import DynamicCache

import peftkit
from peftkit import ConfigError
from peftkit.methods.cartridge import CartridgeConfig
from tests.conftest import randomize_trainable, tiny_batch
from tests.methods.test_contract import base_model


def test_the_cartridge_is_each_layer_s_keys_and_values_and_its_first_tokens_stay_frozen():
    model = peftkit.get_peft_model(base_model("llama"), CartridgeConfig(num_virtual_tokens=5, num_frozen_tokens=2,
                                                                        task_type="CAUSAL_LM"))
    randomize_trainable(model)
    encoder = model.prompt_encoder["default"]
    table = encoder.virtual_tokens().detach()
    assert table.shape == (5, 2 * 2 * 16)  # 2 layers × (keys, values) × 2 key heads of width 8
    assert [n for n, p in model.named_parameters() if p.requires_grad] == ["prompt_encoder.default.trainable_embedding"]
    batch = tiny_batch()
    with torch.no_grad():
        got = model(**batch).logits
        per_layer = table.view(5, 2, 2, 2, 8)  # tokens, layer, key / value, head, width
        cache = DynamicCache([(per_layer[:, i, 0].permute(1, 0, 2)[None].expand(2, -1, -1, -1),
                               per_layer[:, i, 1].permute(1, 0, 2)[None].expand(2, -1, -1, -1)) for i in range(2)])
        mask = torch.cat([torch.ones(2, 5, dtype=batch["attention_mask"].dtype), batch["attention_mask"]], dim=1)
        expected = base_model("llama")(input_ids=batch["input_ids"], attention_mask=mask, cache=cache).logits
    assert torch.allclose(got, expected, atol=1e-6)
    frozen_before = encoder.frozen_embedding.clone()
    model(**batch).logits.pow(2).mean().backward()
    assert encoder.trainable_embedding.grad.abs().sum() > 0
    assert torch.equal(encoder.frozen_embedding, frozen_before)


def test_bad_values_name_the_field():
    with pytest.raises(ConfigError, match="num_frozen_tokens"):
        CartridgeConfig(num_virtual_tokens=2, num_frozen_tokens=3)
