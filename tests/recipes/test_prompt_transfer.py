"""Prompt transfer: starting a prompt from a saved one, and the transferability metric's properties."""

from __future__ import annotations

import pytest
import torch

import peftkit
from peftkit.recipes.prompt_transfer import transferability
from tests.conftest import tiny_batch, tiny_model, without_dropout

BATCHES = [tiny_batch(4, 9), tiny_batch(3, 6)]


def prompt_model(seed: int) -> peftkit.PeftModel:
    base = without_dropout(tiny_model("bert"))  # tiny_model seeds itself
    torch.manual_seed(seed)
    return peftkit.get_peft_model(base, peftkit.PromptTuningConfig(num_virtual_tokens=4, task_type="SEQ_CLS"))


def saved_prompt(tmp_path, seed: int, near: torch.Tensor | None = None):
    """A random prompt saved to a folder (or ``near`` plus a little noise); (folder, its tokens)."""
    model = prompt_model(seed)
    if near is not None:
        with torch.no_grad():
            model.prompt_encoder["default"].embedding.weight.copy_(near + 0.1 * torch.randn_like(near))
    folder = tmp_path / f"prompt{seed}"
    model.save_pretrained(folder)
    return folder, model.prompt_encoder["default"].virtual_tokens().detach()


def test_load_prompt_starts_from_the_saved_tokens_and_trains_them(tmp_path):
    folder, tokens = saved_prompt(tmp_path, 1)
    model = prompt_model(2)
    assert not torch.equal(model.prompt_encoder["default"].virtual_tokens(), tokens)
    model.load_prompt(folder)
    loaded = model.prompt_encoder["default"].virtual_tokens()
    assert torch.equal(loaded.detach(), tokens) and loaded.requires_grad


def test_load_prompt_refuses_other_shapes_and_non_prompt_encoder(tmp_path):
    folder, _ = saved_prompt(tmp_path, 1)
    longer = peftkit.get_peft_model(tiny_model("bert"), peftkit.PromptTuningConfig(num_virtual_tokens=6))
    with pytest.raises(peftkit.CheckpointError, match=r"prompt_embeddings' of shape \(6, 32\)"):
        longer.load_prompt(folder)
    lora = peftkit.get_peft_model(tiny_model("bert"), peftkit.LoraConfig(target_modules=["query"]))
    with pytest.raises(peftkit.ConfigError, match="not a prompt-learning adapter"):
        lora.load_prompt(folder)


def test_transferability_is_one_for_a_prompt_with_itself_and_symmetric(tmp_path):
    a, tokens = saved_prompt(tmp_path, 1)
    b, _ = saved_prompt(tmp_path, 2)
    close, _ = saved_prompt(tmp_path, 3, near=tokens)
    model = prompt_model(4)
    assert transferability(model, BATCHES, a, a) == pytest.approx(1.0, abs=1e-6)
    forward, backward = transferability(model, BATCHES, a, b), transferability(model, BATCHES, b, a)
    assert forward == pytest.approx(backward, abs=1e-6)
    assert -1.0 <= forward < 1.0 - 1e-6
    assert 1 - transferability(model, BATCHES, a, close) < 0.5 * (1 - forward)  # a near prompt transfers better
