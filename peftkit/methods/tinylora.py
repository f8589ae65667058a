"""TinyLoRA: LoRA-XS's frozen SVD factors with an r × r core made of fixed random matrices and a tiny trained vector.

Morris et al., 2026, "Learning to Reason in 13 Parameters". For a frozen W (out × in) with truncated SVD
W ≈ U_r S_r V_rᵀ (computed once in float32), fixed A = √S_r V_rᵀ (r × in) and B = U_r √S_r (out × r), fixed random
P ∈ ℝ^{u × r × r} (entries N(0, 1/r), drawn from a generator seeded with ``projection_seed`` plus the module's
position among the adapted ones) and a trained v ∈ ℝ^u:

    R = Σᵢ vᵢ Pᵢ (r × r),    h = W x + b + B R A x

The adapted modules are split, in model order, into round(n · (1 − ``weight_tying``)) groups of consecutive modules
that share one v (0: each its own, 1: one for all). v starts at zero, so the model starts unchanged
(``init_weights="uniform"``, or False: U(±``init_v_bound``)). Saved tensors, as peft names them: ``tinylora_A`` = A,
``tinylora_B`` = B per layer, ``tinylora_P`` = P per layer with ``save_projection`` (otherwise drawn again from the
seed), and ``base_model.tinylora_v.<group>`` = v once per group. Field names and defaults are peft's; peft's form also
adapts Embedding modules, which peftkit's does not.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from peftkit.core.config import TargetedConfig, config_dataclass
from peftkit.core.errors import ConfigError
from peftkit.core.registry import Method, register_method
from peftkit.core.shared import SharedTensors
from peftkit.methods.config_rules import require_choice, require_positive, require_probability
from peftkit.methods.lora import LORA_DEFAULT_TARGETS, linear_shape
from peftkit.methods.weight_delta import WeightDeltaLayer, weight_layers


@config_dataclass
class TinyLoraConfig(TargetedConfig):
    """TinyLoRA settings, with peft's field names and defaults."""

    peft_type = "TINYLORA"
    default_targets = LORA_DEFAULT_TARGETS
    r: int = 2
    u: int = 64
    weight_tying: float = 0.0
    projection_seed: int = 42
    save_projection: bool = True
    init_v_bound: float = 0.02
    tinylora_dropout: float = 0.0
    fan_in_fan_out: bool = False  # peft's flag for Conv1D; the layout is read from the module type
    bias: str = "none"
    init_weights: bool | str = True

    omit_at_default = ("exclude_modules",)  # peft's TinyLoRA has no such field
    field_aliases = {"rank": "r", "dropout": "tinylora_dropout", "targets": "target_modules"}

    def validate(self) -> None:
        super().validate()
        require_positive("r", self.r, integer=True)
        require_positive("u", self.u, integer=True)
        if isinstance(self.weight_tying, bool) or not 0 <= self.weight_tying <= 1:
            raise ConfigError(f"weight_tying must be in [0, 1], got {self.weight_tying!r}")
        require_probability("tinylora_dropout", self.tinylora_dropout)
        require_choice("bias", self.bias, ("none", "all", "tinylora_only"))
        require_choice("init_weights", self.init_weights, (True, False, "uniform"))


