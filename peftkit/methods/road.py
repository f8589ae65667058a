"""RoAd: 2D rotations (with scales) of pairs of a layer's output features.

Liao et al., 2024, "RoAd: 2D Rotary Adaptation for Efficient Parameter-Efficient Finetuning". For a frozen Linear
with weight W and bias b, the outputs are cut into groups of g (``group_size``) and feature i of a group is paired
with feature i + g/2; each pair (y₁, y₂) of h = W x + b is turned and scaled:

    h' = R h:   y₁' = a₁ cos θ₁ · y₁ − b₁ sin θ₁ · y₂,   y₂' = a₂ cos θ₂ · y₂ + b₂ sin θ₂ · y₁
                                                                  merged: W ← R W,  b ← R b

``road_1``: one angle and one scale per pair (the first half of a group's values used for both features of a pair;
out / 2 each); ``road_2``: per feature (a = b, θ as the feature's own; out each); ``road_4``: the cosine and sine
parts with angles and scales of their own (2 · out each, laid out per group as [cos part | sin part]). Angles start
at zero and scales at one, so R = I and the model starts unchanged. Field names, defaults and the saved tensors
(``road_theta``, ``road_alpha``) are peft's; peft's RoAd wraps ``nn.Linear`` only, peftkit's GPT-2's Conv1D as well.
"""

from __future__ import annotations

import torch
from torch import nn
from transformers.pytorch_utils import Conv1D

from peftkit.core.config import TargetedConfig, config_dataclass
from peftkit.core.errors import ConfigError
from peftkit.core.layer import AdapterLayer
from peftkit.core.registry import Method, register_method
from peftkit.methods.config_rules import require_choice, require_positive
from peftkit.methods.lora import LORA_DEFAULT_TARGETS, linear_shape

VARIANT_SIZE = {"road_1": 0.5, "road_2": 1, "road_4": 2}  # parameters per output feature, for θ and for α each


@config_dataclass
class RoadConfig(TargetedConfig):
    """RoAd settings, with peft's field names and defaults."""

    peft_type = "ROAD"
    default_targets = LORA_DEFAULT_TARGETS
    omit_at_default = ("exclude_modules", "layers_to_transform", "layers_pattern")  # fields peft's RoadConfig lacks
    variant: str = "road_1"
    group_size: int = 64
    init_weights: bool = True

    field_aliases = {"targets": "target_modules"}

    def validate(self) -> None:
        super().validate()
        require_choice("variant", self.variant, tuple(VARIANT_SIZE))
        require_positive("group_size", self.group_size, integer=True)
        if self.group_size % 2:
            raise ConfigError(f"group_size must be even (features are paired within a group), got {self.group_size}")


class RoadLinear(AdapterLayer):
    """h' = R (W x + b) on ``nn.Linear`` and transformers' ``Conv1D``."""

    adapter_attributes = ("road_theta", "road_alpha")

    def __init__(self, base_layer: nn.Module) -> None:
        super().__init__(base_layer)
        self.transposed = isinstance(self.base, Conv1D)
        self.in_features, self.out_features = linear_shape(self.base)
        self.road_theta = nn.ParameterDict()
        self.road_alpha = nn.ParameterDict()
        self.settings: dict[str, tuple[str, int]] = {}  # variant, group size

    @classmethod
    def expected_shapes(cls, base_layer: nn.Module, config: RoadConfig, module_name: str) -> dict[str, tuple]:
        _, out_features = linear_shape(base_layer)
        if out_features % config.group_size:
            raise ConfigError(f"{module_name}: out_features {out_features} is not divisible by group_size "
                              f"{config.group_size}; set a smaller group_size")
        size = int(out_features * VARIANT_SIZE[config.variant])
        return {"road_theta": (size,), "road_alpha": (size,)}

    def add_adapter(self, name: str, config: RoadConfig, module_name: str) -> None:
        (size,) = self.expected_shapes(self.base, config, module_name)["road_theta"]
        weight = self.weight
        options = {"dtype": weight.dtype if weight.dtype.is_floating_point else torch.float32, "device": weight.device}
        theta, alpha = torch.zeros(size, **options), torch.ones(size, **options)
        if not config.init_weights:
            nn.init.normal_(theta, mean=0.0, std=0.5)
            nn.init.normal_(alpha, mean=1.0, std=0.5)
        self.road_theta[name] = nn.Parameter(theta)
        self.road_alpha[name] = nn.Parameter(alpha)
        self.settings[name] = (config.variant, config.group_size)

    def coefficients(self, name: str) -> tuple[torch.Tensor, torch.Tensor]:
        """(c, s), one per output feature: y' = c ⊙ y + s ⊙ (the pair partner of y, negated for first halves)."""
        variant, group = self.settings[name]
        theta, alpha = self.road_theta[name], self.road_alpha[name]
        if variant == "road_4":
            theta, alpha = theta.reshape(-1, 2, group), alpha.reshape(-1, 2, group)
            return (alpha[:, 0] * theta[:, 0].cos()).flatten(), (alpha[:, 1] * theta[:, 1].sin()).flatten()
        if variant == "road_1":  # each pair's values serve both its features
            theta = theta.reshape(-1, 1, group // 2).expand(-1, 2, -1).flatten()
            alpha = alpha.reshape(-1, 1, group // 2).expand(-1, 2, -1).flatten()
        return alpha * theta.cos(), alpha * theta.sin()

    def turn(self, name: str, h: torch.Tensor) -> torch.Tensor:
        """R h for outputs h (… × out), in h's dtype."""
        cos_part, sin_part = self.coefficients(name)
        group = self.settings[name][1]
        y = h.to(cos_part.dtype)
        halves = y.reshape(*y.shape[:-1], -1, 2, group // 2)
        partner = torch.stack((-halves[..., 1, :], halves[..., 0, :]), dim=-2).reshape(y.shape)
        return (y * cos_part + partner * sin_part).to(h.dtype)

    def apply_adapters(self, names: list[str], x: torch.Tensor, *args, **kwargs) -> torch.Tensor:
        result = self.call_base(names, x, *args, **kwargs)
        for name in self.own(names):
            result = self.turn(name, result)
        return result

    def merged_weight(self, name: str, weight: torch.Tensor) -> torch.Tensor:
        # R W: R acts on W's output axis (the rows; a Conv1D's columns)
        return self.turn(name, weight) if self.transposed else self.turn(name, weight.T).T

    def unmerged_weight(self, name: str, weight: torch.Tensor) -> torch.Tensor:
        turn = self.turn(name, torch.eye(self.out_features, dtype=weight.dtype, device=weight.device)).T  # R
        return torch.linalg.solve(turn, weight.T).T if self.transposed else torch.linalg.solve(turn, weight)

    def merged_bias(self, name: str, bias: torch.Tensor) -> torch.Tensor:
        return self.turn(name, bias)

    def unmerged_bias(self, name: str, bias: torch.Tensor) -> torch.Tensor:
        turn = self.turn(name, torch.eye(self.out_features, dtype=bias.dtype, device=bias.device)).T
        return torch.linalg.solve(turn, bias)

    def remove_adapter(self, name: str) -> None:
        super().remove_adapter(name)
        self.settings.pop(name, None)


register_method(Method(name="road", config_cls=RoadConfig, layers={nn.Linear: RoadLinear, Conv1D: RoadLinear},
                       learning_rate=3e-3, peft_module_types=(nn.Linear,),
                       train_defaults={"variant": "road_1", "group_size": 16, "target_modules": "all-linear"},
                       description="RoAd: learned 2D rotations and scales of pairs of each layer's output features"))
