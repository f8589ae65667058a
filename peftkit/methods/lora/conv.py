"""LoRA on ``nn.Conv1d``, ``nn.Conv2d`` and ``nn.Conv3d``, with DoRA, in peft's form.

For a frozen convolution W (out × in/g × k₁ × …) with bias b, stride, padding and g groups:

    h = W ⋆ x + b + s · B ⋆ (A ⋆ dropout(x)),    s = α / r  (α / √r with rsLoRA)

A is a convolution in → r with the base's kernel, stride and padding (saved ``lora_A.weight``: r × in × k₁ × …),
B a 1 × … × 1 convolution r → out in the base's groups (``lora_B.weight``: out × r/g × 1 × …, bias c with
``lora_bias=True``). B starts at zero (A Kaiming-uniform, or N(0, 1/r²) with ``"gaussian"``), so the model starts
unchanged. With one group the two convolutions are one, of kernel

    ΔW[o, i, …] = s · Σⱼ B[o, j] A[j, i, …]

so merging adds ΔW to W (and s · c to b). peft gives A no dilation and no padding mode, so a base convolution with
dilation ≠ 1 or a padding mode other than zeros is refused (the update would not be a weight change); a base with
more than one group computes but cannot merge, as in peft.

DoRA (Liu et al., 2024) on a convolution: W' = m ⊙ (W + ΔW) / n with n = ‖W + ΔW‖ over each output channel's
kernel (detached), h = (m/n) ⊙ (W ⋆ x + s B ⋆ A ⋆ x) + b; m (``lora_magnitude_vector``) is saved as
1 × out × 1 × …, peft's shape.
"""

from __future__ import annotations

import torch
from torch import nn

from peftkit.core.errors import ConfigError
from peftkit.methods.lora.dora import DoraVariant
from peftkit.methods.lora.factors import init_factors
from peftkit.methods.lora.layers import LoraConfig, _LoraLayer

_CONV_TYPES = {3: nn.Conv1d, 4: nn.Conv2d, 5: nn.Conv3d}  # by the weight's number of dimensions


def _channel_view(tensor: torch.Tensor, dims: int, axis: int) -> torch.Tensor:
    """A per-channel vector shaped to broadcast along ``axis`` of a ``dims``-dimensional tensor."""
    shape = [1] * dims
    shape[axis] = -1
    return tensor.reshape(shape)


class ConvDoraVariant(DoraVariant):
    """DoRA on a convolution: the norm runs over each output channel's whole kernel."""

    @staticmethod
    def adapted_norm(layer, name: str, weight: torch.Tensor | None = None) -> torch.Tensor:
        """n = ‖W + ΔW‖ per output channel, detached, shaped 1 × out × 1 × … like the magnitude."""
        weight = layer.weight if weight is None else weight
        with torch.no_grad():
            adapted = weight.float() + layer.scaling[name] * layer._product(name).float()
            return _channel_view(adapted.flatten(1).norm(dim=1), weight.dim(), 1).to(weight.dtype)

    def _stored_ratio(self, layer, name: str, norm: torch.Tensor) -> torch.Tensor:
        return _channel_view(self.ratio(layer, name, norm), layer.weight.dim(), 0)

    def conv_output(self, layer, name: str, x: torch.Tensor, result: torch.Tensor) -> torch.Tensor:
        """(m/n) ⊙ (W ⋆ x + s B ⋆ A ⋆ x) + b, from the base output W ⋆ x + b; with dropout in training, the
        dropped input's W ⋆ x is computed anew (peft's order)."""
        dropout = layer.lora_dropout[name]
        if layer.training and isinstance(dropout, nn.Dropout):
            x = dropout(x)
            base_out = layer.base._conv_forward(x, layer.weight.to(x.dtype), None).to(result.dtype)
        elif layer.bias is not None:
            base_out = result - _channel_view(layer.bias, result.dim(), 1)
        else:
            base_out = result
        update = layer.lora_B[name](layer.lora_A[name](x)).to(result.dtype)
        ratio = self.ratio(layer, name).to(result.dtype)
        return result + (ratio - 1) * base_out + ratio * layer.scaling[name] * update


