import peft
import pytest
import torch

import peftkit
from peftkit.methods.ia3 import IA3Linear
from tests.conftest import assert_changed, assert_merge_round_trip, logits, randomize_trainable, tiny_model


def test_ia3_starts_at_the_base_model_and_scales_the_right_side(kind):
    base = logits(tiny_model(kind))
    model = peftkit.get_peft_model(tiny_model(kind), peftkit.IA3Config())
    assert torch.equal(logits(model), base)
    layers = {name: layer for name, layer in model.adapter_layers() if isinstance(layer, IA3Linear)}
    feedforward = [n for n, layer in layers.items() if layer.feedforward["default"]]
    assert feedforward and len(feedforward) < len(layers)
    for name, layer in layers.items():
        rows, columns = layer.ia3_l["default"].shape
        assert (rows == 1) == (name in feedforward)


@pytest.mark.parametrize("direction", ["peft_to_peftkit", "peftkit_to_peft"])
def test_ia3_checkpoints_cross_between_peft_and_peftkit(kind, direction, tmp_path):
    source = (peft.get_peft_model(tiny_model(kind), peft.IA3Config()) if direction == "peft_to_peftkit"
              else peftkit.get_peft_model(tiny_model(kind), peftkit.IA3Config()))
    randomize_trainable(source, scale=0.5)
    expected = logits(source)
    source.save_pretrained(tmp_path)
    loader = peftkit.PeftModel if direction == "peft_to_peftkit" else peft.PeftModel
    loaded = loader.from_pretrained(tiny_model(kind), tmp_path)
    assert_changed(expected, logits(tiny_model(kind)), at_least=1e-3)
    assert (logits(loaded) - expected).abs().max() <= 1e-5


def test_ia3_merges_and_unmerges_exactly(kind):
    model = peftkit.get_peft_model(tiny_model(kind), peftkit.IA3Config())
    randomize_trainable(model)
    assert_merge_round_trip(model)


def test_explicit_targets_without_feedforward_modules_scale_outputs():
    model = peftkit.get_peft_model(tiny_model("llama"), peftkit.IA3Config(target_modules=["down_proj"]))
    layer = model.get_base_model().model.layers[0].mlp.down_proj
    assert not layer.feedforward["default"] and layer.ia3_l["default"].shape == (32, 1)


@pytest.mark.parametrize("kind", ["t5", "bart"])
def test_ia3_on_encoder_decoders_starts_at_base_and_merges(kind):
    from tests.methods.test_lora_encoder_decoder import seq2seq, seq2seq_logits

    base = seq2seq_logits(seq2seq(kind))
    model = peftkit.get_peft_model(seq2seq(kind), peftkit.IA3Config())
    assert torch.equal(seq2seq_logits(model), base)
    randomize_trainable(model, scale=0.5)
    adapted = seq2seq_logits(model)
    assert_changed(adapted, base, at_least=1e-3)
    assert (seq2seq_logits(model.merge_and_unload()) - adapted).abs().max() <= 1e-5
