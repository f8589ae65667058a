"""(IA)³: learned rescaling of keys, values and feed-forward activations.

Liu et al., 2022, "Few-Shot Parameter-Efficient Fine-Tuning is Better and Cheaper than In-Context
Learning". For a target Linear / Conv1D with weight W:

    attention modules (keys, values):   h = l ⊙ (W x + b),   l ∈ R^out
    feed-forward modules:               h = W (l ⊙ x) + b,   l ∈ R^in

with l initialised to ones, so the adapted model starts at the pretrained one. Both fold into the
weight (W ← diag(l) W, b ← l ⊙ b; or W ← W diag(l)). Field names, defaults, the feed-forward rule
(a module is feed-forward when its name ends with an entry of ``feedforward_modules``, or fully
matches it when it is a regex) and the saved ``ia3_l`` tensors (out × 1, or 1 × in) are peft's.
"""

from __future__ import annotations

import re

import torch
from torch import nn
from transformers.pytorch_utils import Conv1D

from peftkit.core.config import TargetedConfig, config_dataclass
from peftkit.core.layer import AdapterLayer
from peftkit.core.module_roles import role_targets
from peftkit.core.registry import Method, register_method
from peftkit.methods.lora import linear_shape

IA3_DEFAULT_TARGETS = {
    "bert": ["key", "value", "output.dense"],
    "roberta": ["key", "value", "output.dense"],
    "xlm-roberta": ["key", "value", "output.dense"],
    "gpt2": ["c_attn", "mlp.c_proj"],
    "llama": ["k_proj", "v_proj", "down_proj"],
    "mistral": ["k_proj", "v_proj", "down_proj"],
    "qwen2": ["k_proj", "v_proj", "down_proj"],
    "opt": ["q_proj", "v_proj", "fc2"],
    "bart": ["q_proj", "v_proj", "fc2"],
    "t5": ["k", "v", "wo"],
}
IA3_DEFAULT_FEEDFORWARD = {
    "bert": ["output.dense"],
    "roberta": ["output.dense"],
    "xlm-roberta": ["output.dense"],
    "gpt2": ["mlp.c_proj"],
    "llama": ["down_proj"],
    "mistral": ["down_proj"],
    "qwen2": ["down_proj"],
    "opt": ["fc2"],
    "bart": ["fc2"],
    "t5": ["wo"],
}


@config_dataclass
class IA3Config(TargetedConfig):
    """(IA)³ settings, with peft's field names and defaults."""

    peft_type = "IA3"
    default_targets = IA3_DEFAULT_TARGETS
    default_roles = ("key", "value", "mlp_output")
    omit_at_default = ("layers_to_transform", "layers_pattern")
    feedforward_modules: list[str] | str | None = None
    fan_in_fan_out: bool = False
    init_ia3_weights: bool = True

    def validate(self) -> None:
        super().validate()
        if isinstance(self.feedforward_modules, (set, tuple)):
            self.feedforward_modules = sorted(self.feedforward_modules)

    def resolved(self, model) -> IA3Config:
        explicit_targets = self.target_modules is not None
        config = super().resolved(model)
        if config.feedforward_modules is None:
            model_type = getattr(getattr(model, "config", None), "model_type", None)
            table = IA3_DEFAULT_FEEDFORWARD.get(model_type)
            found = list(table) if table is not None else role_targets(model, ("mlp_output",))
            config.feedforward_modules = [] if explicit_targets else found
        return config

    def is_feedforward(self, module_name: str) -> bool:
        patterns = self.feedforward_modules or []
        if isinstance(patterns, str):
            return re.fullmatch(patterns, module_name) is not None
        return any(module_name.endswith(p) for p in patterns)


class IA3Linear(AdapterLayer):
    """(IA)³ on ``nn.Linear`` and transformers' ``Conv1D``."""

    adapter_attributes = ("ia3_l",)

    def __init__(self, base_layer: nn.Module) -> None:
        super().__init__(base_layer)
        self.transposed = isinstance(self.base, Conv1D)
        self.in_features, self.out_features = linear_shape(self.base)
        self.ia3_l = nn.ParameterDict()
        self.feedforward: dict[str, bool] = {}

    @classmethod
    def expected_shapes(cls, base_layer: nn.Module, config: IA3Config, module_name: str) -> dict[str, tuple]:
        in_features, out_features = linear_shape(base_layer)
        return {"ia3_l": (1, in_features) if config.is_feedforward(module_name) else (out_features, 1)}

    def add_adapter(self, name: str, config: IA3Config, module_name: str) -> None:
        shape = self.expected_shapes(self.base, config, module_name)["ia3_l"]
        weight = self.weight
        dtype = weight.dtype if weight.dtype.is_floating_point else torch.float32
        vector = torch.ones(shape, dtype=dtype, device=weight.device)
        if not config.init_ia3_weights:
            nn.init.normal_(vector)
        self.ia3_l[name] = nn.Parameter(vector)
        self.feedforward[name] = config.is_feedforward(module_name)

    def _scale(self, name: str) -> torch.Tensor:
        """l shaped to scale the stored weight (out × in, or in × out for Conv1D)."""
        vector = self.ia3_l[name].float()
        return vector.T if self.transposed else vector

    def merged_weight(self, name: str, weight: torch.Tensor) -> torch.Tensor:
        return weight * self._scale(name)

    def unmerged_weight(self, name: str, weight: torch.Tensor) -> torch.Tensor:
        return weight / self._scale(name)

    def merged_bias(self, name: str, bias: torch.Tensor) -> torch.Tensor:
        return bias if self.feedforward[name] else bias * self.ia3_l[name].float().flatten()

    def unmerged_bias(self, name: str, bias: torch.Tensor) -> torch.Tensor:
        return bias if self.feedforward[name] else bias / self.ia3_l[name].float().flatten()

    def apply_adapters(self, names: list[str], x: torch.Tensor, *args, **kwargs) -> torch.Tensor:
        mine = self.own(names)
        inputs = [n for n in mine if self.feedforward[n]]
        for name in inputs:
            x = x * self.ia3_l[name].flatten().to(x.dtype)
        result = self.call_base(names, x, *args, **kwargs)
        for name in mine:
            if name not in inputs:
                result = result * self.ia3_l[name].flatten().to(result.dtype)
        return result


register_method(Method(name="ia3", config_cls=IA3Config, layers={nn.Linear: IA3Linear, Conv1D: IA3Linear},
                       learning_rate=2e-2, description="(IA)³: learned vectors that rescale keys, values and "
                                                       "feed-forward activations"))
