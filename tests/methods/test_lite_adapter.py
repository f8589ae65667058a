"""LiST's lite adapters: h' = h + hAB on the attention- and feed-forward-output projections."""

import pytest
import torch

import peftkit
from peftkit.methods.lite_adapter import LiteAdapterLinear
from tests.conftest import assert_changed, assert_merge_round_trip, logits, randomize_trainable, tiny_model


def test_lite_adapters_start_at_the_base_model_on_the_output_projections(kind):
    base = logits(tiny_model(kind))
    model = peftkit.get_peft_model(tiny_model(kind), peftkit.LiteAdapterConfig(r=4))
    assert torch.equal(logits(model), base)
    names = [name for name, layer in model.adapter_layers() if isinstance(layer, LiteAdapterLinear)]
    assert len(names) == 4  # 2 layers × (attention output, feed-forward output)
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    assert trainable == 4 * 2 * 32 * 4  # A (32 × 4) and B (4 × 32) per module; no bias


def test_the_change_is_h_times_ab():
    model = peftkit.get_peft_model(tiny_model("bert"), peftkit.LiteAdapterConfig(r=4))
    randomize_trainable(model)
    layer = next(layer for _, layer in model.adapter_layers())
    x = torch.randn(3, 5, layer.base.in_features)
    h = layer.base(x)
    expected = h + h @ layer.lite_A["default"] @ layer.lite_B["default"]
    assert (layer(x) - expected).abs().max() <= 1e-5


def test_lite_adapters_merge_and_unmerge_exactly(kind):
    model = peftkit.get_peft_model(tiny_model(kind), peftkit.LiteAdapterConfig(r=4))
    randomize_trainable(model)
    assert_changed(logits(model), logits(tiny_model(kind)), at_least=1e-3)
    assert_merge_round_trip(model, weight_tolerance=1e-5)


def test_save_and_load_round_trip(tmp_path):
    model = peftkit.get_peft_model(tiny_model("llama"), peftkit.LiteAdapterConfig(r=2))
    randomize_trainable(model)
    expected = logits(model)
    model.save_pretrained(tmp_path)
    loaded = peftkit.PeftModel.from_pretrained(tiny_model("llama"), tmp_path)
    assert (logits(loaded) - expected).abs().max() <= 1e-6


def test_bad_rank_is_named():
    with pytest.raises(peftkit.ConfigError, match="r must be a positive integer"):
        peftkit.LiteAdapterConfig(r=0)
