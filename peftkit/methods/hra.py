"""HRA: Householder reflection adaptation, a chain of r reflections applied to the frozen weight.

Yuan et al., 2024, "Bridging The Gap between Low-rank and Orthogonal Adaptation via Householder Reflection
Adaptation". For a frozen W (out × in) and bias b, with r vectors u₁ … u_r ∈ R^in:

    h = W H x + b,   H = (I − 2 û₁ û₁ᵀ)(I − 2 û₂ û₂ᵀ) ⋯ (I − 2 û_r û_rᵀ),   ûᵢ = uᵢ / ‖uᵢ‖     merged: W ← W H

or, with ``apply_GS``, H = I − 2 Û Ûᵀ for Û the Gram–Schmidt orthonormalisation of (u₁ … u_r). H is orthogonal, so
the adaptation keeps the angles between the weight's rows. For an even r, the vectors start in equal pairs
(u₂ᵢ₋₁ = u₂ᵢ, Kaiming-uniform), whose reflections cancel: the model starts unchanged; an odd r starts random, as
in peft. Field names, defaults and the saved tensor (``hra_u``: in × r, the vectors as columns) are peft's; peft's
HRA wraps ``nn.Linear`` only, peftkit's GPT-2's Conv1D as well.
"""

from __future__ import annotations

import math
import warnings

import torch
from torch import nn

from peftkit.core.config import TargetedConfig, config_dataclass
from peftkit.core.registry import Method, register_method
from peftkit.methods.config_rules import require_choice, require_positive
from peftkit.methods.input_rotation import InputRotationLayer, rotation_layers
from peftkit.methods.lora import LORA_DEFAULT_TARGETS, linear_shape


@config_dataclass
class HRAConfig(TargetedConfig):
    """HRA settings, with peft's field names and defaults."""

    peft_type = "HRA"
    default_targets = LORA_DEFAULT_TARGETS
    r: int = 8
    apply_GS: bool = False
    init_weights: bool = True
    bias: str = "none"

    field_aliases = {"rank": "r", "apply_gs": "apply_GS", "targets": "target_modules"}

    def validate(self) -> None:
        super().validate()
        require_positive("r", self.r, integer=True)
        require_choice("bias", self.bias, ("none", "all", "hra_only"))


def gram_schmidt(vectors: torch.Tensor) -> torch.Tensor:
    """The columns of ``vectors`` (in × r) made orthonormal, in order."""
    basis = []
    for column in vectors.T:
        for done in basis:
            column = column - (done @ column) * done
        basis.append(column / column.norm())
    return torch.stack(basis, dim=1)


class HRALinear(InputRotationLayer):
    adapter_attributes = ("hra_u",)
    last_first = True

    def __init__(self, base_layer: nn.Module) -> None:
        super().__init__(base_layer)
        self.hra_u = nn.ParameterDict()
        self.gram_schmidt: dict[str, bool] = {}

    @classmethod
    def expected_shapes(cls, base_layer: nn.Module, config: HRAConfig, module_name: str) -> dict[str, tuple]:
        in_features, _ = linear_shape(base_layer)
        return {"hra_u": (in_features, config.r)}

    def add_adapter(self, name: str, config: HRAConfig, module_name: str) -> None:
        r = config.r
        paired = config.init_weights and r % 2 == 0
        if config.init_weights and not paired:
            warnings.warn(f"HRA with an odd r ({r}) cannot start as the identity; its vectors start random",
                          stacklevel=2)
        vectors = self.new_tensor(self.in_features, r // 2 if paired else r)
        nn.init.kaiming_uniform_(vectors, a=math.sqrt(5))
        self.hra_u[name] = nn.Parameter(vectors.repeat_interleave(2, dim=1) if paired else vectors)
        self.gram_schmidt[name] = config.apply_GS

    def rotate(self, name: str, x: torch.Tensor, dropout: bool = True) -> torch.Tensor:
        vectors = self.hra_u[name]
        rows = x.to(vectors.dtype)
        if self.gram_schmidt[name]:
            basis = gram_schmidt(vectors)
            return (rows - 2 * (rows @ basis) @ basis.T).to(x.dtype)
        units = vectors / vectors.norm(dim=0)
        for u in reversed(units.unbind(dim=1)):  # H x: the last reflection meets x first
            rows = rows - 2 * (rows @ u)[..., None] * u
        return rows.to(x.dtype)

    def remove_adapter(self, name: str) -> None:
        super().remove_adapter(name)
        self.gram_schmidt.pop(name, None)


register_method(Method(name="hra", config_cls=HRAConfig, layers=rotation_layers(HRALinear), learning_rate=1e-2,
                       peft_module_types=(nn.Linear,),
                       train_defaults={"r": 8, "target_modules": "all-linear"},
                       description="HRA: a chain of Householder reflections multiplying each layer's weight"))
