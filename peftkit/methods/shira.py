"""SHiRA: a sparse, high-rank update on a fixed set of weight entries.

Bhardwaj et al., 2024, "Sparse High Rank Adapters". For a frozen W (out × in), a fixed set of n = r · (in + out)
entries (the parameter count of a rank-r LoRA) and n trained values v:

    ΔW[iⱼ, jⱼ] = vⱼ (zero elsewhere),    h = W x + b + ΔW x

The entries are peft's "random" mask: a permutation of the out · in positions from a generator seeded with
``random_seed`` (torch's default seed for a new generator when None), its first n kept, in row-major order. v
starts at zero (``init_weights=False``: standard normal). Saved tensors: ``shira_weight`` = v and ``shira_indices``
(2 × n int32: rows, columns), which is saved and loaded but not trained; field names and defaults are peft's (other
mask types are custom mask functions in peft, which a file cannot carry).
"""

from __future__ import annotations

import torch
from torch import nn

from peftkit.core.config import TargetedConfig, config_dataclass
from peftkit.core.errors import ConfigError
from peftkit.core.registry import Method, register_method
from peftkit.methods.config_rules import require_choice, require_positive
from peftkit.methods.lora import LORA_DEFAULT_TARGETS, linear_shape
from peftkit.methods.weight_delta import WeightDeltaLayer, weight_layers


@config_dataclass
class ShiraConfig(TargetedConfig):
    """SHiRA settings, with peft's field names and defaults."""

    peft_type = "SHIRA"
    default_targets = LORA_DEFAULT_TARGETS
    r: int = 32
    mask_type: str = "random"
    random_seed: int | None = None
    fan_in_fan_out: bool = False  # peft's flag for Conv1D; the layout is read from the module type
    init_weights: bool = True

    field_aliases = {"rank": "r", "seed": "random_seed"}

    def validate(self) -> None:
        super().validate()
        require_positive("r", self.r, integer=True)
        require_choice("mask_type", self.mask_type, ("random",))
        if self.random_seed is not None and (isinstance(self.random_seed, bool) or not isinstance(self.random_seed,
                                                                                                    int)):
            raise ConfigError(f"random_seed must be an integer or None, got {self.random_seed!r}")


def random_entries(out_features: int, in_features: int, n: int, seed: int | None) -> torch.Tensor:
    """peft's random mask as (rows, columns), 2 × n int32, in row-major order."""
    generator = torch.Generator()
    if seed is not None:
        generator.manual_seed(seed)
    flat = torch.randperm(out_features * in_features, generator=generator)[:n].sort().values
    return torch.stack([flat // in_features, flat % in_features]).to(torch.int32)


class ShiraLinear(WeightDeltaLayer):
    adapter_attributes = ("shira_weight", "shira_indices")
    frozen_attributes = ("shira_indices",)

    def __init__(self, base_layer: nn.Module) -> None:
        super().__init__(base_layer)
        self.shira_weight = nn.ParameterDict()
        self.shira_indices = nn.ParameterDict()

    @classmethod
    def expected_shapes(cls, base_layer: nn.Module, config: ShiraConfig, module_name: str) -> dict[str, tuple]:
        in_features, out_features = linear_shape(base_layer)
        n = config.r * (in_features + out_features)
        if n > in_features * out_features:
            raise ConfigError(f"r {config.r} asks for {n} entries, more than the {out_features} × {in_features} "
                              f"weight of '{module_name}' has")
        return {"shira_weight": (n,), "shira_indices": (2, n)}

    def add_adapter(self, name: str, config: ShiraConfig, module_name: str) -> None:
        (n,) = self.expected_shapes(self.base, config, module_name)["shira_weight"]
        entries = random_entries(self.out_features, self.in_features, n, config.random_seed)
        values = self.new_tensor(n)
        if config.init_weights:
            values.zero_()
        else:
            values.copy_(torch.randn(n))
        self.shira_weight[name] = nn.Parameter(values)
        self.shira_indices[name] = nn.Parameter(entries.to(values.device), requires_grad=False)
        self.scaling[name] = 1.0

    def update(self, name: str) -> torch.Tensor:
        values = self.shira_weight[name]
        rows, columns = self.shira_indices[name].long()
        dense = values.new_zeros(self.out_features, self.in_features)
        return dense.index_put((rows, columns), values * self.scaling[name], accumulate=True)


register_method(Method(name="shira", config_cls=ShiraConfig, layers=weight_layers(ShiraLinear), learning_rate=2e-3,
                       peft_module_types=(nn.Linear,),
                       train_defaults={"r": 8, "target_modules": "all-linear"},
                       description="SHiRA: trained values on a fixed random sparse set of weight entries (high rank)"))
