"""The SVD-shaped low-rank update that AdaLoRA and IncreLoRA share.

For a frozen Linear / Conv1D with weight W (out × in) and bias b, k rank-1 components (aᵢ, eᵢ, bᵢ):

    h = W x + b + s · B diag(E) A dropout(x),   A: k × in (rows aᵢ),  E: k × 1,  B: out × k (columns bᵢ)
    s = α / (r + 1e-5)

r is what each method divides by (AdaLoRA: its initial rank, as peft; IncreLoRA: the number of active
components); the 1e-5 is peft's. ``factors(name)`` gives (A, E, B); the methods differ in how they store
and change them.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from transformers.pytorch_utils import Conv1D

from peftkit.core.errors import ConfigError
from peftkit.core.layer import AdapterLayer
from peftkit.methods.lora.layers import linear_shape

RANK_EPSILON = 1e-5  # peft's guard in α / (r + ε)


def require_int(name: str, value, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ConfigError(f"{name} must be an integer ≥ {minimum}, got {value!r}")


def check_allocation_settings(config) -> None:
    """The settings AdaLoRA and IncreLoRA share: β₁, β₂ in (0, 1), orth_reg_weight ≥ 0, α > 0, dropout in [0, 1)."""
    for name in ("beta1", "beta2"):
        value = getattr(config, name)
        if not isinstance(value, (int, float)) or not 0 < value < 1:
            raise ConfigError(f"{name} must be in (0, 1), got {value!r}")
    if not isinstance(config.orth_reg_weight, (int, float)) or config.orth_reg_weight < 0:
        raise ConfigError(f"orth_reg_weight must be ≥ 0, got {config.orth_reg_weight!r}")
    if not isinstance(config.lora_alpha, (int, float)) or config.lora_alpha <= 0:
        raise ConfigError(f"lora_alpha must be positive, got {config.lora_alpha!r}")
    if not isinstance(config.lora_dropout, (int, float)) or not 0 <= config.lora_dropout < 1:
        raise ConfigError(f"lora_dropout must be in [0, 1), got {config.lora_dropout!r}")


class SvdLowRankLinear(AdapterLayer):
    """h = W x + b + s · B diag(E) A dropout(x) (see the module docstring)."""

    def __init__(self, base_layer: nn.Module) -> None:
        super().__init__(base_layer)
        self.transposed = isinstance(self.base, Conv1D)
        self.in_features, self.out_features = linear_shape(self.base)
        self.lora_dropout = nn.ModuleDict()
        self.lora_alpha: dict[str, float] = {}

    def factors(self, name: str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(A, E, B) of the adapter."""
        raise NotImplementedError

    def rank_divisor(self, name: str) -> float:
        raise NotImplementedError

    def factor_matrices(self, name: str) -> tuple[torch.Tensor, torch.Tensor]:
        """(A, B), for the orthogonality regulariser."""
        lora_a, _, lora_b = self.factors(name)
        return lora_a, lora_b

    def scale(self, name: str) -> float:
        return self.lora_alpha[name] / (self.rank_divisor(name) + RANK_EPSILON)

    def _new_tensor_options(self) -> dict:
        weight = self.weight
        return {"device": weight.device, "dtype": weight.dtype if weight.dtype.is_floating_point else torch.float32}

    def _add_dropout(self, name: str, p: float) -> None:
        self.lora_dropout[name] = nn.Dropout(p) if p > 0 else nn.Identity()

    def delta_weight(self, name: str) -> torch.Tensor:
        lora_a, lora_e, lora_b = self.factors(name)
        delta = self.scale(name) * (lora_b @ (lora_a * lora_e))
        return delta.T if self.transposed else delta

    def low_rank_update(self, name: str, x: torch.Tensor) -> torch.Tensor:
        """s · B diag(E) A dropout(x)."""
        lora_a, lora_e, lora_b = self.factors(name)
        dropped = self.lora_dropout[name](x.to(lora_a.dtype))
        update = F.linear(F.linear(dropped, lora_a * lora_e), lora_b) * self.scale(name)
        self.observe(name, dropped, update)
        return update

    def observe(self, name: str, dropped_input: torch.Tensor, update: torch.Tensor) -> None:
        """Sees each forward's (dropped) input and update: where IncreLoRA scores a module's importance."""

    def apply_adapters(self, names: list[str], x: torch.Tensor, *args, **kwargs) -> torch.Tensor:
        result = self.call_base(names, x, *args, **kwargs)
        for name in self.own(names):
            result = result + self.low_rank_update(name, x).to(result.dtype)
        return result
