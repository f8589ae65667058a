"""Knowledge distillation: the term by hand, a frozen teacher, a student pulled to the teacher's logits."""

from __future__ import annotations

import pytest
import torch

import peftkit
from peftkit.objectives.distillation import DistillationLoss
from tests.conftest import randomize_trainable, tiny_batch, tiny_model, train_losses, without_dropout

BATCH = {**tiny_batch(4), "labels": torch.tensor([0, 1, 2, 1])}


def lora_model(seed: int) -> peftkit.PeftModel:
    model = peftkit.get_peft_model(without_dropout(tiny_model("bert")),
                                   peftkit.LoraConfig(r=4, target_modules=["query", "value"]))
    randomize_trainable(model, seed=seed, scale=0.5)
    return model


def test_term_equals_weighted_mse_of_logits_and_the_teacher_stays_frozen():
    student, teacher = lora_model(1), lora_model(2)
    objective = DistillationLoss(student, teacher, weight=0.3)
    student.train()
    logits = student(**BATCH).logits
    with torch.no_grad():
        expected = 0.3 * ((logits - teacher(**{k: v for k, v in BATCH.items() if k != "labels"}).logits) ** 2).mean()
    term = objective.loss()
    assert term.item() == pytest.approx(expected.item(), rel=1e-6)
    term.backward()
    assert all(p.grad is None for p in teacher.parameters())
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in student.parameters() if p.requires_grad)
    objective.remove()


def other_teacher() -> torch.nn.Module:
    """The tiny model with another classification head: logits far from the student's."""
    teacher = without_dropout(tiny_model("bert"))
    torch.manual_seed(5)
    torch.nn.init.normal_(teacher.classifier.weight, std=1.0)
    return teacher


def test_distillation_alone_pulls_the_student_to_the_teacher():
    student = peftkit.get_peft_model(without_dropout(tiny_model("bert")), peftkit.LoraConfig(
        r=4, target_modules=["query", "value"], modules_to_save=["classifier"]))
    teacher = other_teacher()
    objective = DistillationLoss(student, teacher, weight=1.0)
    losses = train_losses(student, BATCH, steps=40, lr=2e-2, extra_loss=lambda: objective.loss() * 50)
    objective.remove()
    # the task loss is part of each step's loss; the distance to the teacher is what must fall
    student.eval()
    with torch.no_grad():
        inputs = {k: v for k, v in BATCH.items() if k != "labels"}
        gap = ((student(**inputs).logits - teacher(**inputs).logits) ** 2).mean().item()
    start = without_dropout(tiny_model("bert"))
    with torch.no_grad():
        start_gap = ((start(**inputs).logits - teacher(**inputs).logits) ** 2).mean().item()
    assert gap < 0.2 * start_gap
    assert losses[-1] < losses[0]


def test_bad_weight_and_missing_forward_are_errors():
    student, teacher = lora_model(1), lora_model(2)
    with pytest.raises(peftkit.ConfigError, match="distillation weight"):
        DistillationLoss(student, teacher, weight=-1)
    with pytest.raises(peftkit.ConfigError, match="needs a training forward"):
        DistillationLoss(student, teacher).loss()
