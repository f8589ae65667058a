"""Bottleneck adapters: down-projection, non-linearity, up-projection, added to a block's output.

    a(z) = U f(D z + b_D) + b_U,   D: m × d,  U: d × m,  m = d / reduction_factor (or bottleneck_size)

* sequential (after a block, with a residual): h' = h + s · a(h), where h is the block's output —
  Houlsby et al., 2019, "Parameter-Efficient Transfer Learning for NLP" (after the attention and the
  feed-forward block: ``placement="houlsby"``); Pfeiffer et al., 2021, "AdapterFusion" (after the
  feed-forward block only: ``placement="pfeiffer"``, the default).
* parallel to a block: h' = h + s · a(x), where x is the block's input — He et al., 2022, "Towards a
  Unified View of Parameter-Efficient Transfer Learning" (``placement="parallel"``, s = 4 by default,
  next to the feed-forward block). Where a model has no single module for the feed-forward block
  (BERT, BART) the adapter sits on the block's output projection and reads the block input at the
  module named by ``parallel_input`` (BERT: ``intermediate``), found in the same layer.

U starts at zero, so the adapted model starts exactly at the pretrained one. An adapter with
``non_linearity="identity"`` is linear and merges into the weights where it reads the wrapped
module's own input or output (h' = (I + s U D) h); with a non-linearity, or reading another
module's input, it cannot be merged and says so.
"""

from __future__ import annotations

import re

import torch
from torch import nn
from transformers.pytorch_utils import Conv1D

from peftkit.core.block_input import ReadsBlockInput
from peftkit.core.config import TargetedConfig, config_dataclass
from peftkit.core.errors import ConfigError
from peftkit.core.layer import output_width
from peftkit.core.module_roles import in_model_order, role_targets, sublayers
from peftkit.core.registry import Method, register_method
from peftkit.methods.lora import linear_shape

ACTIVATIONS = {"relu": nn.ReLU, "gelu": nn.GELU, "silu": nn.SiLU, "swish": nn.SiLU, "tanh": nn.Tanh,
               "identity": nn.Identity}
PLACEMENTS = ("houlsby", "pfeiffer", "parallel")

# model_type -> (attention block output, feed-forward block output, feed-forward block for parallel,
#                module whose input is the feed-forward block's input when that block has no module)
_CROSS_ATTENTION = re.compile(r"encdec|cross|encoder_attn", re.IGNORECASE)
BLOCKS = {
    "bert": (r".*\.attention\.output\.dense", r".*\.layer\.\d+\.output\.dense", r".*\.layer\.\d+\.output\.dense",
             "intermediate"),
    "gpt2": (r".*\.attn\.c_proj", r".*\.mlp", r".*\.mlp", None),
    "llama": (r".*\.self_attn\.o_proj", r".*\.mlp", r".*\.mlp", None),
    "t5": (r".*\.SelfAttention\.o", r".*\.DenseReluDense", r".*\.DenseReluDense", None),
    "bart": (r".*\.self_attn\.out_proj", r".*\.fc2", r".*\.fc2", "fc1"),
}
for _alias, _source in (("roberta", "bert"), ("xlm-roberta", "bert"), ("electra", "bert"), ("mistral", "llama"),
                        ("qwen2", "llama"), ("opt", "bart")):
    BLOCKS[_alias] = BLOCKS[_source]


