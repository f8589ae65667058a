"""Lily: low-rank projections shared across layers, mixed per input by a router.

Zhong et al., 2024, "Low-Rank Interconnected Adaptation Across Layers" (arXiv 2407.09946). The adapted layers are
grouped by the target name they match and their weight's shape; within a group, each run of ``stride_A`` consecutive
layers shares one A (r × in), and all share one set of ``num_B`` matrices B₁…B_n (r × out each, stored stacked as
n·r × out). Each layer has its own router R (n × r). For an input x (all its tokens and rows at once):

    z = A x,   p = mean over tokens of softmax(R z),   h = W x + b + s · (Σₑ pₑ Bₑ)ᵀ z

The B matrices start at zero (A and R Kaiming-uniform), so the model starts unchanged. p averages over the whole
batch, so rows do not compute independently: batches mixing adapters are refused, and the update cannot be merged.
Saved tensors, under every layer that uses them as peft writes them: ``lily_A.weight`` = A, ``lily_B.weight`` = the
stacked B, ``lily_router.weight`` = R; field names and defaults are peft's.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from peftkit.core.config import TargetedConfig, config_dataclass
from peftkit.core.errors import ConfigError
from peftkit.core.layer import AdapterLayer
from peftkit.core.registry import Method, register_method
from peftkit.core.shared import SharedTensors
from peftkit.methods.config_rules import require_positive
from peftkit.methods.lora import LORA_DEFAULT_TARGETS


@config_dataclass
class LilyConfig(TargetedConfig):
    """Lily settings, with peft's field names and defaults."""

    peft_type = "LILY"
    default_targets = LORA_DEFAULT_TARGETS
    r: int = 32
    stride_A: int = 1
    num_B: int = 2
    scaling: float = 1.0
    init_weights: bool = True

    field_aliases = {"rank": "r"}

    def validate(self) -> None:
        super().validate()
        require_positive("r", self.r, integer=True)
        require_positive("stride_A", self.stride_A, integer=True)
        if isinstance(self.num_B, bool) or not isinstance(self.num_B, int) or self.num_B < 2:
            raise ConfigError(f"num_B must be an integer of at least 2 (the router mixes them), got {self.num_B!r}")
        if isinstance(self.scaling, bool) or not isinstance(self.scaling, (int, float)):
            raise ConfigError(f"scaling must be a number, got {self.scaling!r}")

_WHOLE_BATCH = "Lily's router averages over the whole batch, so its rows cannot take different adapters"


def group_name(config: LilyConfig, module_name: str) -> str:
    """The target a module matched: the regex itself, or the longest listed name its name ends with."""
    targets = config.target_modules
    if isinstance(targets, str):
        return targets
    return max((t for t in targets if module_name.endswith(t)), key=len, default=module_name)


def kaiming_linear(in_features: int, out_features: int, zero: bool, **where) -> nn.Linear:
    module = nn.Linear(in_features, out_features, bias=False, **where)
    if zero:
        nn.init.zeros_(module.weight)
    else:
        nn.init.kaiming_uniform_(module.weight, a=math.sqrt(5))
    return module


class LilyShared(SharedTensors):
    """The A and B projections, each shared by several layers (saved under those layers' keys, not here)."""

    def __init__(self, config: LilyConfig, modules: dict[str, nn.Module]) -> None:
        super().__init__(config, modules)
        where = self.placement(modules)
        groups: dict[tuple, list[str]] = {}
        for name, module in modules.items():
            groups.setdefault((group_name(config, name), tuple(module.weight.shape)), []).append(name)
        self.projections_A = nn.ModuleList()
        self.projections_B = nn.ModuleList()
        self.assignment: dict[str, tuple[int, int]] = {}
        for (_, (out_features, in_features)), names in groups.items():
            self.projections_B.append(kaiming_linear(out_features, config.num_B * config.r, config.init_weights,
                                                     **where))
            for i, name in enumerate(names):
                if i % config.stride_A == 0:
                    self.projections_A.append(kaiming_linear(in_features, config.r, False, **where))
                self.assignment[name] = (len(self.projections_A) - 1, len(self.projections_B) - 1)

    def state_dict(self, *args, **kwargs):
        """Nothing of its own: each layer saves the projections it uses under its keys (peft's layout)."""
        return {}

    def layer_shapes(self, module_name: str) -> dict[str, tuple]:
        a, b = self.assignment[module_name]
        return {"lily_A.weight": tuple(self.projections_A[a].weight.shape),
                "lily_B.weight": tuple(self.projections_B[b].weight.shape)}


class LilyLinear(AdapterLayer):
    adapter_attributes = ("lily_A", "lily_B", "lily_router")
    mergeable = False

    def __init__(self, base_layer: nn.Module) -> None:
        super().__init__(base_layer)
        for attr in self.adapter_attributes:
            setattr(self, attr, nn.ModuleDict())
        self.settings: dict[str, tuple[int, float]] = {}  # name -> (num_B, scaling)

    @classmethod
    def expected_shapes(cls, base_layer: nn.Module, config: LilyConfig, module_name: str) -> dict[str, tuple]:
        return {"lily_router.weight": (config.num_B, config.r)}  # A and B: LilyShared.layer_shapes

    def add_adapter(self, name: str, config: LilyConfig, module_name: str) -> None:
        shared = self.shared[name]
        a, b = shared.assignment[module_name]
        self.lily_A[name] = shared.projections_A[a]
        self.lily_B[name] = shared.projections_B[b]
        weight = self.lily_A[name].weight
        self.lily_router[name] = kaiming_linear(config.r, config.num_B, False, device=weight.device, dtype=weight.dtype)
        self.settings[name] = (config.num_B, config.scaling)

    def reconfigure(self, name: str, config: LilyConfig, module_name: str) -> None:
        self.settings[name] = (config.num_B, config.scaling)

    def saved_state_dict(self, name: str) -> dict[str, torch.Tensor]:
        return {key: t.detach().clone() for key, t in self.adapter_state_dict(name).items()}  # shared: one copy each

    def apply_mixed(self, mixed, groups, *args, **kwargs):
        raise ConfigError(_WHOLE_BATCH)

    def apply_adapters(self, names: list[str], x: torch.Tensor, *args, **kwargs) -> torch.Tensor:
        result = self.call_base(names, x, *args, **kwargs)
        own = self.own(names)
        if own and self.rows != slice(None):
            raise ConfigError(_WHOLE_BATCH)
        for name in own:
            num_b, scaling = self.settings[name]
            a = self.lily_A[name]
            hidden = a(x.to(a.weight.dtype))
            mix = F.softmax(self.lily_router[name](hidden), dim=-1).reshape(-1, num_b).mean(dim=0)
            stacked = self.lily_B[name].weight
            combined = torch.einsum("e,eio->io", mix, stacked.reshape(num_b, -1, stacked.shape[1]))
            result = result + (hidden @ combined * scaling).to(result.dtype)
        return result

    def remove_adapter(self, name: str) -> None:
        super().remove_adapter(name)
        self.settings.pop(name, None)

    @classmethod
    def planned_trainable(cls, base_layer: nn.Module, config: LilyConfig, module_name: str) -> int:
        return config.num_B * config.r  # the router; the shared A and B are counted once, by LilyShared


register_method(Method(name="lily", config_cls=LilyConfig, layers={nn.Linear: LilyLinear}, shared=LilyShared,
                       learning_rate=1e-2, train_defaults={"r": 8, "stride_A": 2, "num_B": 2},
                       description="Lily: low-rank A shared by neighbouring layers, routed mix of B shared by all"))
