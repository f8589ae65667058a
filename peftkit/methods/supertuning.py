"""Super-Tuning: train a sparse set of a weight's entries, chosen by magnitude, optionally with a LoRA beside them.

Super-Tuning (arXiv 2607.09287). For a frozen W (out × in), the k = ⌊out · in · (1 − sparsity)⌋ entries of largest
|W| (smallest with ``select_top=False``) at flat positions p₁…p_k get trained values v, and with ``r`` set (the
paper's "Supra") a LoRA A (r × in), B (out × r) with s = α / r is added:

    ΔW = scatter(p, v) + s · B A,    h = W x + b + ΔW x

v and B start at zero (A Kaiming-uniform), so the model starts unchanged. The positions are taken from W when the
adapter is made; they are saved with it (``save_precomputed_indices``) or taken again from W when loading. Saved
tensors: ``supertuning_values`` = v, ``supertuning_indices`` = p (int32, frozen), ``supertuning_lora_A.weight`` = A,
``supertuning_lora_B.weight`` = B; field names and defaults are peft's (``lora_alpha`` unset means 2r, as in peft).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from peftkit.core.config import TargetedConfig, config_dataclass
from peftkit.core.errors import ConfigError
from peftkit.core.registry import Method, register_method
from peftkit.methods.config_rules import require_positive, require_probability
from peftkit.methods.lora import LORA_DEFAULT_TARGETS
from peftkit.methods.weight_delta import WeightDeltaLayer


@config_dataclass
class SupertuningConfig(TargetedConfig):
    """Super-Tuning settings, with peft's field names and defaults."""

    peft_type = "SUPERTUNING"
    default_targets = LORA_DEFAULT_TARGETS
    sparsity: float = 0.99
    select_top: bool = True
    r: int | None = None
    lora_alpha: float | None = None
    lora_dropout: float = 0.0
    init_weights: bool = True
    save_precomputed_indices: bool = True

    def validate(self) -> None:
        super().validate()
        if isinstance(self.sparsity, bool) or not isinstance(self.sparsity, (int, float)) \
                or not 0 <= self.sparsity < 1:
            raise ConfigError(f"sparsity must be in [0, 1), got {self.sparsity!r}")
        require_probability("lora_dropout", self.lora_dropout)
        if self.r is None:
            if self.lora_alpha is not None:
                raise ConfigError("lora_alpha is set but r is None: set r to train a LoRA beside the sparse entries")
            return
        require_positive("r", self.r, integer=True)
        if self.lora_alpha is None:
            self.lora_alpha = 2 * self.r
        require_positive("lora_alpha", self.lora_alpha)

    def trained_entries(self, size: int) -> int:
        return int(size * (1 - self.sparsity))


class SupertuningLinear(WeightDeltaLayer):
    adapter_attributes = ("supertuning_values", "supertuning_indices", "supertuning_lora_A", "supertuning_lora_B")
    frozen_attributes = ("supertuning_indices",)

    def __init__(self, base_layer: nn.Module) -> None:
        super().__init__(base_layer)
        self.supertuning_values = nn.ParameterDict()
        self.supertuning_indices = nn.ParameterDict()
        self.supertuning_lora_A = nn.ModuleDict()
        self.supertuning_lora_B = nn.ModuleDict()
        self.dropout: dict[str, float] = {}
        self.save_indices: dict[str, bool] = {}

    @classmethod
    def expected_shapes(cls, base_layer: nn.Module, config: SupertuningConfig, module_name: str) -> dict[str, tuple]:
        out_features, in_features = base_layer.weight.shape
        k = config.trained_entries(out_features * in_features)
        if k < 1:
            raise ConfigError(f"sparsity {config.sparsity} leaves no trained entry of the {out_features} × "
                              f"{in_features} weight of '{module_name}'")
        shapes = {"supertuning_values": (k,)}
        if config.save_precomputed_indices:
            shapes["supertuning_indices"] = (k,)
        if config.r is not None:
            shapes.update({"supertuning_lora_A.weight": (config.r, in_features),
                           "supertuning_lora_B.weight": (out_features, config.r)})
        return shapes

    def add_adapter(self, name: str, config: SupertuningConfig, module_name: str) -> None:
        (k,) = self.expected_shapes(self.base, config, module_name)["supertuning_values"]
        weight = self.weight.detach()
        positions = torch.topk(weight.abs().flatten(), k=k, largest=config.select_top).indices
        self.supertuning_indices[name] = nn.Parameter(positions.to(torch.int32), requires_grad=False)
        values = torch.zeros(k) if config.init_weights else torch.randn(k)
        self.supertuning_values[name] = nn.Parameter(values.to(self.new_tensor(0)))
        self.save_indices[name] = config.save_precomputed_indices
        self.dropout[name] = config.lora_dropout
        if config.r is None:
            return
        where = {"device": weight.device, "dtype": self.new_tensor(0).dtype}
        self.supertuning_lora_A[name] = nn.Linear(self.in_features, config.r, bias=False, **where)
        self.supertuning_lora_B[name] = nn.Linear(config.r, self.out_features, bias=False, **where)
        nn.init.kaiming_uniform_(self.supertuning_lora_A[name].weight, a=math.sqrt(5))
        if config.init_weights:
            nn.init.zeros_(self.supertuning_lora_B[name].weight)
        else:
            nn.init.kaiming_uniform_(self.supertuning_lora_B[name].weight, a=math.sqrt(5))
        self.scaling[name] = config.lora_alpha / config.r

    def reconfigure(self, name: str, config: SupertuningConfig, module_name: str) -> None:
        self.dropout[name] = config.lora_dropout
        if name in self.supertuning_lora_A:
            self.scaling[name] = config.lora_alpha / config.r

    def saved_state_dict(self, name: str) -> dict[str, torch.Tensor]:
        tensors = self.adapter_state_dict(name)
        if not self.save_indices[name]:
            tensors.pop("supertuning_indices")
        return tensors

    def sparse_update(self, name: str) -> torch.Tensor:
        values = self.supertuning_values[name]
        flat = values.new_zeros(self.out_features * self.in_features)
        flat = flat.scatter_add(0, self.supertuning_indices[name].long(), values)
        return flat.reshape(self.out_features, self.in_features)

    def update(self, name: str) -> torch.Tensor:
        update = self.sparse_update(name)
        if name in self.supertuning_lora_A:
            lora = self.supertuning_lora_B[name].weight @ self.supertuning_lora_A[name].weight
            update = update + self.scaling[name] * lora
        return update

    def update_output(self, name: str, x: torch.Tensor) -> torch.Tensor:
        sparse = self.sparse_update(name)
        x = x.to(sparse.dtype)
        result = F.linear(x, sparse)
        if name in self.supertuning_lora_A:
            dropped = F.dropout(x, self.dropout[name], self.training)
            lora = self.supertuning_lora_B[name](self.supertuning_lora_A[name](dropped))
            result = result + self.scaling[name] * lora
        return result

    def remove_adapter(self, name: str) -> None:
        super().remove_adapter(name)
        self.dropout.pop(name, None)
        self.save_indices.pop(name, None)


register_method(Method(name="supertuning", config_cls=SupertuningConfig, layers={nn.Linear: SupertuningLinear},
                       learning_rate=2e-3, train_defaults={"sparsity": 0.99, "target_modules": "all-linear"},
                       description="Super-Tuning: the largest-magnitude 1% of a weight's entries train (+ LoRA)"))
