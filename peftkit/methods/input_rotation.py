"""The layer shared by methods that turn a frozen linear layer's input by a learned (near-)orthogonal matrix: OFT,
BOFT and HRA.

For a frozen Linear (or transformers' Conv1D, which stores its weight as in × out) with weight W (out × in), bias b
and an adapter whose tensors give a matrix M (in × in) and, for some methods, a scale s ∈ R^out:

    h = s ⊙ (W M x) + b          merged: W ← diag(s) W M,   b unchanged

A method subclasses ``InputRotationLayer`` and gives ``rotate(name, x)``: x Mᵀ for inputs x as rows (… × in), the
way peft applies it, and ``output_scale(name)`` where it has s. M itself (for merging) is ``rotate`` applied to the
identity. ``last_first`` says in which order peft composes several adapters active at once (OFT: in order; BOFT
and HRA: the last one nearest the input).
"""

from __future__ import annotations

from typing import ClassVar

import torch
from torch import nn
from transformers.pytorch_utils import Conv1D

from peftkit.core.layer import AdapterLayer
from peftkit.methods.lora import linear_shape


class InputRotationLayer(AdapterLayer):
    """h = s ⊙ (W M x) + b on ``nn.Linear`` and transformers' ``Conv1D``."""

    last_first: ClassVar[bool] = False

    def __init__(self, base_layer: nn.Module) -> None:
        super().__init__(base_layer)
        self.transposed = isinstance(self.base, Conv1D)
        self.in_features, self.out_features = linear_shape(self.base)

    def rotate(self, name: str, x: torch.Tensor, dropout: bool = True) -> torch.Tensor:
        """x Mᵀ for rows x (… × in), returned in x's dtype; ``dropout``: with the method's training-time dropout,
        where it has one (never when merging)."""
        raise NotImplementedError

    def output_scale(self, name: str) -> torch.Tensor | None:
        """s (out), or None where the method has none."""
        return None

    def new_tensor(self, *shape: int) -> torch.Tensor:
        """An uninitialised tensor on the base weight's device, in its dtype (float32 for a quantised weight)."""
        weight = self.weight
        dtype = weight.dtype if weight.dtype.is_floating_point else torch.float32
        return torch.empty(shape, dtype=dtype, device=weight.device)

    def rotation(self, name: str, like: torch.Tensor) -> torch.Tensor:
        """Mᵀ (in × in) in the dtype and on the device of ``like``."""
        return self.rotate(name, torch.eye(self.in_features, dtype=like.dtype, device=like.device), dropout=False)

    def apply_adapters(self, names: list[str], x: torch.Tensor, *args, **kwargs) -> torch.Tensor:
        mine = self.own(names)
        for name in reversed(mine) if self.last_first else mine:
            x = self.rotate(name, x)
        result = self.call_base(names, x, *args, **kwargs)
        scales = [s for s in (self.output_scale(name) for name in mine) if s is not None]
        if scales:
            bias = self.bias
            shifted = result if bias is None else result - bias
            for scale in scales:
                shifted = shifted * scale.to(result.dtype)
            result = shifted if bias is None else shifted + bias
        return result

    def merged_weight(self, name: str, weight: torch.Tensor) -> torch.Tensor:
        turn = self.rotation(name, weight)  # Mᵀ
        merged = turn @ weight if self.transposed else weight @ turn.T
        scale = self.output_scale(name)
        if scale is not None:
            scale = scale.to(weight.dtype)
            merged = merged * (scale if self.transposed else scale[:, None])
        return merged

    def unmerged_weight(self, name: str, weight: torch.Tensor) -> torch.Tensor:
        scale = self.output_scale(name)
        if scale is not None:
            scale = scale.to(weight.dtype)
            weight = weight / (scale if self.transposed else scale[:, None])
        turn = self.rotation(name, weight)
        return torch.linalg.solve(turn, weight) if self.transposed else torch.linalg.solve(turn, weight.T).T


def rotation_layers(layer_cls: type[InputRotationLayer]) -> dict[type[nn.Module], type[InputRotationLayer]]:
    """A registration's ``layers``: the layer class on the module types it wraps (Linear, Conv1D)."""
    return {nn.Linear: layer_cls, Conv1D: layer_cls}
