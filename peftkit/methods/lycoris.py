"""What LoHa and LoKr share (the LyCORIS family's settings): rank r, alpha, per-module rank and alpha patterns,
scaling α / r, and two kinds of dropout during training:

* rank dropout: each output row of ΔW is kept with probability 1 − p (ΔW ← ΔW ⊙ m, m ~ Bernoulli per row; LoHa
  always, LoKr when ``rank_dropout_scale`` is set, divides m by its mean);
* module dropout: the whole update is skipped for a batch with probability p.

Field names and defaults are peft's (``LycorisConfig``).
"""

from __future__ import annotations

from dataclasses import field

import torch

from peftkit.core.config import TargetedConfig, config_dataclass
from peftkit.methods.config_rules import pattern_value, require_positive, require_probability
from peftkit.methods.lora import LORA_DEFAULT_TARGETS
from peftkit.methods.weight_delta import WeightDeltaLayer


@config_dataclass
class LycorisConfig(TargetedConfig):
    default_targets = LORA_DEFAULT_TARGETS
    r: int = 8
    alpha: float = 8
    rank_dropout: float = 0.0
    module_dropout: float = 0.0
    use_effective_conv2d: bool = False
    init_weights: bool = True
    rank_pattern: dict[str, int] = field(default_factory=dict)
    alpha_pattern: dict[str, float] = field(default_factory=dict)

    field_aliases = {"rank": "r", "lora_alpha": "alpha", "targets": "target_modules"}

    def validate(self) -> None:
        super().validate()
        require_positive("r", self.r, integer=True)
        require_positive("alpha", self.alpha)
        require_probability("rank_dropout", self.rank_dropout)
        require_probability("module_dropout", self.module_dropout)
        for pattern, value in self.rank_pattern.items():
            require_positive(f"rank_pattern['{pattern}']", value, integer=True)

    def rank_for(self, module_name: str) -> int:
        return pattern_value(self.rank_pattern, module_name, self.r)

    def alpha_for(self, module_name: str) -> float:
        return pattern_value(self.alpha_pattern, module_name, self.alpha)


class LycorisLayer(WeightDeltaLayer):
    """Scaling α / r, rank dropout and module dropout around a subclass's ``factored_update`` (ΔW / s)."""

    normalise_rank_dropout = True  # divide the row mask by its mean (LoHa); LoKr: when its config says so

    def __init__(self, base_layer) -> None:
        super().__init__(base_layer)
        self.dropouts: dict[str, tuple[float, float, bool]] = {}  # name -> (rank p, module p, normalise)

    def factored_update(self, name: str) -> torch.Tensor:
        raise NotImplementedError

    def start_adapter(self, name: str, config: LycorisConfig, module_name: str, normalise: bool) -> int:
        """Record the adapter's scaling and dropouts; returns its rank."""
        r = config.rank_for(module_name)
        self.scaling[name] = config.alpha_for(module_name) / r
        self.dropouts[name] = (config.rank_dropout, config.module_dropout, normalise)
        return r

    def reconfigure(self, name: str, config: LycorisConfig, module_name: str) -> None:
        self.scaling[name] = config.alpha_for(module_name) / config.rank_for(module_name)

    def update(self, name: str) -> torch.Tensor:
        update = self.factored_update(name) * self.scaling[name]
        rank_p, _, normalise = self.dropouts[name]
        if self.training and rank_p:
            keep = (torch.rand(update.shape[0], device=update.device) > rank_p).to(update.dtype)
            if normalise:
                keep = keep / keep.mean()
            update = update * keep[:, None]
        return update

    def apply_adapters(self, names: list[str], x: torch.Tensor, *args, **kwargs) -> torch.Tensor:
        result = self.call_base(names, x, *args, **kwargs)
        for name in self.own(names):
            module_p = self.dropouts[name][1]
            if not self.training or not module_p or torch.rand(1).item() > module_p:
                result = result + self.update_output(name, x).to(result.dtype)
        return result

    def remove_adapter(self, name: str) -> None:
        super().remove_adapter(name)
        self.dropouts.pop(name, None)
