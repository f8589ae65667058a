"""PEANuT: a weight update computed by a small network from the frozen weight itself.

Zhong et al., 2025, "PEANuT: Parameter-Efficient Adaptation with Weight-aware Neural Tweakers". For a frozen W
(out × in), trained A (r × out), B (out × r), d encoder and d decoder matrices Eᵢ, Dᵢ (r × r), an activation σ and
a scaling s:

    Z₀ = σ(Wᵀ Aᵀ) (in × r),   Zᵢ = σ(Zᵢ₋₁ Eᵢᵀ) (i = 1…d),   then for i = 1…d: Z ← σ(Z Dᵢᵀ) + Z_{d−i}
    ΔW = s · (Z Bᵀ)ᵀ,   h = W x + b + ΔW x

B starts at zero (the rest Kaiming-uniform), so the model starts unchanged. ΔW depends on W, so merging keeps the
original W and computes every merged update from it, and unmerging restores it. Saved tensors: ``peanut_A.weight``,
``peanut_B.weight``, ``peanut_encoders.<i>.weight``, ``peanut_decoders.<i>.weight``; field names and defaults are
peft's.
"""

from __future__ import annotations

import math

import torch
from torch import nn
from transformers.activations import ACT2FN

from peftkit.core.config import TargetedConfig, config_dataclass
from peftkit.core.errors import ConfigError
from peftkit.core.registry import Method, register_method
from peftkit.methods.config_rules import require_positive
from peftkit.methods.lora import LORA_DEFAULT_TARGETS
from peftkit.methods.weight_delta import WeightDeltaLayer


@config_dataclass
class PeanutConfig(TargetedConfig):
    """PEANuT settings, with peft's field names and defaults."""

    peft_type = "PEANUT"
    default_targets = LORA_DEFAULT_TARGETS
    r: int = 32
    depth: int = 0
    act_fn: str = "relu"
    scaling: float = 1.0
    init_weights: bool = True

    field_aliases = {"rank": "r", "activation": "act_fn"}

    def validate(self) -> None:
        super().validate()
        require_positive("r", self.r, integer=True)
        if isinstance(self.depth, bool) or not isinstance(self.depth, int) or self.depth < 0:
            raise ConfigError(f"depth must be a non-negative integer, got {self.depth!r}")
        if self.act_fn not in ACT2FN:
            raise ConfigError(f"act_fn must be an activation name of transformers' ACT2FN, got {self.act_fn!r}")
        if isinstance(self.scaling, bool) or not isinstance(self.scaling, (int, float)):
            raise ConfigError(f"scaling must be a number, got {self.scaling!r}")


class PeanutLinear(WeightDeltaLayer):
    adapter_attributes = ("peanut_A", "peanut_B", "peanut_encoders", "peanut_decoders")

    def __init__(self, base_layer: nn.Module) -> None:
        super().__init__(base_layer)
        for attr in self.adapter_attributes:
            setattr(self, attr, nn.ModuleDict())
        self.activation: dict[str, str] = {}
        self.weight_before_merge: torch.Tensor | None = None

    @classmethod
    def expected_shapes(cls, base_layer: nn.Module, config: PeanutConfig, module_name: str) -> dict[str, tuple]:
        out_features, r = base_layer.out_features, config.r
        shapes = {"peanut_A.weight": (r, out_features), "peanut_B.weight": (out_features, r)}
        for i in range(config.depth):
            shapes[f"peanut_encoders.{i}.weight"] = shapes[f"peanut_decoders.{i}.weight"] = (r, r)
        return shapes

    def add_adapter(self, name: str, config: PeanutConfig, module_name: str) -> None:
        r, depth = config.r, config.depth
        where = {"device": self.weight.device, "dtype": self.new_tensor(0).dtype}

        def linear(in_features: int, out_features: int) -> nn.Linear:
            module = nn.Linear(in_features, out_features, bias=False, **where)
            nn.init.kaiming_uniform_(module.weight, a=math.sqrt(5))
            return module

        self.peanut_A[name] = linear(self.out_features, r)
        self.peanut_encoders[name] = nn.ModuleList([linear(r, r) for _ in range(depth)])
        self.peanut_decoders[name] = nn.ModuleList([linear(r, r) for _ in range(depth)])
        self.peanut_B[name] = linear(r, self.out_features)
        if config.init_weights:
            nn.init.zeros_(self.peanut_B[name].weight)
        self.activation[name] = config.act_fn
        self.scaling[name] = config.scaling

    def reconfigure(self, name: str, config: PeanutConfig, module_name: str) -> None:
        self.activation[name] = config.act_fn
        self.scaling[name] = config.scaling

    def update_from(self, name: str, weight: torch.Tensor) -> torch.Tensor:
        """ΔW (out × in) for the frozen weight ``weight``."""
        sigma = ACT2FN[self.activation[name]]
        a = self.peanut_A[name]
        z = sigma(a(weight.T.to(a.weight.dtype)))
        kept = []
        for encoder in self.peanut_encoders[name]:
            kept.append(z)
            z = sigma(encoder(z))
        for decoder in self.peanut_decoders[name]:
            z = sigma(decoder(z)) + kept.pop()
        return (self.peanut_B[name](z) * self.scaling[name]).T

    def update(self, name: str) -> torch.Tensor:
        return self.update_from(name, self.weight)

    def merged_weight(self, name: str, weight: torch.Tensor) -> torch.Tensor:
        if not self.merged_adapters:
            self.weight_before_merge = self.weight.detach().clone()
        return weight + self.update_from(name, self.weight_before_merge).to(weight.dtype)

    def unmerged_weight(self, name: str, weight: torch.Tensor) -> torch.Tensor:
        original = self.weight_before_merge
        if not self.merged_adapters:  # the last one out: the weight as it was
            self.weight_before_merge = None
            return original.to(weight.dtype)
        return weight - self.update_from(name, original).to(weight.dtype)

    def remove_adapter(self, name: str) -> None:
        super().remove_adapter(name)
        self.activation.pop(name, None)


register_method(Method(name="peanut", config_cls=PeanutConfig, layers={nn.Linear: PeanutLinear}, learning_rate=1e-3,
                       train_defaults={"r": 8, "target_modules": "all-linear"},
                       description="PEANuT: ΔW computed from the frozen W by a small trained network"))
