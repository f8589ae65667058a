"""Hot-swapping adapter weights into a loaded model without re-creating modules."""

from __future__ import annotations

import pytest
import torch

import peftkit
from peftkit.core.errors import CheckpointError, ConfigError
from tests.conftest import logits, randomize_trainable, tiny_model, without_dropout


def saved_lora(folder, seed: int, alpha: float, r: int = 4) -> None:
    model = peftkit.get_peft_model(without_dropout(tiny_model("llama")),
                                   peftkit.LoraConfig(r=r, lora_alpha=alpha, target_modules=["q_proj", "v_proj"]))
    randomize_trainable(model, seed=seed)
    model.save_pretrained(folder)


def loaded(folder):
    return peftkit.PeftModel.from_pretrained(without_dropout(tiny_model("llama")), folder).eval()


def test_hotswap_gives_the_other_adapter_without_new_modules(tmp_path):
    saved_lora(tmp_path / "first", seed=1, alpha=8)
    saved_lora(tmp_path / "second", seed=2, alpha=16)
    model = loaded(tmp_path / "first")
    before = logits(model)
    modules = {name: id(module) for name, module in model.named_modules()}
    parameters = {name: id(p) for name, p in model.named_parameters()}
    model.hotswap_adapter(tmp_path / "second")
    assert {name: id(module) for name, module in model.named_modules()} == modules
    assert {name: id(p) for name, p in model.named_parameters()} == parameters
    expected = logits(loaded(tmp_path / "second"))
    assert (logits(model) - expected).abs().max() < 1e-6
    assert (before - expected).abs().max() > 1e-3
    assert model.peft_config["default"].lora_alpha == 16


def test_a_mismatched_adapter_is_refused_and_changes_nothing(tmp_path):
    saved_lora(tmp_path / "first", seed=1, alpha=8)
    saved_lora(tmp_path / "wide", seed=2, alpha=8, r=6)
    peftkit.get_peft_model(tiny_model("llama"), peftkit.IA3Config(target_modules=["k_proj", "v_proj"],
                                                                    feedforward_modules=[])).save_pretrained(
        tmp_path / "ia3")
    model = loaded(tmp_path / "first")
    before = logits(model)
    with pytest.raises(CheckpointError, match=r"has shape \(6, 32\), the model needs \(4, 32\)"):
        model.hotswap_adapter(tmp_path / "wide")
    with pytest.raises(CheckpointError, match="a IA3 adapter; 'default' is LORA"):
        model.hotswap_adapter(tmp_path / "ia3")
    assert torch.equal(logits(model), before)
    model.merge_adapter()
    with pytest.raises(ConfigError, match="is merged; unmerge it before hot-swapping"):
        model.hotswap_adapter(tmp_path / "first")
