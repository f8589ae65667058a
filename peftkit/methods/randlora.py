"""RandLoRA: a full-rank update from many frozen random low-rank bases, each scaled by small trained matrices.

Albert, Zhang, Shi and Koniusz, 2025, "RandLoRA: Full-rank parameter-efficient fine-tuning of large models". For the
model, one frozen A ∈ ℝ^{r × 1 × d} and B ∈ ℝ^{D × N × r} are drawn from a generator seeded with
``projection_prng_key`` (Kaiming-uniform in bfloat16 as peft draws them, each divided by its standard deviation;
``sparse`` / ``very_sparse``: ±1 entries of probability 1/(2s) each, s = 3 or √d), d and D being the smaller and
larger of the largest input and output widths, N = ⌈d / r⌉. A layer with weight W (out × in), m = min(in, out),
M = max(in, out), n = ⌈m / r⌉ bases, trains Λ (r × n) and Γ (n × m), and forms

    Â = flatten₀₁(Λ[:, :, None] ⊙ A[:, :, :m] ⊙ Γ[None]) (rn × m),    B̂ = flatten₁₂(B[:M, :n]) (M × nr)
    ΔW = s · B̂ Â  (in ≤ out),   ΔW = s · Âᵀ B̂ᵀ  (in > out),   s = α / r,    h = W x + b + ΔW x

(the row order of Â and the column order of B̂ are peft's). Λ starts at zero, so the model starts unchanged; Γ at
1 / max(n, m). Saved tensors, as peft names them: ``randlora_lambda`` = Λ, ``randlora_gamma`` = Γ per layer; with
``save_projection``, ``base_model.randlora_A`` = A, ``base_model.randlora_B`` = B, and a copy of both under each
layer's keys. Field names and defaults are peft's.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from peftkit.core.config import TargetedConfig, config_dataclass
from peftkit.core.registry import Method, register_method
from peftkit.core.shared import SharedTensors
from peftkit.methods.config_rules import require_choice, require_positive, require_probability
from peftkit.methods.lora import LORA_DEFAULT_TARGETS, linear_shape
from peftkit.methods.vera import largest_widths
from peftkit.methods.weight_delta import WeightDeltaLayer, weight_layers


@config_dataclass
class RandLoraConfig(TargetedConfig):
    """RandLoRA settings, with peft's field names and defaults."""

    peft_type = "RANDLORA"
    default_targets = LORA_DEFAULT_TARGETS
    r: int = 32
    projection_prng_key: int = 0
    save_projection: bool = True
    sparse: bool = False
    very_sparse: bool = False
    randlora_dropout: float = 0.0
    fan_in_fan_out: bool = False  # peft's flag for Conv1D; the layout is read from the module type
    randlora_alpha: float = 640
    bias: str = "none"
    init_weights: bool = True

    omit_at_default = ("exclude_modules",)  # peft's RandLoRA has no such field
    field_aliases = {"rank": "r", "alpha": "randlora_alpha", "dropout": "randlora_dropout",
                     "targets": "target_modules"}

    def validate(self) -> None:
        super().validate()
        require_positive("r", self.r, integer=True)
        require_positive("randlora_alpha", self.randlora_alpha)
        require_probability("randlora_dropout", self.randlora_dropout)
        require_choice("bias", self.bias, ("none", "all", "randlora_only"))


def bases_count(width: int, r: int) -> int:
    """⌈width / r⌉: enough rank-r bases to reach full rank."""
    return math.ceil(width / r)


def sparse_signs(uniform: torch.Tensor, sparsity: float) -> torch.Tensor:
    """−1 where u < 1/(2s), +1 where u > 1 − 1/(2s), else 0."""
    signs = torch.zeros(uniform.shape)
    signs[uniform < 1 / (2 * sparsity)] = -1
    signs[uniform > 1 - 1 / (2 * sparsity)] = 1
    return signs


def half_precision_draw(shape: tuple[int, ...], generator: torch.Generator) -> torch.Tensor:
    """peft's dense draw: Kaiming-uniform (a = √5) in bfloat16 (float16 where a CUDA device lacks bfloat16)."""
    bfloat16 = not torch.cuda.is_available() or torch.cuda.is_bf16_supported()
    tensor = torch.empty(shape, dtype=torch.bfloat16 if bfloat16 else torch.float16)
    return nn.init.kaiming_uniform_(tensor, a=math.sqrt(5), generator=generator)