class TinyLoraVectors(SharedTensors):
    """The trained vectors v, one per group of consecutive modules (``tinylora_v.<group>``)."""

    def __init__(self, config: TinyLoraConfig, modules: dict[str, nn.Module]) -> None:
        super().__init__(config, modules)
        count = len(modules)
        groups = max(1, round(count * (1.0 - config.weight_tying)))
        size = max(1, count // groups)
        self.position = {name: i for i, name in enumerate(modules)}  # seeds each module's P
        self.group = {name: str(min(i // size, groups - 1)) for i, name in enumerate(modules)}
        self.tinylora_v = nn.ParameterDict()
        for key in dict.fromkeys(self.group.values()):
            v = torch.zeros(config.u, **self.placement(modules))
            if config.init_weights is not True:
                nn.init.uniform_(v, -config.init_v_bound, config.init_v_bound)
            self.tinylora_v[key] = nn.Parameter(v)

    def vector(self, module_name: str) -> torch.Tensor:
        return self.tinylora_v[self.group[module_name]]


def svd_factors(weight: torch.Tensor, r: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(A = √S_r V_rᵀ, B = U_r √S_r) of W (out × in), the SVD taken in float32, the factors in W's dtype."""
    u, s, vh = torch.linalg.svd(weight.float(), full_matrices=False)
    r = min(r, *weight.shape)
    root = torch.sqrt(s[:r].to(weight.dtype))
    return root[:, None] * vh[:r].to(weight.dtype), u[:, :r].to(weight.dtype) * root[None, :]


class TinyLoraLinear(WeightDeltaLayer):
    adapter_attributes = ("tinylora_A", "tinylora_B", "tinylora_P")
    frozen_attributes = ("tinylora_A", "tinylora_B", "tinylora_P")

    def __init__(self, base_layer: nn.Module) -> None:
        super().__init__(base_layer)
        for attr in self.adapter_attributes:
            setattr(self, attr, nn.ParameterDict())
        self.settings: dict[str, tuple[str, float, bool]] = {}  # name -> (module name, dropout, save_projection)

    @classmethod
    def expected_shapes(cls, base_layer: nn.Module, config: TinyLoraConfig, module_name: str) -> dict[str, tuple]:
        in_features, out_features = linear_shape(base_layer)
        r = min(config.r, in_features, out_features)
        shapes = {"tinylora_A": (r, in_features), "tinylora_B": (out_features, r)}
        if config.save_projection:
            shapes["tinylora_P"] = (config.u, r, r)
        return shapes

    def add_adapter(self, name: str, config: TinyLoraConfig, module_name: str) -> None:
        weight = self.weight.detach()
        a, b = svd_factors(weight.T if self.transposed else weight, config.r)
        r = a.shape[0]
        seed = config.projection_seed + self.shared[name].position[module_name]
        p = torch.normal(0.0, 1.0 / r**0.5, size=(config.u, r, r), generator=torch.Generator().manual_seed(seed))
        for attr, tensor in (("tinylora_A", a), ("tinylora_B", b), ("tinylora_P", p)):
            getattr(self, attr)[name] = nn.Parameter(tensor.to(self.new_tensor(0)), requires_grad=False)
        self.settings[name] = (module_name, config.tinylora_dropout, config.save_projection)

    def adapter_state_dict(self, name: str) -> dict[str, torch.Tensor]:
        tensors = super().adapter_state_dict(name)
        if name in self.settings and not self.settings[name][2]:
            tensors.pop("tinylora_P", None)  # drawn again from the seed when loading
        return tensors

    def core(self, name: str) -> torch.Tensor:
        """R = Σᵢ vᵢ Pᵢ (r × r)."""
        v = self.shared[name].vector(self.settings[name][0])
        return torch.einsum("i,ijk->jk", v, self.tinylora_P[name].to(v.dtype))

    def update(self, name: str) -> torch.Tensor:
        core = self.core(name)
        dtype = torch.promote_types(core.dtype, self.tinylora_A[name].dtype)
        return self.tinylora_B[name].to(dtype) @ core.to(dtype) @ self.tinylora_A[name].to(dtype)

    def update_output(self, name: str, x: torch.Tensor) -> torch.Tensor:
        a = self.tinylora_A[name]
        x = F.dropout(x.to(a.dtype), self.settings[name][1], self.training)
        return F.linear(F.linear(F.linear(x, a), self.core(name).to(a.dtype)), self.tinylora_B[name])

    def remove_adapter(self, name: str) -> None:
        super().remove_adapter(name)
        self.settings.pop(name, None)


register_method(Method(name="tinylora", config_cls=TinyLoraConfig, layers=weight_layers(TinyLoraLinear),
                       shared=TinyLoraVectors, learning_rate=1e-3, train_defaults={"target_modules": "all-linear"},
                       description="TinyLoRA: frozen SVD factors around Σ vᵢPᵢ, fixed random Pᵢ and a tiny trained v "
                                   "shared by groups of layers"))