@config_dataclass
class BottleneckConfig(TargetedConfig):
    """Bottleneck-adapter settings. ``target_modules`` defaults to the blocks ``placement`` names."""

    peft_type = "BOTTLENECK"
    placement: str = "pfeiffer"
    reduction_factor: int = 16
    bottleneck_size: int | None = None
    non_linearity: str = "relu"
    scaling: float | None = None
    adapter_dropout: float = 0.0
    parallel_input: list[str] | str | None = None

    def validate(self) -> None:
        super().validate()
        if self.placement not in PLACEMENTS:
            raise ConfigError(f"placement must be one of {', '.join(PLACEMENTS)}, got {self.placement!r}")
        if self.non_linearity not in ACTIVATIONS:
            raise ConfigError(f"non_linearity must be one of {', '.join(ACTIVATIONS)}, got {self.non_linearity!r}")
        for name in ("reduction_factor", "bottleneck_size"):
            value = getattr(self, name)
            if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value <= 0):
                raise ConfigError(f"{name} must be a positive integer, got {value!r}")
        if self.scaling is not None and not isinstance(self.scaling, (int, float)):
            raise ConfigError(f"scaling must be a number, got {self.scaling!r}")
        if not isinstance(self.adapter_dropout, (int, float)) or not 0 <= self.adapter_dropout < 1:
            raise ConfigError(f"adapter_dropout must be in [0, 1), got {self.adapter_dropout!r}")
        if self.parallel_input is not None and self.placement != "parallel":
            raise ConfigError("parallel_input only applies to placement='parallel'")

    default_roles = ("attention_output", "mlp_output")  # on a family BLOCKS does not name: see structure_targets

    def default_target_modules(self, model_type: str | None) -> str | None:
        if model_type not in BLOCKS:
            return None
        attention, feed_forward, parallel, _ = BLOCKS[model_type]
        return {"houlsby": f"{attention}|{feed_forward}", "pfeiffer": feed_forward, "parallel": parallel}[
            self.placement]

    def structure_targets(self, model) -> list[str]:
        """Houlsby: each attention output projection and feed-forward block; Pfeiffer and parallel: each
        feed-forward block (a parallel adapter reads the block's own input)."""
        found = sublayers(model)
        attention = role_targets(model, ("attention_output",)) if self.placement == "houlsby" else []
        attention = [name for name in attention if not _CROSS_ATTENTION.search(name)]  # Houlsby: self-attention
        return in_model_order(model, attention + found["feed_forward"])

    def resolved(self, model) -> BottleneckConfig:
        explicit_targets = self.target_modules is not None
        config = super().resolved(model)
        model_type = getattr(getattr(model, "config", None), "model_type", None)
        if config.placement == "parallel" and config.parallel_input is None and not explicit_targets:
            source = BLOCKS[model_type][3] if model_type in BLOCKS else None
            config.parallel_input = [source] if source else None
        if config.scaling is None:
            config.scaling = 4.0 if config.placement == "parallel" else 1.0
        return config


def input_features(module: nn.Module) -> int:
    """Width of a module's input: a Linear / Conv1D's, or its first Linear / Conv1D's for a block."""
    first = next(m for m in module.modules() if isinstance(m, (nn.Linear, Conv1D)))
    return linear_shape(first)[0]


def adapter_widths(base_layer: nn.Module, config: BottleneckConfig) -> tuple[int, int]:
    """(input, output) widths: a parallel adapter on the module's own input reads the input width; one
    reading the block input elsewhere, or a sequential one, works on the residual stream's width."""
    out = output_width(base_layer)
    own_input = config.placement == "parallel" and config.parallel_input is None
    return (input_features(base_layer) if own_input else out), out


class Bottleneck(nn.Module):
    """a(z) = U f(D z) with U zero-initialised."""

    def __init__(self, widths: tuple[int, int], size: int, non_linearity: str, dropout: float,
                 like: torch.Tensor) -> None:
        super().__init__()
        options = {"device": like.device, "dtype": like.dtype if like.dtype.is_floating_point else torch.float32}
        self.down = nn.Linear(widths[0], size, **options)
        self.activation = ACTIVATIONS[non_linearity]()
        self.up = nn.Linear(size, widths[1], **options)
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        nn.init.zeros_(self.up.weight)
        nn.init.zeros_(self.up.bias)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.up(self.activation(self.down(self.dropout(z))))


