"""peft's DEFT type: decompositional fine-tuning by a residual projection (not the density-reducing DEFT of
``objectives/density.py``, which is a training objective).

A trained direction matrix P (out × r) defines a projector P_proj = Q_P Rᵀ_P, and a trained injection R (r × in)
writes into the projected subspace. For a frozen W (out × in):

    W' = (I − P_proj) W + s · Q_P R,      h = W' x + b = W x + b − Q_P (R_Pᵀ (W x)) + s · Q_P R dropout(x)

* ``decomposition_method="relu"``: Q_P = P, R_P = relu(P) (a non-orthogonal projection);
  ``"qr"``: Q_P = the Q of P's QR factorisation, R_P = Q_P (orthogonal);
* s = α / r (1 when ``alpha`` is unset); P starts N(0, 0.02²), and R = R_Pᵀ W / s so that W' = W at the start;
* ``para=True`` is PaRa (Chen et al., 2024, "PaRa: Personalizing Text-to-Image Diffusion via Parameter Rank
  Reduction"): W' = (I − P_proj) W, no injection R.

The update depends on the base weight, so merging keeps R_Pᵀ W (r × in) to take the same update out again. The
projections are computed in float32 at least, as peft does. Field names, defaults and the saved tensors (``deft_P``,
``deft_R``) are peft's.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from peftkit.core.config import TargetedConfig, config_dataclass
from peftkit.core.registry import Method, register_method
from peftkit.methods.config_rules import require_choice, require_positive, require_probability
from peftkit.methods.lora import LORA_DEFAULT_TARGETS, linear_shape
from peftkit.methods.weight_delta import WeightDeltaLayer, weight_layers


@config_dataclass
class DeftConfig(TargetedConfig):
    """DEFT (residual projection) settings, with peft's field names and defaults."""

    peft_type = "DEFT"
    default_targets = LORA_DEFAULT_TARGETS
    r: int = 8
    decomposition_method: str = "relu"
    init_scale: float = 1.0
    alpha: int | None = None
    para: bool = False
    fan_in_fan_out: bool = False
    deft_dropout: float = 0.0
    init_weights: bool = True
    bias: str = "none"

    def validate(self) -> None:
        super().validate()
        require_positive("r", self.r, integer=True)
        require_choice("decomposition_method", self.decomposition_method, ("relu", "qr"))
        require_probability("deft_dropout", self.deft_dropout)
        require_choice("bias", self.bias, ("none", "all", "deft_only"))
        if self.alpha is not None:
            require_positive("alpha", self.alpha)


class DeftLinear(WeightDeltaLayer):
    adapter_attributes = ("deft_P", "deft_R")

    def __init__(self, base_layer: nn.Module) -> None:
        super().__init__(base_layer)
        self.deft_P = nn.ParameterDict()
        self.deft_R = nn.ParameterDict()
        self.deft_dropout = nn.ModuleDict()
        self.decomposition: dict[str, str] = {}
        self.merge_factors: dict[str, torch.Tensor] = {}  # R_Pᵀ W of the weight each merged adapter was merged into

    @classmethod
    def expected_shapes(cls, base_layer: nn.Module, config: DeftConfig, module_name: str) -> dict[str, tuple]:
        in_features, out_features = linear_shape(base_layer)
        r = min(config.r, out_features)
        shapes = {"deft_P": (out_features, r)}
        return shapes if config.para else {**shapes, "deft_R": (r, in_features)}

    def add_adapter(self, name: str, config: DeftConfig, module_name: str) -> None:
        shapes = self.expected_shapes(self.base, config, module_name)
        r = shapes["deft_P"][1]
        self.scaling[name] = config.alpha / r if config.alpha else 1.0
        self.decomposition[name] = config.decomposition_method
        self.deft_dropout[name] = nn.Dropout(config.deft_dropout) if config.deft_dropout else nn.Identity()
        self.deft_P[name] = nn.Parameter(nn.init.normal_(self.new_tensor(*shapes["deft_P"]), std=0.02))
        if config.para:
            return
        if config.init_weights:
            _, right = self.projection(name)
            injection = right.T @ self.out_in_weight() / self.scaling[name]
        else:
            injection = nn.init.normal_(self.new_tensor(*shapes["deft_R"]), std=0.02 * config.init_scale)
        self.deft_R[name] = nn.Parameter(injection.detach().to(self.deft_P[name].dtype))

    def out_in_weight(self) -> torch.Tensor:
        weight = self.weight.detach()
        weight = weight.to(torch.promote_types(weight.dtype, torch.float32))
        return weight.T if self.transposed else weight

    def projection(self, name: str) -> tuple[torch.Tensor, torch.Tensor]:
        """(Q_P, R_P): the projector is Q_P R_Pᵀ and the injection writes through Q_P."""
        direction = self.deft_P[name]
        direction = direction.to(torch.promote_types(direction.dtype, torch.float32))
        if self.decomposition[name] == "qr":
            q, _ = torch.linalg.qr(direction)
            return q, q
        return direction, torch.relu(direction)

    def _update_from(self, name: str, factor: torch.Tensor) -> torch.Tensor:
        """ΔW = Q_P (s R − F) for F = R_Pᵀ W (PaRa: −Q_P F)."""
        q, _ = self.projection(name)
        if name not in self.deft_R:
            return -(q @ factor)
        return q @ (self.deft_R[name].to(q.dtype) * self.scaling[name] - factor)

    def update(self, name: str) -> torch.Tensor:
        _, right = self.projection(name)
        return self._update_from(name, right.T @ self.out_in_weight())

    def apply_adapters(self, names: list[str], x: torch.Tensor, *args, **kwargs) -> torch.Tensor:
        result = self.call_base(names, x, *args, **kwargs)
        mine = self.own(names)
        if not mine:
            return result
        out_dtype = result.dtype
        dtype = torch.promote_types(result.dtype, torch.float32)
        result = result.to(dtype)
        product = result if self.bias is None else result - self.bias.to(dtype)  # W x (and any nested update)
        x = x.to(dtype)
        for name in mine:
            q, right = self.projection(name)
            result = result - (product @ right) @ q.T
            if name in self.deft_R:
                injection = self.deft_R[name].to(dtype) * self.scaling[name]
                result = result + F.linear(self.deft_dropout[name](x), injection) @ q.T
        return result.to(out_dtype)

    def merged_weight(self, name: str, weight: torch.Tensor) -> torch.Tensor:
        _, right = self.projection(name)
        stored = weight.T if self.transposed else weight
        self.merge_factors[name] = right.T.detach() @ stored.to(right.dtype)
        update = self._update_from(name, self.merge_factors[name]).detach().to(weight.dtype)
        return weight + (update.T if self.transposed else update)

    def unmerged_weight(self, name: str, weight: torch.Tensor) -> torch.Tensor:
        update = self._update_from(name, self.merge_factors.pop(name)).detach().to(weight.dtype)
        return weight - (update.T if self.transposed else update)

    def remove_adapter(self, name: str) -> None:
        super().remove_adapter(name)
        self.decomposition.pop(name, None)


register_method(Method(name="deft", config_cls=DeftConfig, layers=weight_layers(DeftLinear), learning_rate=1e-3,
                       train_defaults={"r": 8, "alpha": 8, "target_modules": "all-linear"},
                       description="DEFT (peft's type): a residual projection that removes a learned subspace of "
                                   "the weight and injects a trained one"))