class RandLoraBases(SharedTensors):
    """The frozen A (r × 1 × d) and B (D × N × r), saved only with ``save_projection``."""

    def __init__(self, config: RandLoraConfig, modules: dict[str, nn.Module]) -> None:
        super().__init__(config, modules)
        self.save_projection = config.save_projection
        small, large = sorted(largest_widths(modules))
        count = bases_count(small, config.r)
        generator = torch.Generator().manual_seed(config.projection_prng_key)
        if config.sparse or config.very_sparse:
            a = torch.rand((config.r, 1, small), generator=generator)
            b = torch.rand((large, count, config.r), generator=generator)
            sparsity = math.sqrt(small) if config.very_sparse else 3
            a, b = sparse_signs(a, sparsity), sparse_signs(b, sparsity)
        else:
            a = half_precision_draw((config.r, 1, small), generator)
            b = torch.cat([half_precision_draw((large, 1, config.r), generator) for _ in range(count)], dim=1)
        where = self.placement(modules)
        self.register_buffer("randlora_A", (a / a.std()).to(**where), persistent=config.save_projection)
        self.register_buffer("randlora_B", (b / b.std()).to(**where), persistent=config.save_projection)

    def layer_shapes(self, module_name: str) -> dict[str, tuple]:
        if not self.save_projection:
            return {}
        return {"randlora_A": tuple(self.randlora_A.shape), "randlora_B": tuple(self.randlora_B.shape)}


class RandLoraLinear(WeightDeltaLayer):
    adapter_attributes = ("randlora_lambda", "randlora_gamma")

    def __init__(self, base_layer: nn.Module) -> None:
        super().__init__(base_layer)
        self.randlora_lambda = nn.ParameterDict()
        self.randlora_gamma = nn.ParameterDict()
        self.dropout: dict[str, float] = {}

    @classmethod
    def expected_shapes(cls, base_layer: nn.Module, config: RandLoraConfig, module_name: str) -> dict[str, tuple]:
        small = min(linear_shape(base_layer))
        count = bases_count(small, config.r)
        return {"randlora_lambda": (config.r, count), "randlora_gamma": (count, small)}

    def add_adapter(self, name: str, config: RandLoraConfig, module_name: str) -> None:
        shapes = self.expected_shapes(self.base, config, module_name)
        lambda_, gamma = self.new_tensor(*shapes["randlora_lambda"]), self.new_tensor(*shapes["randlora_gamma"])
        if config.init_weights:
            lambda_.zero_()
            gamma.fill_(1 / max(gamma.shape))
        else:
            lambda_.normal_()
            gamma.fill_(1 / max(self.in_features, self.out_features))
        self.randlora_lambda[name] = nn.Parameter(lambda_)
        self.randlora_gamma[name] = nn.Parameter(gamma)
        self.scaling[name] = config.randlora_alpha / config.r
        self.dropout[name] = config.randlora_dropout

    def adapter_state_dict(self, name: str) -> dict[str, torch.Tensor]:
        """The trained Λ, Γ, and the shared bases under this layer's keys where the checkpoint holds them."""
        tensors = super().adapter_state_dict(name)
        shared = self.shared.get(name)
        if shared is not None and shared.save_projection and name in self.randlora_lambda:
            tensors.update(randlora_A=shared.randlora_A, randlora_B=shared.randlora_B)
        return tensors

    def frozen_tensors(self, name: str) -> list[torch.Tensor]:
        tensors = self.adapter_state_dict(name)
        return [tensors[key] for key in ("randlora_A", "randlora_B") if key in tensors]

    def factors(self, name: str) -> tuple[torch.Tensor, torch.Tensor]:
        """(Â: rn × m, B̂: M × nr), as in the module docstring."""
        lambda_, gamma = self.randlora_lambda[name], self.randlora_gamma[name]
        count, small = gamma.shape
        shared = self.shared[name]
        a = shared.randlora_A[:, :count, :small]
        b = shared.randlora_B[: max(self.in_features, self.out_features), :count, :]
        a_hat = (lambda_[:, :, None] * a * gamma[None]).flatten(0, 1)
        return a_hat, b.flatten(1).to(a_hat.dtype)

    def in_out_factors(self, name: str) -> tuple[torch.Tensor, torch.Tensor]:
        """(first, second): ΔW = s · second @ first, first taking the input."""
        a_hat, b_hat = self.factors(name)
        return (a_hat, b_hat) if self.in_features <= self.out_features else (b_hat.T, a_hat.T)

    def update(self, name: str) -> torch.Tensor:
        first, second = self.in_out_factors(name)
        return (second @ first) * self.scaling[name]

    def update_output(self, name: str, x: torch.Tensor) -> torch.Tensor:
        first, second = self.in_out_factors(name)
        x = F.dropout(x.to(first.dtype), self.dropout[name], self.training)
        return F.linear(F.linear(x, first), second) * self.scaling[name]

    def remove_adapter(self, name: str) -> None:
        super().remove_adapter(name)
        self.dropout.pop(name, None)


register_method(Method(name="randlora", config_cls=RandLoraConfig, layers=weight_layers(RandLoraLinear),
                       shared=RandLoraBases, learning_rate=1e-3, train_defaults={"target_modules": "all-linear"},
                       description="RandLoRA: full-rank updates from frozen random bases scaled by small trained "
                                   "matrices"))
