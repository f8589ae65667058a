"""UniLoRA: every entry of every layer's LoRA factors read from one trained vector, at fixed random positions.

Li et al., 2025, "Uni-LoRA: One Vector is All You Need" (peft's UniLoRA). The model keeps one trained θ ∈ ℝ^d. The
entries of all adapted layers' A (r × in) and B (out × r), taken in model order (each layer's A, then its B), are
D positions that a seeded shuffle (numpy's generator seeded with ``proj_seed``) assigns to the d entries of θ, each
entry used ⌊D/d⌋ or ⌈D/d⌉ times; an entry used c times is scaled by 1/√c:

    A[i, j] = θ[I_A[i, j]] / √c(I_A[i, j]),    B likewise,    h = W x + b + B A x

θ starts uniform in ±``init_theta_d_bound``, so the model does not start unchanged. Saved tensors, as peft names
them: ``base_model.unilora_theta_d`` = θ, nothing per layer (the positions are drawn again from the seed). Field
names and defaults are peft's; peft's ``save_indices`` (the positions also saved per layer) is not supported.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from peftkit.core.config import TargetedConfig, config_dataclass
from peftkit.core.registry import Method, register_method
from peftkit.core.shared import SharedTensors
from peftkit.methods.config_rules import require_choice, require_positive, require_probability
from peftkit.methods.lora import LORA_DEFAULT_TARGETS, linear_shape
from peftkit.methods.weight_delta import WeightDeltaLayer, weight_layers


@config_dataclass
class UniLoraConfig(TargetedConfig):
    """UniLoRA settings, with peft's field names and defaults."""

    peft_type = "UNILORA"
    default_targets = LORA_DEFAULT_TARGETS
    r: int = 4
    proj_seed: int = 42
    theta_d_length: int = 256
    unilora_dropout: float = 0.0
    fan_in_fan_out: bool = False  # peft's flag for Conv1D; the layout is read from the module type
    bias: str = "none"
    init_theta_d_bound: float = 0.02
    init_weights: bool = True

    omit_at_default = ("exclude_modules",)  # peft's UniLoRA has no such field
    field_aliases = {"rank": "r", "dropout": "unilora_dropout", "targets": "target_modules"}

    def validate(self) -> None:
        super().validate()
        require_positive("r", self.r, integer=True)
        require_positive("theta_d_length", self.theta_d_length, integer=True)
        require_probability("unilora_dropout", self.unilora_dropout)
        require_choice("bias", self.bias, ("none", "all", "unilora_only"))


def balanced_positions(count: int, length: int, seed: int) -> torch.Tensor:
    """``count`` indices into ``length`` entries, each used ⌊count/length⌋ or ⌈count/length⌉ times, shuffled."""
    rng = np.random.default_rng(seed)
    data = np.repeat(np.arange(length), count // length)
    if count % length:
        data = np.concatenate([data, rng.choice(length, size=count % length, replace=False)])
    rng.shuffle(data)
    return torch.as_tensor(data, dtype=torch.long)


class UniLoraVector(SharedTensors):
    """The trained θ, and each layer's positions into it and their scales (buffers, not saved)."""

    def __init__(self, config: UniLoraConfig, modules: dict[str, nn.Module]) -> None:
        super().__init__(config, modules)
        where = self.placement(modules)
        theta = torch.empty(config.theta_d_length, **where)
        if config.init_weights:
            nn.init.uniform_(theta, -config.init_theta_d_bound, config.init_theta_d_bound)
        else:
            nn.init.normal_(theta)
        self.unilora_theta_d = nn.Parameter(theta)
        shapes = [(config.r, linear_shape(m)[0]) for m in modules.values()]
        shapes = [(shape_a, (linear_shape(m)[1], config.r)) for shape_a, m in zip(shapes, modules.values())]
        total = sum(a[0] * a[1] + b[0] * b[1] for a, b in shapes)
        positions = balanced_positions(total, config.theta_d_length, config.proj_seed)
        counts = torch.bincount(positions, minlength=config.theta_d_length).float()
        inverse_root = torch.where(counts > 0, counts.rsqrt(), torch.zeros_like(counts))
        self.slot = {name: i for i, name in enumerate(modules)}
        start = 0
        for i, (shape_a, shape_b) in enumerate(shapes):
            for part, shape in (("A", shape_a), ("B", shape_b)):
                chunk = positions[start: start + shape[0] * shape[1]].view(shape)
                start += chunk.numel()
                self.register_buffer(f"positions_{part}_{i}", chunk.to(where["device"]), persistent=False)
                self.register_buffer(f"scales_{part}_{i}", inverse_root[chunk].to(**where), persistent=False)

    def factors(self, module_name: str) -> tuple[torch.Tensor, torch.Tensor]:
        """(A: r × in, B: out × r) of the layer on ``module_name``."""
        i = self.slot[module_name]
        theta = self.unilora_theta_d
        return tuple(theta[getattr(self, f"positions_{part}_{i}")] * getattr(self, f"scales_{part}_{i}")
                     for part in ("A", "B"))


class UniLoraLinear(WeightDeltaLayer):
    adapter_attributes = ("unilora_dropout",)  # the layer holds no tensor of its own; this marks its adapters

    def __init__(self, base_layer: nn.Module) -> None:
        super().__init__(base_layer)
        self.unilora_dropout = nn.ModuleDict()
        self.module_names: dict[str, str] = {}

    @classmethod
    def expected_shapes(cls, base_layer: nn.Module, config: UniLoraConfig, module_name: str) -> dict[str, tuple]:
        return {}

    def add_adapter(self, name: str, config: UniLoraConfig, module_name: str) -> None:
        self.unilora_dropout[name] = nn.Dropout(config.unilora_dropout)
        self.module_names[name] = module_name

    def update(self, name: str) -> torch.Tensor:
        a, b = self.shared[name].factors(self.module_names[name])
        return b @ a

    def update_output(self, name: str, x: torch.Tensor) -> torch.Tensor:
        a, b = self.shared[name].factors(self.module_names[name])
        return F.linear(F.linear(self.unilora_dropout[name](x.to(a.dtype)), a), b)

    def remove_adapter(self, name: str) -> None:
        super().remove_adapter(name)
        self.module_names.pop(name, None)


register_method(Method(name="unilora", config_cls=UniLoraConfig, layers=weight_layers(UniLoraLinear),
                       shared=UniLoraVector, unchanged_at_start=False, learning_rate=5e-3,
                       train_defaults={"theta_d_length": 16384, "target_modules": "all-linear"},
                       description="UniLoRA: every LoRA entry of every layer read from one trained vector"))
