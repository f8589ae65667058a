"""The orthogonality regulariser of SVD-shaped low-rank updates (AdaLoRA, IncreLoRA).

Zhang et al., 2023, "AdaLoRA: Adaptive Budget Allocation for Parameter-Efficient Fine-Tuning", eq. 4 (as
peft computes it): for every adapted module with factors A (k × in) and B (out × k),

    R = mean over the 2·modules matrices of ‖A Aᵀ − I‖_F and ‖Bᵀ B − I‖_F,     L = L_task + w · R

so that A's rows and B's columns stay near orthonormal, like singular vectors. ``loss()`` reads the
current parameters (no hooks): add it in a plain loop, or pass the objective to ``ObjectiveTrainer``.
"""

from __future__ import annotations

import torch
from torch import nn

from peftkit.core.errors import ConfigError
from peftkit.methods.lora.svd import SvdLowRankLinear


class OrthogonalityLoss:
    """w · R over the SVD-shaped layers holding ``adapter_name`` (w: the config's ``orth_reg_weight``)."""

    def __init__(self, model: nn.Module, adapter_name: str = "default", weight: float | None = None) -> None:
        self.layers = [m for m in model.modules() if isinstance(m, SvdLowRankLinear) and m.has_adapter(adapter_name)]
        if not self.layers:
            raise ConfigError(f"no AdaLoRA / IncreLoRA layer holds adapter '{adapter_name}'")
        self.name = adapter_name
        self.weight = model.peft_config[adapter_name].orth_reg_weight if weight is None else weight

    def regulariser(self) -> torch.Tensor:
        terms = []
        for layer in self.layers:
            lora_a, lora_b = layer.factor_matrices(self.name)
            for gram in (lora_a @ lora_a.T, lora_b.T @ lora_b):
                eye = torch.eye(gram.shape[0], device=gram.device, dtype=gram.dtype)
                terms.append(torch.linalg.matrix_norm(gram - eye))
        return torch.stack(terms).mean()

    def loss(self) -> torch.Tensor:
        return self.weight * self.regulariser()

    def remove(self) -> None:
        """Nothing to undo: the objective holds no hooks."""