class LoraConv(_LoraLayer):
    """LoRA on ``nn.Conv1d`` / ``nn.Conv2d`` / ``nn.Conv3d``: two convolutions beside the base one."""

    adapter_attributes = ("lora_A", "lora_B", "lora_magnitude_vector", "lora_dropout")

    def __init__(self, base_layer: nn.Module) -> None:
        super().__init__(base_layer)
        self.lora_A = nn.ModuleDict()
        self.lora_B = nn.ModuleDict()
        self.lora_dropout = nn.ModuleDict()

    @classmethod
    def expected_shapes(cls, base_layer: nn.Module, config: LoraConfig, module_name: str) -> dict[str, tuple]:
        init = config.init_lora_weights
        if config.init_from_weight:
            raise ConfigError(f"init_lora_weights='{init}' is not defined for {type(base_layer).__name__} "
                              f"'{module_name}' (as in peft); exclude it or use the default init")
        if any(d != 1 for d in base_layer.dilation) or base_layer.padding_mode != "zeros":
            raise ConfigError(f"target_modules: LoRA cannot adapt '{module_name}' (dilation "
                              f"{tuple(base_layer.dilation)}, padding_mode '{base_layer.padding_mode}'): peft's "
                              f"update there is not a weight change; exclude it")
        r, groups = config.rank_for(module_name), base_layer.groups
        if r % groups:
            raise ConfigError(f"r: {r} is not divisible by the {groups} groups of '{module_name}' (as in peft)")
        if config.use_dora and groups > 1:
            raise ConfigError(f"use_dora=True cannot adapt '{module_name}', a convolution with {groups} groups")
        ones = (1,) * (base_layer.weight.dim() - 2)
        out_channels = base_layer.out_channels
        shapes = {"lora_A.weight": (r, base_layer.in_channels, *base_layer.kernel_size),
                  "lora_B.weight": (out_channels, r // groups, *ones)}
        if config.lora_bias:
            shapes["lora_B.bias"] = (out_channels,)
        if config.use_dora:
            shapes["lora_magnitude_vector"] = (1, out_channels, *ones)
        return shapes

    def add_adapter(self, name: str, config: LoraConfig, module_name: str) -> None:
        r = config.rank_for(module_name)
        base = self.base
        conv = _CONV_TYPES[base.weight.dim()]
        options = self._new_tensor_options()
        ones = (1,) * (base.weight.dim() - 2)
        self.lora_A[name] = conv(base.in_channels, r, base.kernel_size, base.stride, base.padding, bias=False,
                                 **options)
        self.lora_B[name] = conv(r, base.out_channels, ones, ones, groups=base.groups, bias=config.lora_bias,
                                 **options)
        self.lora_dropout[name] = nn.Dropout(config.lora_dropout) if config.lora_dropout > 0 else nn.Identity()
        self._start_adapter(name, config, module_name)
        init_factors(self.lora_A[name], self.lora_B[name], config.init_lora_weights, r)
        if name in self.variants:
            self.variants[name] = ConvDoraVariant()
            self.variants[name].init(self, name)

    def check_mergeable(self) -> None:
        if self.base.groups > 1:
            raise ConfigError(f"LoRA on a convolution with {self.base.groups} groups cannot be merged (as in peft)")

    def _product(self, name: str) -> torch.Tensor:
        """B A as one kernel (out × in × k₁ × …), for one group."""
        self.check_mergeable()
        weight_a, weight_b = self.lora_A[name].weight, self.lora_B[name].weight
        r = weight_a.shape[0]
        return (weight_b.reshape(-1, r) @ weight_a.reshape(r, -1)).reshape(self.weight.shape)

    def apply_adapters(self, names: list[str], x: torch.Tensor, *args, **kwargs) -> torch.Tensor:
        result = self.call_base(names, x, *args, **kwargs)
        for name in self.own(names):
            lora_A, lora_B, dropout = self.lora_A[name], self.lora_B[name], self.lora_dropout[name]
            lora_x = x.to(lora_A.weight.dtype)
            if name in self.variants:
                result = self.variants[name].conv_output(self, name, lora_x, result)
            else:
                result = result + self.scaling[name] * lora_B(lora_A(dropout(lora_x))).to(result.dtype)
        return result
