"""LoRA's ``layer_replication``: a deeper model from repeated layers sharing their base weights, each repeat with
its own adapter; checked against the stacking rule, against peft both ways, with a key / value cache, and for the
refusals (merging, ranges beyond the model, models with two stacks)."""

from __future__ import annotations

import copy

import peft
import pytest
import torch
from transformers import T5Config, T5ForConditionalGeneration

import peftkit
from peftkit.core.errors import ConfigError
from tests.conftest import randomize_trainable, tiny_batch, tiny_model

LAYER_MAP = [[0, 2], [1, 2]]  # layers 0 1 1 of the tiny two-layer models


def outputs(model) -> torch.Tensor:
    with torch.no_grad():
        return model(**tiny_batch()).logits


def test_replicated_layers_share_base_weights_and_each_gets_its_own_adapter():
    base = tiny_model("llama").double()
    before = sum(parameter.numel() for parameter in base.parameters())
    model = peftkit.get_peft_model(base, peftkit.LoraConfig(r=2, target_modules=["q_proj", "v_proj"],
                                                            layer_replication=LAYER_MAP))
    layers = model.get_base_model().model.layers
    assert len(layers) == 3 and model.get_base_model().config.num_hidden_layers == 3
    assert layers[1].self_attn.q_proj.base_layer.weight is layers[2].self_attn.q_proj.base_layer.weight
    first, repeat = layers[1].self_attn.q_proj, layers[2].self_attn.q_proj
    assert first.lora_A["default"].weight is not repeat.lora_A["default"].weight
    assert [layer.self_attn.layer_idx for layer in layers] == [0, 1, 2]
    trainable, total = model.get_nb_trainable_parameters()
    assert trainable == 3 * 2 * (2 * 32 + 2 * 32) - 3 * 2 * 16  # q: 32 -> 32, v: 32 -> 16, three layers
    assert total - trainable == before  # the repeats add no base weights


def test_replicated_model_equals_the_stack_of_repeated_layers():
    """With the adapters at zero, layers 0 1 1 give what running layer 1 twice gives."""
    plain = tiny_model("llama").double()
    model = peftkit.get_peft_model(tiny_model("llama").double(),
                                   peftkit.LoraConfig(r=2, target_modules=["q_proj"], layer_replication=LAYER_MAP))
    layers = plain.model.layers
    plain.model.layers = torch.nn.ModuleList([layers[0], layers[1], copy.deepcopy(layers[1])])
    plain.model.layers[2].self_attn.layer_idx = 2
    plain.config.num_hidden_layers = 3
    assert torch.allclose(outputs(model), outputs(plain), atol=1e-10)


@pytest.mark.parametrize("kind", ["llama", "bert"])
def test_layer_replication_round_trips_through_peft(kind, tmp_path):
    task = {"llama": "CAUSAL_LM", "bert": "SEQ_CLS"}[kind]
    targets = {"llama": ["q_proj", "v_proj"], "bert": ["query", "value"]}[kind]
    ours = peftkit.get_peft_model(tiny_model(kind).double(), peftkit.LoraConfig(
        r=2, target_modules=targets, layer_replication=LAYER_MAP, task_type=task))
    randomize_trainable(ours)
    expected = outputs(ours)
    ours.save_pretrained(tmp_path / "ours")
    theirs = peft.PeftModel.from_pretrained(tiny_model(kind).double(), tmp_path / "ours").eval()
    assert torch.allclose(outputs(theirs), expected, atol=1e-10)
    randomize_trainable(theirs, seed=5)  # peft's own weights, read back
    theirs.save_pretrained(tmp_path / "theirs")
    back = peftkit.PeftModel.from_pretrained(tiny_model(kind).double(), tmp_path / "theirs")
    assert torch.allclose(outputs(back), outputs(theirs), atol=1e-10)


def test_replicated_llama_generates_with_a_cache_as_peft_does(tmp_path):
    ours = peftkit.get_peft_model(tiny_model("llama").double(), peftkit.LoraConfig(
        r=2, target_modules=["q_proj", "v_proj"], layer_replication=LAYER_MAP, task_type="CAUSAL_LM"))
    randomize_trainable(ours)
    ours.save_pretrained(tmp_path)
    theirs = peft.PeftModel.from_pretrained(tiny_model("llama").double(), tmp_path).eval()
    prompt = tiny_batch(batch=1)["input_ids"]
    settings = {"max_new_tokens": 6, "do_sample": False, "use_cache": True, "pad_token_id": 0}
    assert torch.equal(ours.generate(input_ids=prompt, **settings), theirs.generate(input_ids=prompt, **settings))


def test_merging_a_replicated_model_is_refused_and_changes_nothing():
    model = peftkit.get_peft_model(tiny_model("llama").double(), peftkit.LoraConfig(
        r=2, target_modules=["q_proj"], layer_replication=LAYER_MAP))
    randomize_trainable(model)
    expected = outputs(model)
    with pytest.raises(ConfigError, match="shared with") as error:
        model.merge_and_unload()
    assert "\n" not in str(error.value)
    assert torch.allclose(outputs(model), expected, atol=1e-12)


@pytest.mark.parametrize("layer_map, message", [([[0, 3]], "beyond the model's 2 layers"),
                                                ([[1, 1]], "empty"),
                                                ([0, 2], "layer_replication must be a list of lists of whole numbers")])
def test_a_bad_layer_map_is_refused_and_leaves_the_model(layer_map, message):
    model = tiny_model("llama").double()
    expected = outputs(model)
    with pytest.raises(ConfigError, match=message):
        peftkit.get_peft_model(model, peftkit.LoraConfig(r=2, target_modules=["q_proj"],
                                                         layer_replication=layer_map))
    assert len(model.model.layers) == 2 and model.config.num_hidden_layers == 2
    assert torch.allclose(outputs(model), expected, atol=1e-12)


def test_a_failed_adapter_puts_the_layers_back():
    model = tiny_model("llama").double()
    with pytest.raises(ConfigError, match="nothing_like_this"):
        peftkit.get_peft_model(model, peftkit.LoraConfig(r=2, target_modules=["nothing_like_this"],
                                                         layer_replication=LAYER_MAP))
    assert len(model.model.layers) == 2 and model.config.num_hidden_layers == 2


def test_a_model_with_an_encoder_and_a_decoder_is_refused():
    with pytest.raises(ConfigError, match="one stack of layers.*encoder.block, decoder.block"):
        peftkit.get_peft_model(tiny_t5(),
                               peftkit.LoraConfig(r=2, target_modules=["q"], layer_replication=[[0, 1]]))


def tiny_t5() -> T5ForConditionalGeneration:
    return T5ForConditionalGeneration(T5Config(vocab_size=120, d_model=16, d_kv=4, d_ff=32, num_layers=1,
                                               num_heads=2, decoder_start_token_id=0))
