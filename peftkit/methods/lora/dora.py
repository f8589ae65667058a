"""DoRA as a LoRA variant: what a LoRA layer does differently for an adapter made with ``use_dora=True``.

DoRA (Liu et al., 2024, "DoRA: Weight-Decomposed Low-Rank Adaptation") splits the adapted weight into a
trained magnitude and a direction:

    W' = m ⊙ (W + s B A) / n,   n = ‖W + s B A‖ per output unit (detached, §4.3),   m initialised to n

so h = (m/n) ⊙ (W x + s B A x) + b. An embedding takes n per embedding dimension. The magnitude m is the
layer's ``lora_magnitude_vector`` (peft's key); everything else is the plain LoRA adapter.

A layer keeps one variant object per adapter that has one (``layer.variants``) and asks it for the shapes it
adds, its initialisation, its forward and its merge; a LoRA adapter without a variant takes the plain path.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from peftkit.core.errors import ConfigError
from peftkit.core.mechanics.quantization import dequantized
from peftkit.core.mechanics.sharding import whole


class DoraVariant:
    """DoRA's magnitude and direction on a LoRA layer (``_LoraLayer``: ``scaling``, ``_product``, ``_out_in``)."""

    def __init__(self) -> None:
        self._norm_at_merge: dict[str, torch.Tensor] = {}

    @staticmethod
    def shapes(output_units: int) -> dict[str, tuple]:
        return {"lora_magnitude_vector": (output_units,)}

    def init(self, layer, name: str) -> None:
        """m = n at the start, so the adapted layer begins as the base one."""
        layer.lora_magnitude_vector[name] = nn.Parameter(self.adapted_norm(layer, name, whole(layer.weight)))

    @staticmethod
    def adapted_norm(layer, name: str, weight: torch.Tensor | None = None) -> torch.Tensor:
        """n = ‖W + s B A‖ per output unit, detached as DoRA prescribes."""
        weight = dequantized(layer.weight if weight is None else weight)
        with torch.no_grad():
            adapted = layer._out_in(weight).float() + layer.scaling[name] * layer._product(name).float()
            return adapted.norm(dim=1).to(weight.dtype)

    def ratio(self, layer, name: str, norm: torch.Tensor | None = None) -> torch.Tensor:
        """m / n, one value per output unit."""
        return layer.lora_magnitude_vector[name] / (self.adapted_norm(layer, name) if norm is None else norm)

    def _stored_ratio(self, layer, name: str, norm: torch.Tensor) -> torch.Tensor:
        """m / n shaped to scale the output units of a weight in its stored layout."""
        ratio = self.ratio(layer, name, norm)
        return ratio.view(1, -1) if layer.transposed else ratio.view(-1, 1)

    def merged_weight(self, layer, name: str, weight: torch.Tensor) -> torch.Tensor:
        if layer.merged_adapters:
            raise ConfigError(f"DoRA adapter '{name}' cannot be merged on top of {layer.merged_adapters}; "
                              f"unmerge first")
        norm = self.adapted_norm(layer, name, weight)
        self._norm_at_merge[name] = norm
        return self._stored_ratio(layer, name, norm).float() * (weight + layer.delta_weight(name))

    def unmerged_weight(self, layer, name: str, weight: torch.Tensor) -> torch.Tensor:
        ratio = self._stored_ratio(layer, name, self._norm_at_merge.pop(name)).float()
        return weight / ratio - layer.delta_weight(name)

    def linear_output(self, layer, name: str, x: torch.Tensor, result: torch.Tensor) -> torch.Tensor:
        """The Linear / Conv1D output W x + b (``result``) with the adapter applied:
        W x + b + (m/n − 1) ⊙ W x + (m/n) ⊙ s B A x."""
        lora_A, lora_B, dropout = layer.lora_A[name], layer.lora_B[name], layer.lora_dropout[name]
        lora_x = x.to(lora_A.weight.dtype)
        dropped = dropout(lora_x)
        update = lora_B(lora_A(dropped)).to(result.dtype)
        ratio = self.ratio(layer, name).to(update.dtype)
        if dropped is not lora_x:  # dropout changed x, so W x is recomputed on the dropped input
            base_out = F.linear(dropped, layer._out_in(layer.weight))
        elif layer.bias is not None:
            base_out = result - layer.bias
        else:
            base_out = result
        return result + (ratio - 1) * base_out + ratio * layer.scaling[name] * update

    def embedding_output(self, layer, name: str, result: torch.Tensor, update: torch.Tensor) -> torch.Tensor:
        """(m/n) ⊙ (E[x] + s A[:, x]ᵀ Bᵀ)."""
        return self.ratio(layer, name) * (result + update)


def variant_for(config) -> DoraVariant | None:
    """The variant object an adapter of this LoRA config needs, or None for plain LoRA."""
    return DoraVariant() if config.use_dora else None
