"""HiRA: a high-rank update, the frozen weight scaled entrywise by a low-rank product.

Huang et al., 2025, "HiRA: Parameter-Efficient Hadamard High-Rank Adaptation for Large Language Models" (ICLR 2025).
For a frozen W (out × in), A (r × in) and B (out × r):

    ΔW = W ⊙ (B A),    h = W x + b + ΔW x

so ΔW can have full rank while B A has rank r. A starts Kaiming-uniform (``init_weights="gaussian"``: normal with
std 1 / r) and B at zero, so the model starts unchanged (``init_weights=False``: both standard normal). ΔW is
taken on the weight as it stands (as in peft's forward pass); merging keeps a copy of the weight W₀ from before the
first merge, adds W₀ ⊙ (B A) for each adapter merged and restores W₀ when the last is unmerged, as peft does.
Saved tensors: ``hira_A`` = A, ``hira_B`` = B; field names and defaults are peft's (peft also adapts embeddings
and convolutions, which peftkit's HiRA does not).
"""

from __future__ import annotations

import math
from dataclasses import field

import torch
import torch.nn.functional as F
from torch import nn

from peftkit.core.config import TargetedConfig, config_dataclass
from peftkit.core.errors import ConfigError
from peftkit.core.registry import Method, register_method
from peftkit.methods.config_rules import pattern_value, require_choice, require_positive, require_probability
from peftkit.methods.lora import LORA_DEFAULT_TARGETS, linear_shape
from peftkit.methods.weight_delta import WeightDeltaLayer, weight_layers


@config_dataclass
class HiraConfig(TargetedConfig):
    """HiRA settings, with peft's field names and defaults."""

    peft_type = "HIRA"
    default_targets = {**LORA_DEFAULT_TARGETS, "phi": ["q_proj", "v_proj", "fc1", "fc2"]}
    r: int = 32
    hira_dropout: float = 0.0
    fan_in_fan_out: bool = False  # peft's flag for Conv1D; the layout is read from the module type
    init_weights: bool | str = True
    rank_pattern: dict[str, int] = field(default_factory=dict)

    field_aliases = {"rank": "r", "dropout": "hira_dropout"}

    def validate(self) -> None:
        super().validate()
        require_positive("r", self.r, integer=True)
        require_probability("hira_dropout", self.hira_dropout)
        require_choice("init_weights", self.init_weights, (True, False, "gaussian"))
        for pattern, value in self.rank_pattern.items():
            require_positive(f"rank_pattern['{pattern}']", value, integer=True)

    def rank_for(self, module_name: str) -> int:
        return pattern_value(self.rank_pattern, module_name, self.r)


class HiraLinear(WeightDeltaLayer):
    adapter_attributes = ("hira_A", "hira_B")

    def __init__(self, base_layer: nn.Module) -> None:
        super().__init__(base_layer)
        self.hira_A = nn.ParameterDict()
        self.hira_B = nn.ParameterDict()
        self.dropout: dict[str, float] = {}
        self.premerge_weight: torch.Tensor | None = None  # W₀ while adapters are merged

    @classmethod
    def expected_shapes(cls, base_layer: nn.Module, config: HiraConfig, module_name: str) -> dict[str, tuple]:
        in_features, out_features = linear_shape(base_layer)
        r = config.rank_for(module_name)
        return {"hira_A": (r, in_features), "hira_B": (out_features, r)}

    def add_adapter(self, name: str, config: HiraConfig, module_name: str) -> None:
        if not self.weight.dtype.is_floating_point:
            raise ConfigError("HiRA scales the base weight entrywise, which is quantised here; peftkit cannot")
        r = config.rank_for(module_name)
        a, b = self.new_tensor(r, self.in_features), self.new_tensor(self.out_features, r)
        if config.init_weights is False:
            a.normal_()
            b.normal_()
        else:
            if config.init_weights == "gaussian":
                nn.init.normal_(a, std=1 / r)
            else:
                nn.init.kaiming_uniform_(a, a=math.sqrt(5))
            b.zero_()
        self.hira_A[name] = nn.Parameter(a)
        self.hira_B[name] = nn.Parameter(b)
        self.dropout[name] = config.hira_dropout

    def reconfigure(self, name: str, config: HiraConfig, module_name: str) -> None:
        self.dropout[name] = config.hira_dropout

    def out_in(self, weight: torch.Tensor) -> torch.Tensor:
        """A weight in the base module's layout, as out × in (and back: the transpose is its own inverse)."""
        return weight.T if self.transposed else weight

    def modulation(self, name: str) -> torch.Tensor:
        """B A (out × in)."""
        return self.hira_B[name] @ self.hira_A[name]

    def update(self, name: str) -> torch.Tensor:
        modulation = self.modulation(name)
        return self.out_in(self.weight.detach()).to(modulation.dtype) * modulation

    def update_output(self, name: str, x: torch.Tensor) -> torch.Tensor:
        update = self.update(name)
        return F.linear(F.dropout(x.to(update.dtype), self.dropout[name], training=self.training), update)

    def merged_weight(self, name: str, weight: torch.Tensor) -> torch.Tensor:
        if not self.merged_adapters:
            self.premerge_weight = weight.clone()
        original = self.premerge_weight.to(weight)
        return weight + original * self.out_in(self.modulation(name).detach()).to(weight)

    def unmerged_weight(self, name: str, weight: torch.Tensor) -> torch.Tensor:
        original = self.premerge_weight.to(weight)
        if not self.merged_adapters:  # the last one: W₀ exactly
            self.premerge_weight = None
            return original
        return weight - original * self.out_in(self.modulation(name).detach()).to(weight)

    def remove_adapter(self, name: str) -> None:
        super().remove_adapter(name)
        self.dropout.pop(name, None)


register_method(Method(name="hira", config_cls=HiraConfig, layers=weight_layers(HiraLinear), learning_rate=1e-2,
                       train_defaults={"r": 8, "target_modules": "all-linear"},
                       description="HiRA: the frozen weight scaled entrywise by a low-rank product (high rank)"))
