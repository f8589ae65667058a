"""BitFit: train only the bias terms.

Ben Zaken, Ravfogel and Goldberg, 2022, "BitFit: Simple Parameter-efficient Fine-tuning for
Transformer-based Masked Language-models". For every module with a bias b (Linear, Conv1D, LayerNorm)
the adapter holds a change δ, initialised to zero:  h = f(x) + δ,  i.e. b' = b + δ.
Keeping δ apart from b lets several adapters share a model, disable and delete cleanly, and merge
exactly (b ← b + δ). Default targets: every module that has a bias (except the output head).
"""

from __future__ import annotations

import torch
from torch import nn
from transformers.pytorch_utils import Conv1D

from peftkit.core.config import TargetedConfig, config_dataclass
from peftkit.core.layer import AdapterLayer
from peftkit.core.registry import Method, register_method
from peftkit.core.targets import ALL


@config_dataclass
class BitFitConfig(TargetedConfig):
    """BitFit settings; ``target_modules`` defaults to every module with a bias."""

    peft_type = "BITFIT"

    def default_target_modules(self, model_type: str | None) -> str:
        return ALL


class BiasDelta(AdapterLayer):
    """A trainable change to the module's bias, added to its output."""

    adapter_attributes = ("bitfit_bias",)

    def __init__(self, base_layer: nn.Module) -> None:
        super().__init__(base_layer)
        self.bitfit_bias = nn.ParameterDict()

    @classmethod
    def can_wrap(cls, module: nn.Module) -> bool:
        return getattr(module, "bias", None) is not None

    @classmethod
    def expected_shapes(cls, base_layer: nn.Module, config: BitFitConfig, module_name: str) -> dict[str, tuple]:
        return {"bitfit_bias": tuple(base_layer.bias.shape)}

    def add_adapter(self, name: str, config: BitFitConfig, module_name: str) -> None:
        bias = self.bias  # its shape, not zeros_like: a sharded (FSDP) bias would give a sharded δ
        self.bitfit_bias[name] = nn.Parameter(torch.zeros(bias.shape, dtype=bias.dtype, device=bias.device))

    def merged_weight(self, name: str, weight: torch.Tensor) -> torch.Tensor:
        return weight

    def unmerged_weight(self, name: str, weight: torch.Tensor) -> torch.Tensor:
        return weight

    def merged_bias(self, name: str, bias: torch.Tensor) -> torch.Tensor:
        return bias + self.bitfit_bias[name].float()

    def unmerged_bias(self, name: str, bias: torch.Tensor) -> torch.Tensor:
        return bias - self.bitfit_bias[name].float()

    def apply_adapters(self, names: list[str], x: torch.Tensor, *args, **kwargs) -> torch.Tensor:
        result = self.call_base(names, x, *args, **kwargs)
        for name in self.own(names):
            result = result + self.bitfit_bias[name].to(result.dtype)
        return result


register_method(Method(name="bitfit", config_cls=BitFitConfig, layers_note=" with a bias",
                       layers={nn.Linear: BiasDelta, Conv1D: BiasDelta, nn.LayerNorm: BiasDelta},
                       peft_reads=False, learning_rate=2e-3,
                       description="BitFit: only the bias terms train"))
