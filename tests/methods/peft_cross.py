"""A peftkit adapter with given settings, saved and read by Hugging Face peft, and back: the outputs agree."""

from __future__ import annotations

import peft
import torch

import peftkit
from tests.conftest import assert_changed, logits, randomize_trainable, tiny_model


def outputs_cross_with_peft(config, tmp_path, kind: str = "bert", scale: float = 0.2) -> float:
    """The largest output difference over both directions, in float64, for ``config`` on the tiny ``kind`` model."""
    double = torch.float64
    model = peftkit.get_peft_model(tiny_model(kind).to(double), config)
    randomize_trainable(model, scale=scale)
    expected = logits(model)
    assert_changed(expected, logits(tiny_model(kind).to(double)), at_least=1e-3)  # the adapter really acts
    model.save_pretrained(tmp_path / "ours")
    theirs = peft.PeftModel.from_pretrained(tiny_model(kind).to(double), tmp_path / "ours").eval()
    worst = (logits(theirs) - expected).abs().max().item()
    theirs.save_pretrained(tmp_path / "theirs")
    back = peftkit.PeftModel.from_pretrained(tiny_model(kind).to(double), tmp_path / "theirs")
    return max(worst, (logits(back) - expected).abs().max().item())
