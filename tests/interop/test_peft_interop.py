"""Adapters cross between the real ``peft`` package and peftkit, both ways, with the same logits."""

from __future__ import annotations

import json

import peft
import pytest
from safetensors.torch import load_file

import peftkit
from tests.conftest import ATTENTION_TARGETS, assert_changed, logits, randomize_trainable, tiny_model

TOLERANCE = 1e-5
# modules_to_save on a module that is not the output head of each tiny model
SAVED_MODULE = {"bert": "classifier", "gpt2": "ln_f", "llama": "norm"}
EMBEDDING = {"bert": "word_embeddings", "gpt2": "wte", "llama": "embed_tokens"}


def variant_settings(kind: str, variant: str) -> dict:
    settings = {"r": 4, "lora_alpha": 8, "target_modules": ATTENTION_TARGETS[kind]}
    if variant == "rslora":
        settings["use_rslora"] = True
    elif variant == "dora":
        settings["use_dora"] = True
    elif variant == "modules_to_save":
        settings["modules_to_save"] = [SAVED_MODULE[kind]]
    elif variant == "all_linear_bias":
        settings.update(target_modules="all-linear", bias="lora_only")
    elif variant == "embedding_dora":
        settings.update(target_modules=ATTENTION_TARGETS[kind] + [EMBEDDING[kind]], use_dora=True)
    elif variant == "rank_pattern":
        settings.update(rank_pattern={"value": 2, "v_proj": 2, "c_attn": 6}, alpha_pattern={"query": 3})
    return settings


VARIANTS = ["plain", "rslora", "dora", "modules_to_save", "all_linear_bias", "embedding_dora", "rank_pattern"]


@pytest.mark.parametrize("variant", VARIANTS)
def test_peft_adapter_loads_into_peftkit_with_same_logits(kind, variant, tmp_path):
    settings = variant_settings(kind, variant)
    peft_model = peft.get_peft_model(tiny_model(kind), peft.LoraConfig(**settings))
    randomize_trainable(peft_model)
    expected = logits(peft_model)
    peft_model.save_pretrained(tmp_path)

    base = tiny_model(kind)
    base_logits = logits(base)
    loaded = peftkit.PeftModel.from_pretrained(base, tmp_path)
    got = logits(loaded)

    assert_changed(expected, base_logits)
    assert (got - expected).abs().max() <= TOLERANCE


@pytest.mark.parametrize("variant", VARIANTS)
def test_peftkit_adapter_loads_into_peft_with_same_logits(kind, variant, tmp_path):
    settings = variant_settings(kind, variant)
    ours = peftkit.get_peft_model(tiny_model(kind), peftkit.LoraConfig(**settings))
    randomize_trainable(ours)
    expected = logits(ours)
    ours.save_pretrained(tmp_path)

    base_logits = logits(tiny_model(kind))
    theirs = peft.PeftModel.from_pretrained(tiny_model(kind), tmp_path)
    got = logits(theirs)

    assert_changed(expected, base_logits)
    assert (got - expected).abs().max() <= TOLERANCE


def test_saved_files_use_peft_key_names_and_fields(tmp_path):
    peft_model = peft.get_peft_model(tiny_model("bert"), peft.LoraConfig(**variant_settings("bert", "modules_to_save")))
    ours = peftkit.get_peft_model(tiny_model("bert"), peftkit.LoraConfig(**variant_settings("bert", "modules_to_save")))
    peft_model.save_pretrained(tmp_path / "peft")
    ours.save_pretrained(tmp_path / "ours")

    peft_keys = set(load_file(tmp_path / "peft" / "adapter_model.safetensors"))
    our_keys = set(load_file(tmp_path / "ours" / "adapter_model.safetensors"))
    assert our_keys == peft_keys
    our_config = json.loads((tmp_path / "ours" / "adapter_config.json").read_text())
    peft_config = json.loads((tmp_path / "peft" / "adapter_config.json").read_text())
    for field in ("peft_type", "r", "lora_alpha", "lora_dropout", "bias", "use_dora", "use_rslora"):
        assert our_config[field] == peft_config[field], field
    assert sorted(our_config["target_modules"]) == sorted(peft_config["target_modules"])


def test_second_adapter_goes_to_a_subfolder_peft_reads(tmp_path):
    ours = peftkit.get_peft_model(tiny_model("llama"), peftkit.LoraConfig(r=2, target_modules=["q_proj"]))
    ours.add_adapter("extra", peftkit.LoraConfig(r=3, target_modules=["k_proj"]))
    ours.set_adapter("extra")
    randomize_trainable(ours)
    expected = logits(ours)
    ours.save_pretrained(tmp_path)

    assert (tmp_path / "extra" / "adapter_model.safetensors").is_file()
    theirs = peft.PeftModel.from_pretrained(tiny_model("llama"), tmp_path / "extra")
    assert (logits(theirs) - expected).abs().max() <= TOLERANCE


def test_peft_adapter_loads_as_a_named_second_adapter(tmp_path):
    peft_model = peft.get_peft_model(tiny_model("gpt2"), peft.LoraConfig(r=4, target_modules=["c_attn"]))
    randomize_trainable(peft_model)
    expected = logits(peft_model)
    peft_model.save_pretrained(tmp_path)

    ours = peftkit.get_peft_model(tiny_model("gpt2"), peftkit.LoraConfig(r=2, target_modules=["c_proj"]))
    ours.load_adapter(tmp_path, adapter_name="from_peft")
    ours.set_adapter("from_peft")
    assert (logits(ours) - expected).abs().max() <= TOLERANCE


def test_all_linear_is_saved_as_the_module_names_it_meant_so_peft_hits_the_same(tmp_path):
    config = peftkit.LoraConfig(r=2, target_modules="all-linear")
    ours = peftkit.get_peft_model(tiny_model("bert"), config)
    ours.save_pretrained(tmp_path)
    saved = json.loads((tmp_path / "adapter_config.json").read_text())["target_modules"]
    assert config.target_modules == "all-linear"  # the caller's config is left as written
    assert "classifier" not in saved and len(saved) == 13
    theirs = peft.PeftModel.from_pretrained(tiny_model("bert"), tmp_path)
    wrapped = {name.removeprefix("base_model.model.") for name, module in theirs.named_modules()
               if hasattr(module, "lora_A") and not name.endswith((".lora_A", ".lora_B"))}
    assert wrapped == set(saved)
