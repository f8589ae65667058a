"""Knowledge distillation from a teacher model's logits (PANDA's second term).

Zhong et al., 2022, "PANDA: Prompt Transfer Meets Knowledge Distillation for Efficient Model Adaptation":

    L = L_task + β · MSE(z_student, z_teacher),     MSE = mean over examples and classes of (z_s − z_t)²

The teacher is frozen and runs, without gradients, on the same inputs as each training forward of the
student (a forward hook on the student keeps those inputs and its logits). ``loss()`` returns the term
after each training forward (a plain loop, or ``ObjectiveTrainer`` for transformers' Trainer).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from peftkit.core.errors import ConfigError


class DistillationLoss:
    def __init__(self, student: nn.Module, teacher: nn.Module, weight: float = 1.0) -> None:
        if not isinstance(weight, (int, float)) or weight < 0:
            raise ConfigError(f"distillation weight must be ≥ 0, got {weight!r}")
        self.teacher, self.weight = teacher.eval().requires_grad_(False), float(weight)
        self._inputs: dict | None = None
        self._logits: torch.Tensor | None = None
        self._hook = student.register_forward_hook(self._capture, with_kwargs=True)

    def _capture(self, module, args, kwargs, output) -> None:
        if module.training:
            if args:
                raise ConfigError("distillation needs the student called with keyword inputs (model(**batch))")
            self._inputs = {k: v for k, v in kwargs.items() if k != "labels"}
            self._logits = output.logits

    def loss(self) -> torch.Tensor:
        if self._logits is None:
            raise ConfigError("DistillationLoss.loss() needs a training forward pass of the student first")
        with torch.no_grad():
            teacher_logits = self.teacher(**self._inputs).logits
        student_logits, self._inputs, self._logits = self._logits, None, None
        return self.weight * F.mse_loss(student_logits, teacher_logits.to(student_logits.dtype))

    def remove(self) -> None:
        self._hook.remove()