class BottleneckLayer(ReadsBlockInput):
    """Bottleneck adapters around a block (a Linear / Conv1D or a module such as an MLP)."""

    adapter_attributes = ("bottleneck",)

    def __init__(self, base_layer: nn.Module) -> None:
        super().__init__(base_layer)
        self.bottleneck = nn.ModuleDict()
        self.settings: dict[str, BottleneckConfig] = {}

    @classmethod
    def can_wrap(cls, module: nn.Module) -> bool:
        return output_width(module) is not None

    @classmethod
    def expected_shapes(cls, base_layer: nn.Module, config: BottleneckConfig, module_name: str) -> dict[str, tuple]:
        width_in, width_out = adapter_widths(base_layer, config)
        size = config.bottleneck_size or max(1, width_out // config.reduction_factor)
        return {"bottleneck.down.weight": (size, width_in), "bottleneck.down.bias": (size,),
                "bottleneck.up.weight": (width_out, size), "bottleneck.up.bias": (width_out,)}

    def add_adapter(self, name: str, config: BottleneckConfig, module_name: str) -> None:
        size = self.expected_shapes(self.base, config, module_name)["bottleneck.down.bias"][0]
        like = next(self.base.parameters())
        self.bottleneck[name] = Bottleneck(adapter_widths(self.base, config), size, config.non_linearity,
                                           config.adapter_dropout, like)
        self.settings[name] = config

    def attach(self, model: nn.Module, module_name: str, config: BottleneckConfig) -> None:
        """For a parallel adapter reading another module's input, capture that input in forward."""
        if config.parallel_input is not None:
            self.read_input_at(model, module_name, config.parallel_input, "parallel_input")

    def remove_adapter(self, name: str) -> None:
        super().remove_adapter(name)
        self.settings.pop(name, None)
        if not any(s.parallel_input for s in self.settings.values()):
            self.stop_reading_input()

    def check_mergeable(self) -> None:
        for name in self.adapters_to_apply():
            settings = self.settings[name]
            if settings.non_linearity != "identity" or settings.parallel_input is not None:
                raise ConfigError(
                    f"bottleneck adapter '{name}' cannot be merged into the weights: "
                    + ("it has a non-linearity" if settings.non_linearity != "identity"
                       else "it reads another module's input")
                )
            if not isinstance(self.base, (nn.Linear, Conv1D)) or self.bias is None:
                raise ConfigError(f"bottleneck adapter '{name}' wraps a {type(self.base).__name__} without "
                                  f"one weight and bias to fold it into: it cannot be merged")

    def _linear_map(self, name: str) -> torch.Tensor:
        """s · U D; its bias part s · (U b_D + b_U) is ``_bias_shift``."""
        block = self.bottleneck[name]
        scale = self.settings[name].scaling
        return scale * block.up.weight.float() @ block.down.weight.float()

    def _out_in(self, weight: torch.Tensor) -> torch.Tensor:
        return weight.T if isinstance(self.base, Conv1D) else weight

    def merged_weight(self, name: str, weight: torch.Tensor) -> torch.Tensor:
        w = self._out_in(weight)
        if self.settings[name].placement == "parallel":  # h + s U D x
            return self._out_in(w + self._linear_map(name))
        return self._out_in(w + self._linear_map(name) @ w)  # (I + s U D) W

    def unmerged_weight(self, name: str, weight: torch.Tensor) -> torch.Tensor:
        w = self._out_in(weight)
        if self.settings[name].placement == "parallel":
            return self._out_in(w - self._linear_map(name))
        eye = torch.eye(w.shape[0], dtype=w.dtype, device=w.device)
        return self._out_in(torch.linalg.solve(eye + self._linear_map(name), w))

    def _bias_shift(self, name: str) -> torch.Tensor:
        block = self.bottleneck[name]
        return self.settings[name].scaling * (block.up.weight.float() @ block.down.bias.float() + block.up.bias.float())

    def merged_bias(self, name: str, bias: torch.Tensor) -> torch.Tensor:
        if self.settings[name].placement == "parallel":
            return bias + self._bias_shift(name)
        return bias + self._linear_map(name) @ bias + self._bias_shift(name)

    def unmerged_bias(self, name: str, bias: torch.Tensor) -> torch.Tensor:
        if self.settings[name].placement == "parallel":
            return bias - self._bias_shift(name)
        eye = torch.eye(bias.shape[0], dtype=bias.dtype, device=bias.device)
        return torch.linalg.solve(eye + self._linear_map(name), bias - self._bias_shift(name))

    def _change(self, name: str, x: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
        """s · a(·) of adapter ``name`` on the block input x (parallel) or on the output h so far (sequential)."""
        settings = self.settings[name]
        if settings.placement == "parallel":
            source = x if settings.parallel_input is None else self.block_input[self.rows]
            return settings.scaling * self.bottleneck[name](source)
        return settings.scaling * self.bottleneck[name](h)

    def apply_adapters(self, names: list[str], *args, **kwargs) -> torch.Tensor:
        x = self.module_input(args, kwargs)
        result = self.call_base(names, *args, **kwargs)
        for name in self.own(names):
            result = result + self._change(name, x, result)
        return result

    def adapter_deltas(self, names: list[str], *args, **kwargs):
        """The block's output once, and each adapter's change to it."""
        x = self.module_input(args, kwargs)
        base_output = self.call_base([], *args, **kwargs)
        return base_output, torch.stack([self._change(name, x, base_output) for name in names])


register_method(Method(name="bottleneck", aliases=("adapter",), config_cls=BottleneckConfig,
                       layers={nn.Module: BottleneckLayer},
                       layers_note=" holding a Linear or Conv1D", peft_reads=False, learning_rate=2e-3,
                       description="bottleneck adapters: a small down-project / up-project block after a layer"))
