"""LoRA's trainable_token_indices (peft's option): chosen embedding rows train beside the LoRA adapter, saved as
peft saves them (``<embedding>.token_adapter.trainable_tokens_delta``); a tied output layer follows the rows."""

from __future__ import annotations

import peft
import pytest
import torch

import peftkit
from peftkit.core.errors import ConfigError
from peftkit.methods.lora import LoraConfig
from tests.conftest import (
    ATTENTION_TARGETS,
    assert_changed,
    assert_merge_round_trip,
    logits,
    randomize_trainable,
    tiny_batch,
    tiny_model,
)
from tests.methods.peft_cross import outputs_cross_with_peft

KINDS = ["llama", "gpt2"]  # untied and tied input / output embeddings
TOKENS = list(dict.fromkeys(tiny_batch()["input_ids"][0].tolist()))[:3]  # ids the test batch holds
WIDTH = 32
EMBEDDING = {"llama": "model.embed_tokens", "gpt2": "transformer.wte"}


def config(kind: str, **options) -> LoraConfig:
    return LoraConfig(target_modules=ATTENTION_TARGETS[kind], trainable_token_indices=TOKENS, **options)


def adapted(kind: str, dtype=torch.float32):
    model = peftkit.get_peft_model(tiny_model(kind).to(dtype), config(kind))
    randomize_trainable(model)
    return model


def trainable(model) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


@pytest.mark.parametrize("kind", KINDS)
def test_only_the_chosen_rows_of_the_embedding_train_beside_lora(kind):
    model = adapted(kind)
    lora_only = peftkit.get_peft_model(tiny_model(kind), LoraConfig(target_modules=ATTENTION_TARGETS[kind]))
    assert trainable(model) == trainable(lora_only) + len(TOKENS) * WIDTH
    model(**tiny_batch(), labels=tiny_batch()["input_ids"]).loss.backward()
    embedding = model.get_base_model().get_submodule(EMBEDDING[kind])
    assert embedding.base_layer.weight.grad is None
    assert embedding.trainable_tokens_delta["default"].grad.abs().sum() > 0
    assert_changed(logits(model), logits(tiny_model(kind)))


@pytest.mark.parametrize("kind", KINDS)
def test_saved_as_peft_saves_it_and_read_by_peft_both_ways(kind, tmp_path):
    model = adapted(kind)
    model.save_pretrained(tmp_path / "ours")
    keys = peftkit.load_peft_weights(tmp_path / "ours")
    rows = [key for key in keys if "lora_" not in key]
    assert rows == [f"base_model.model.{EMBEDDING[kind]}.token_adapter.trainable_tokens_delta"]
    worst = outputs_cross_with_peft(config(kind), tmp_path / "cross", kind=kind)
    assert worst < 1e-5


@pytest.mark.parametrize("kind", KINDS)
def test_an_adapter_peft_made_loads_with_equal_outputs(kind, tmp_path):
    double = torch.float64
    theirs = peft.get_peft_model(tiny_model(kind).to(double), peft.LoraConfig(
        target_modules=ATTENTION_TARGETS[kind], trainable_token_indices=TOKENS))
    randomize_trainable(theirs)
    expected = logits(theirs)
    assert_changed(expected, logits(tiny_model(kind).to(double)))
    theirs.save_pretrained(tmp_path)
    ours = peftkit.PeftModel.from_pretrained(tiny_model(kind).to(double), tmp_path)
    assert (logits(ours) - expected).abs().max() < 1e-5
    assert ours.peft_config["default"].trainable_token_indices == TOKENS


@pytest.mark.parametrize("kind", KINDS)
def test_merged_equals_unmerged_and_disabling_gives_the_base_output(kind):
    model = adapted(kind, torch.float64)
    base = logits(tiny_model(kind).to(torch.float64))
    with model.disable_adapter():
        assert (logits(model) - base).abs().max() < 1e-10
    plain = assert_merge_round_trip(model)
    assert not any("trainable_tokens" in name or "lora_" in name for name, _ in plain.named_parameters())


@pytest.mark.parametrize("kind", KINDS)
def test_deleting_the_adapters_restores_the_module_tree(kind):
    base = tiny_model(kind)
    tree = [(name, type(module)) for name, module in base.named_modules()]
    model = peftkit.get_peft_model(tiny_model(kind), config(kind), lean_training=False)  # lean swaps MLP classes
    model.add_adapter("second", config(kind))
    model.delete_adapter("second")
    model.delete_adapter("default")
    assert [(name, type(module)) for name, module in model.get_base_model().named_modules()] == tree
    assert torch.allclose(logits(model.get_base_model()), logits(base), atol=1e-6)


@pytest.mark.parametrize("indices, message", [([500], "vocabulary has 120"), ([-1], "non-negative")])
def test_a_bad_token_id_is_refused_in_one_line(indices, message):
    with pytest.raises(ConfigError, match=f"trainable_token_indices: .*{message}") as error:
        peftkit.get_peft_model(tiny_model("llama"), LoraConfig(target_modules=["q_proj"],
                                                               trainable_token_indices=indices))
    assert "\n" not in str(error.value)
