"""LoRA's CorDA initialisation: the same factors and residual base as peft's CorDA on the same samples (IPM and KPM,
float32), the model unchanged at the start, the decomposition cached to a file, a plain-LoRA save peft reads, and
the refusals."""

from __future__ import annotations

import json
import types

import peft
import pytest
import torch
from peft.tuners.lora.config import CordaConfig as PeftCordaConfig
from peft.tuners.lora.corda import preprocess_corda as peft_preprocess_corda

import peftkit
from peftkit.core.errors import ConfigError
from tests.conftest import VOCAB, randomize_trainable, tiny_batch, tiny_model

TARGETS = ["q_proj", "v_proj", "o_proj", "down_proj"]
PEFT = types.SimpleNamespace(LoraConfig=peft.LoraConfig, CordaConfig=PeftCordaConfig,
                             preprocess_corda=peft_preprocess_corda, get_peft_model=peft.get_peft_model)


def samples() -> list[torch.Tensor]:
    generator = torch.Generator().manual_seed(3)
    return [torch.randint(1, VOCAB, (1, 24), generator=generator) for _ in range(12)]


def runner(model):
    def run() -> None:
        with torch.no_grad():
            for ids in samples():
                model(input_ids=ids)
    return run


def prepared(library, method: str, **corda):
    model = tiny_model("llama")
    config = library.LoraConfig(r=4, lora_alpha=8, target_modules=TARGETS, init_lora_weights="corda",
                                corda_config=library.CordaConfig(corda_method=method, **corda))
    library.preprocess_corda(model, config, run_model=runner(model))
    return library.get_peft_model(model, config)


@pytest.mark.parametrize("method", ["ipm", "kpm"])
def test_the_factors_and_the_residual_base_equal_peft_s(method):
    ours, theirs = prepared(peftkit, method), prepared(PEFT, method)
    their_layers = {name.removeprefix("base_model.model."): module for name, module in theirs.named_modules()
                    if hasattr(module, "lora_A") and "default" in getattr(module, "lora_A", {})}
    assert their_layers
    for path, layer in ours.adapter_layers():
        other = their_layers[path]
        for part in ("lora_A", "lora_B"):
            assert torch.allclose(getattr(layer, part)["default"].weight, getattr(other, part)["default"].weight,
                                  rtol=1e-4, atol=1e-5), (path, part)
        assert torch.allclose(layer.base_layer.weight, other.base_layer.weight, atol=1e-5), path


def test_the_model_starts_unchanged_and_the_saved_adapter_reads_in_peft_on_the_residual_base(tmp_path):
    model = prepared(peftkit, "kpm")
    batch = tiny_batch()
    with torch.no_grad():
        assert torch.allclose(model(**batch).logits, tiny_model("llama")(**batch).logits, atol=1e-4)
    randomize_trainable(model)
    with torch.no_grad():
        expected = model(**batch).logits
    model.save_pretrained(tmp_path / "adapter")
    assert json.loads((tmp_path / "adapter" / "adapter_config.json").read_text())["init_lora_weights"] is True
    residual = tiny_model("llama")
    residual.load_state_dict({name.replace(".base_layer", ""): value
                              for name, value in model.get_base_model().state_dict().items() if "lora_" not in name})
    theirs = peft.PeftModel.from_pretrained(residual, tmp_path / "adapter").eval()
    with torch.no_grad():
        assert torch.allclose(theirs(**batch).logits, expected, atol=1e-5)


def test_a_cache_file_gives_the_same_decomposition_without_running_the_model(tmp_path):
    cache = str(tmp_path / "corda" / "cache.pt")
    first = prepared(peftkit, "ipm", cache_file=cache)
    model = tiny_model("llama")
    config = peftkit.LoraConfig(r=4, lora_alpha=8, target_modules=TARGETS, init_lora_weights="corda",
                                corda_config=peftkit.CordaConfig(cache_file=cache))
    peftkit.preprocess_corda(model, config)  # no run_model: read from the cache
    second = peftkit.get_peft_model(model, config)
    for (path, a), (_, b) in zip(first.adapter_layers(), second.adapter_layers(), strict=True):
        assert torch.equal(a.lora_A["default"].weight, b.lora_A["default"].weight), path


def test_corda_without_preprocessing_is_refused_and_leaves_the_model():
    model = tiny_model("llama")
    before = [name for name, _ in model.named_modules()]
    with pytest.raises(ConfigError, match="run peftkit.preprocess_corda"):
        peftkit.get_peft_model(model, peftkit.LoraConfig(r=4, target_modules=TARGETS, init_lora_weights="corda"))
    assert [name for name, _ in model.named_modules()] == before


@pytest.mark.parametrize("settings, message", [({"corda_config": {"corda_method": "abc"}}, "'ipm' or 'kpm'"),
                                               ({"corda_config": {"method": "ipm"}}, "unknown key")])
def test_bad_corda_settings_are_one_line(settings, message):
    with pytest.raises(ConfigError, match=message):
        peftkit.LoraConfig(init_lora_weights="corda", **settings)
