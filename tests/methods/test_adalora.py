"""AdaLoRA: the same budget allocation as peft's, checkpoints both ways, the orthogonality regulariser."""

from __future__ import annotations

import peft
import pytest
import torch

import peftkit
from peftkit.methods.adalora import AdaLoraLinear
from peftkit.objectives.orthogonality import OrthogonalityLoss
from tests.conftest import (
    ATTENTION_TARGETS,
    assert_changed,
    logits,
    randomize_trainable,
    tiny_batch,
    tiny_model,
    without_dropout,
)

SETTINGS = {"init_r": 4, "target_r": 2, "tinit": 2, "tfinal": 3, "deltaT": 1, "total_step": 12, "lora_alpha": 8}
TOLERANCE = 1e-5


def batch_for(kind: str) -> dict:
    batch = tiny_batch(4)
    labels = torch.tensor([0, 1, 2, 1]) if kind == "bert" else batch["input_ids"]
    return {**batch, "labels": labels}


def peft_adalora(kind: str):
    config = peft.AdaLoraConfig(target_modules=ATTENTION_TARGETS[kind], **SETTINGS)
    model = peft.get_peft_model(without_dropout(tiny_model(kind)), config)
    randomize_trainable(model)  # E starts at zero, which would hide a wrong scale
    return model


def peftkit_like(peft_model, kind: str):
    """peftkit's AdaLoRA with the peft model's starting tensors."""
    config = peftkit.AdaLoraConfig(target_modules=ATTENTION_TARGETS[kind], **SETTINGS)
    ours = peftkit.get_peft_model(without_dropout(tiny_model(kind)), config)
    theirs = dict(peft_model.named_parameters())  # the same names as peft's
    with torch.no_grad():
        for name, parameter in ours.named_parameters():
            if "lora_" in name:
                parameter.copy_(theirs[name])
    return ours


def train_both(kind: str, steps: int = 12):
    peft_model = peft_adalora(kind)
    ours = peftkit_like(peft_model, kind)
    batch = batch_for(kind)
    orthogonality = OrthogonalityLoss(ours)
    allocator = peftkit.AdaLoraAllocator(ours)
    optimizers = [torch.optim.SGD([p for p in m.parameters() if p.requires_grad], lr=0.5) for m in (peft_model, ours)]
    peft_model.train(), ours.train()
    for step in range(steps):
        peft_model.base_model(**batch).loss.backward()  # peft's AdaLoraModel adds its orthogonality term
        (ours(**batch).loss + orthogonality.loss()).backward()
        for optimizer in optimizers:
            optimizer.step()
        peft_model.base_model.update_and_allocate(step)
        allocator.step(step)
        for optimizer in optimizers:
            optimizer.zero_grad()
    return peft_model.eval(), ours.eval(), allocator


@pytest.mark.parametrize("kind", ["bert", "gpt2"])
def test_budget_allocation_matches_peft_step_for_step(kind):
    peft_model, ours, allocator = train_both(kind)
    theirs = peft_model.peft_config["default"].rank_pattern
    assert ours.peft_config["default"].rank_pattern == {k.replace(".default", ""): v for k, v in theirs.items()}
    assert sum(allocator.ranks().values()) == SETTINGS["target_r"] * len(allocator.layers)
    assert (logits(ours, batch_for(kind)) - logits(peft_model, batch_for(kind))).abs().max() <= 1e-4


def test_budget_follows_the_cubic_schedule():
    model = peftkit.get_peft_model(tiny_model("bert"), peftkit.AdaLoraConfig(target_modules=["query", "value"],
                                                                             **SETTINGS))
    allocator = peftkit.AdaLoraAllocator(model)
    start, end = 4 * 4, 2 * 4  # 4 modules
    assert allocator.budget(2) == (start, False)
    for step in range(3, 10):
        remaining = 1 - (step - 2) / (12 - 3 - 2)
        assert allocator.budget(step) == (int((start - end) * remaining ** 3 + end), True)
    assert allocator.budget(10) == (end, True)


def test_pruned_peftkit_adapter_loads_into_peft_with_same_logits(tmp_path):
    _, ours, _ = train_both("bert")
    expected = logits(ours, batch_for("bert"))
    ours.save_pretrained(tmp_path)
    loaded = peft.PeftModel.from_pretrained(tiny_model("bert"), tmp_path)
    assert (logits(loaded, batch_for("bert")) - expected).abs().max() <= TOLERANCE
    assert_changed(expected, logits(tiny_model("bert"), batch_for("bert")))


@pytest.mark.parametrize("kind", ["bert", "llama"])
def test_pruned_peft_adapter_loads_into_peftkit_with_same_logits(kind, tmp_path):
    peft_model, _, _ = train_both(kind)
    expected = logits(peft_model, batch_for(kind))
    peft_model.save_pretrained(tmp_path)
    loaded = peftkit.PeftModel.from_pretrained(tiny_model(kind), tmp_path)
    layers = [m for m in loaded.modules() if isinstance(m, AdaLoraLinear)]
    assert sum(layer.lora_E["default"].shape[0] for layer in layers) == SETTINGS["target_r"] * len(layers)
    assert (logits(loaded, batch_for(kind)) - expected).abs().max() <= TOLERANCE


def test_orthogonality_regulariser_equals_hand_computation():
    model = peftkit.get_peft_model(tiny_model("bert"), peftkit.AdaLoraConfig(target_modules=["query"], init_r=3,
                                                                             target_r=2))
    layers = [m for m in model.modules() if isinstance(m, AdaLoraLinear)]
    terms = []
    for layer in layers:
        a, b = layer.lora_A["default"].detach(), layer.lora_B["default"].detach()
        terms += [torch.sqrt(((a @ a.T - torch.eye(3)) ** 2).sum()), torch.sqrt(((b.T @ b - torch.eye(3)) ** 2).sum())]
    objective = OrthogonalityLoss(model)
    assert objective.loss().item() == pytest.approx(0.5 * torch.stack(terms).mean().item(), rel=1e-6)
    with torch.no_grad():  # orthonormal rows and columns: zero
        for layer in layers:
            layer.lora_A["default"].copy_(torch.eye(3, 32))
            layer.lora_B["default"].copy_(torch.eye(32, 3))
    assert objective.loss().item() == pytest.approx(0.0, abs=1e-6)


def test_allocator_needs_total_step():
    model = peftkit.get_peft_model(tiny_model("bert"), peftkit.AdaLoraConfig(target_modules=["query"]))
    with pytest.raises(peftkit.ConfigError, match="total_step"):
        peftkit.AdaLoraAllocator(model)
    with pytest.raises(peftkit.ConfigError, match="target_r .* must not exceed init_r"):
        peftkit.AdaLoraConfig(init_r=2, target_r=4)
