"""BEFT: a trained bias on the value projections, and nothing else.

Huang et al., 2025, "BEFT: Bias-Efficient Fine-Tuning of Language Models" (arXiv 2509.15974). For a frozen layer
h = W x + b and a trained vector β (out):

    h = W x + b + β          merged: b ← b + β

β starts at zero, so the model starts unchanged. By default only the value projections are adapted (peft's table).
A layer without a bias cannot take β into its weights, so merging such a layer is refused, as in peft. Saved tensor:
``beft_bias`` = β, of shape (1, out) as peft stores it; field names and defaults are peft's.
"""

from __future__ import annotations

import torch
from torch import nn

from peftkit.core.config import TargetedConfig, config_dataclass
from peftkit.core.errors import ConfigError
from peftkit.core.layer import AdapterLayer
from peftkit.core.registry import Method, register_method
from peftkit.methods.lora import linear_shape
from peftkit.methods.weight_delta import weight_layers

# peft's default targets for BEFT: the value projection of each attention block
BEFT_DEFAULT_TARGETS = {
    **{kind: ["v_proj"] for kind in ("opt", "gptj", "gpt_neo", "bart", "llama", "llama4", "mistral", "mixtral", "phi",
                                     "gemma", "gemma2", "gemma3_text", "qwen2", "qwen3")},
    "t5": ["v"], "mt5": ["v"], "roberta": ["value"], "bert": ["value"], "deberta-v2": ["value_proj"],
}


@config_dataclass
class BeftConfig(TargetedConfig):
    """BEFT settings, with peft's field names and defaults."""

    peft_type = "BEFT"
    default_targets = BEFT_DEFAULT_TARGETS
    default_roles = ("value",)
    init_weights: bool = True


class BeftLinear(AdapterLayer):
    adapter_attributes = ("beft_bias",)

    def __init__(self, base_layer: nn.Module) -> None:
        super().__init__(base_layer)
        self.beft_bias = nn.ParameterDict()

    @classmethod
    def expected_shapes(cls, base_layer: nn.Module, config: BeftConfig, module_name: str) -> dict[str, tuple]:
        return {"beft_bias": (1, linear_shape(base_layer)[1])}

    def add_adapter(self, name: str, config: BeftConfig, module_name: str) -> None:
        weight = self.weight
        dtype = weight.dtype if weight.dtype.is_floating_point else torch.float32
        bias = torch.randn(1, linear_shape(self.base)[1]).to(device=weight.device, dtype=dtype)
        if config.init_weights:
            bias.zero_()
        self.beft_bias[name] = nn.Parameter(bias)

    def check_mergeable(self) -> None:
        if self.bias is None:
            raise ConfigError(f"BEFT cannot be merged into a {type(self.base).__name__} without a bias")

    def merged_weight(self, name: str, weight: torch.Tensor) -> torch.Tensor:
        return weight

    def unmerged_weight(self, name: str, weight: torch.Tensor) -> torch.Tensor:
        return weight

    def merged_bias(self, name: str, bias: torch.Tensor) -> torch.Tensor:
        return bias + self.beft_bias[name].flatten().float()

    def unmerged_bias(self, name: str, bias: torch.Tensor) -> torch.Tensor:
        return bias - self.beft_bias[name].flatten().float()

    def apply_adapters(self, names: list[str], x: torch.Tensor, *args, **kwargs) -> torch.Tensor:
        result = self.call_base(names, x, *args, **kwargs)
        for name in self.own(names):
            result = result + self.beft_bias[name].flatten().to(result.dtype)
        return result


register_method(Method(name="beft", config_cls=BeftConfig, layers=weight_layers(BeftLinear), learning_rate=2e-2,
                       peft_module_types=(nn.Linear,),
                       description="BEFT: a trained bias added to the value projections' output"))
