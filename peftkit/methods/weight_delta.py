"""The layer shared by methods whose adapter is a weight update computed from the adapter's own tensors.

For a frozen Linear (or transformers' Conv1D, which stores its weight as in × out) with weight W (out × in), bias
b and an adapter whose tensors θ give an update ΔW(θ) (out × in):

    h = W x + b + ΔW(θ) x          merged: W ← W + ΔW(θ)

A method subclasses ``WeightDeltaLayer``, lists its tensors' containers in ``adapter_attributes`` and gives
``update(name)`` (ΔW, out × in, scaling included); the forward pass, Conv1D's layout, merging and removal are here.
A method whose update is cheaper applied to x than built (a product of small factors) overrides
``update_output(name, x)`` as well.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from transformers.pytorch_utils import Conv1D

from peftkit.core.layer import AdapterLayer
from peftkit.methods.lora import linear_shape


class WeightDeltaLayer(AdapterLayer):
    """h = W x + b + ΔW x on ``nn.Linear`` and transformers' ``Conv1D``."""

    def __init__(self, base_layer: nn.Module) -> None:
        super().__init__(base_layer)
        self.transposed = isinstance(self.base, Conv1D)
        self.in_features, self.out_features = linear_shape(self.base)
        self.scaling: dict[str, float] = {}

    def update(self, name: str) -> torch.Tensor:
        """ΔW for the adapter, out × in, its scaling included."""
        raise NotImplementedError

    def update_output(self, name: str, x: torch.Tensor) -> torch.Tensor:
        """ΔW x for the adapter (x: … × in)."""
        update = self.update(name)
        return F.linear(x.to(update.dtype), update)

    def new_tensor(self, *shape: int) -> torch.Tensor:
        """An uninitialised tensor on the base weight's device, in its dtype (float32 for a quantised weight)."""
        weight = self.weight
        dtype = weight.dtype if weight.dtype.is_floating_point else torch.float32
        return torch.empty(shape, dtype=dtype, device=weight.device)

    def delta_weight(self, name: str) -> torch.Tensor:
        update = self.update(name)
        return update.T if self.transposed else update

    def apply_adapters(self, names: list[str], x: torch.Tensor, *args, **kwargs) -> torch.Tensor:
        result = self.call_base(names, x, *args, **kwargs)
        for name in self.own(names):
            result = result + self.update_output(name, x).to(result.dtype)
        return result

    def remove_adapter(self, name: str) -> None:
        super().remove_adapter(name)
        self.scaling.pop(name, None)


def weight_layers(layer_cls: type[WeightDeltaLayer]) -> dict[type[nn.Module], type[WeightDeltaLayer]]:
    """A registration's ``layers``: the layer class on the module types it wraps (Linear, Conv1D)."""
    return {nn.Linear: layer_cls, Conv1D: layer_cls}
