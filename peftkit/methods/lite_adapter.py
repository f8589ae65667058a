"""Lite adapters (LiST): a linear low-rank change of a projection's output, no bias, no non-linearity.

Wang et al., 2022, "LiST: Lite Prompted Self-training Makes Parameter-efficient Few-shot Learners". For
the attention-output and feed-forward-output projections h = W x + b of each layer:

    h' = h + h A B,    A ∈ R^{d×r} ~ N(0, σ²), B ∈ R^{r×d} = 0  (so h' = h at the start)

A linear map of h, so it folds into the module: h' = h (I + AB), i.e. W ← (I + AB)ᵀ W and
b ← (I + AB)ᵀ b (for GPT-2's Conv1D, which stores Wᵀ: W ← W (I + AB)). Unmerging solves with (I + AB).
Default targets: the attention-output and feed-forward-output projections (BERT ``attention.output.dense``
and ``output.dense``; Llama ``o_proj``, ``down_proj``; GPT-2 ``attn.c_proj``, ``mlp.c_proj``). Choices the
paper leaves open: σ = 0.02 (the paper's "random" start for A), r = 16.
"""

from __future__ import annotations

import torch
from torch import nn
from transformers.pytorch_utils import Conv1D

from peftkit.core.config import TargetedConfig, config_dataclass
from peftkit.core.errors import ConfigError
from peftkit.core.layer import AdapterLayer
from peftkit.core.registry import Method, register_method
from peftkit.methods.lora import linear_shape

LITE_DEFAULT_TARGETS = {
    "bert": ["attention.output.dense", "output.dense"],
    "roberta": ["attention.output.dense", "output.dense"],
    "xlm-roberta": ["attention.output.dense", "output.dense"],
    "gpt2": ["attn.c_proj", "mlp.c_proj"],
    "llama": ["o_proj", "down_proj"],
    "mistral": ["o_proj", "down_proj"],
    "qwen2": ["o_proj", "down_proj"],
}


@config_dataclass
class LiteAdapterConfig(TargetedConfig):
    """Lite adapter settings: rank ``r`` and the standard deviation of A's start."""

    peft_type = "LITE_ADAPTER"
    default_targets = LITE_DEFAULT_TARGETS
    default_roles = ("attention_output", "mlp_output")
    r: int = 16
    init_std: float = 0.02

    def validate(self) -> None:
        super().validate()
        if isinstance(self.r, bool) or not isinstance(self.r, int) or self.r <= 0:
            raise ConfigError(f"r must be a positive integer, got {self.r!r}")
        if not isinstance(self.init_std, (int, float)) or self.init_std < 0:
            raise ConfigError(f"init_std must be a number ≥ 0, got {self.init_std!r}")


class LiteAdapterLinear(AdapterLayer):
    """h' = h + h A B on ``nn.Linear`` and transformers' ``Conv1D`` outputs."""

    adapter_attributes = ("lite_A", "lite_B")

    def __init__(self, base_layer: nn.Module) -> None:
        super().__init__(base_layer)
        self.transposed = isinstance(self.base, Conv1D)
        self.lite_A = nn.ParameterDict()
        self.lite_B = nn.ParameterDict()

    @classmethod
    def expected_shapes(cls, base_layer: nn.Module, config: LiteAdapterConfig, module_name: str) -> dict[str, tuple]:
        _, out_features = linear_shape(base_layer)
        return {"lite_A": (out_features, config.r), "lite_B": (config.r, out_features)}

    def add_adapter(self, name: str, config: LiteAdapterConfig, module_name: str) -> None:
        _, out_features = linear_shape(self.base)
        weight = self.weight
        dtype = weight.dtype if weight.dtype.is_floating_point else torch.float32
        self.lite_A[name] = nn.Parameter(torch.randn(out_features, config.r, dtype=dtype, device=weight.device)
                                         * config.init_std)
        self.lite_B[name] = nn.Parameter(torch.zeros(config.r, out_features, dtype=dtype, device=weight.device))

    def _map(self, name: str) -> torch.Tensor:
        """I + AB (d × d), in float32."""
        change = self.lite_A[name].float() @ self.lite_B[name].float()
        return torch.eye(change.shape[0], device=change.device) + change

    def merged_weight(self, name: str, weight: torch.Tensor) -> torch.Tensor:
        return weight @ self._map(name) if self.transposed else self._map(name).T @ weight

    def unmerged_weight(self, name: str, weight: torch.Tensor) -> torch.Tensor:
        if self.transposed:  # W = W' (I + AB)⁻¹
            return torch.linalg.solve(self._map(name).T, weight.T).T
        return torch.linalg.solve(self._map(name).T, weight)

    def merged_bias(self, name: str, bias: torch.Tensor) -> torch.Tensor:
        return bias @ self._map(name)

    def unmerged_bias(self, name: str, bias: torch.Tensor) -> torch.Tensor:
        return torch.linalg.solve(self._map(name).T, bias)

    def apply_adapters(self, names: list[str], x: torch.Tensor, *args, **kwargs) -> torch.Tensor:
        result = self.call_base(names, x, *args, **kwargs)
        for name in self.own(names):
            a, b = self.lite_A[name], self.lite_B[name]
            result = result + (result.to(a.dtype) @ a @ b).to(result.dtype)
        return result


register_method(Method(name="lite_adapter", aliases=("lite",), config_cls=LiteAdapterConfig,
                       layers={nn.Linear: LiteAdapterLinear, Conv1D: LiteAdapterLinear}, peft_reads=False,
                       description="LiST's lite adapters: a tiny bottleneck beside each linear layer"))
