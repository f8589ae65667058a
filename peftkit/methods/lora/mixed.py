"""LoRA with many adapters in one batch, without a loop over the adapters (inference).

For row i of the batch with adapter a(i), the update is s_a(i) · B_a(i) A_a(i) x_i. The adapters' matrices
are stacked ([G, r, in] and [G, out, r]; a group the layer lacks, or the base model's rows, gets a zero B)
and the update takes one of two forms, neither of which grows in kernels with the number of adapters:

- gathered: A and B gathered per row ([batch, r, in], [batch, out, r]) and two batched matrix products,
  the second accumulating into the base output in place: ``y_i += s · (x_i A_a(i)ᵀ) B_a(i)ᵀ``
  (``torch.baddbmm``). The fewest operations: the form for CPUs, where arithmetic is the cost.
- concatenated: every adapter's A in one product, ``d = x [A_1; …; A_G]ᵀ`` ([batch, len, G·r]), the columns
  of other adapters than the row's zeroed, and one product with ``[B_1 … B_G]`` accumulated into the base
  output (``addmm``): G times the arithmetic of the first product, but two plain matrix products — meant
  for GPUs, where plain products are expected to beat batched ones of this shape and the extra arithmetic
  is small (on a 2-core CPU it costs 8 % more than the gathered form; ``benchmarks/mixed_batch.py``).

``FORM`` picks one ("auto": concatenated on CUDA, gathered elsewhere). Used when gradients are off and every
adapter in the batch has the same rank and the base output's dtype; otherwise ``LoraLinear.apply_mixed``
runs each group of rows on its own.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

FORM = "auto"  # "gathered", "concatenated" or "auto" (see the module docstring)


def stacked_update(layer, names: list[str | None], mixed, result: torch.Tensor, x: torch.Tensor) -> torch.Tensor | None:
    """``result`` (the base output, [batch, ..., out]) plus every row's own low-rank update, in place; None
    where the stacked forms do not apply (ranks or dtypes differ, dropout in training mode)."""
    active = [n for n in names if n is not None]
    weights_a = [layer.lora_A[n].weight for n in active]
    if len({w.shape for w in weights_a}) != 1 or weights_a[0].dtype != result.dtype:
        return None
    if layer.training and any(isinstance(layer.lora_dropout[n], nn.Dropout) for n in active):
        return None
    stacked = stacked_weights(layer, names, active, weights_a)
    form = FORM if FORM != "auto" else ("concatenated" if result.is_cuda else "gathered")
    if form == "concatenated":
        return add_concatenated_update(result, x, stacked, mixed.own_columns(stacked.a.shape[1], result.dtype))
    return add_gathered_update(result, x, stacked, mixed.group_of_row)


class StackedWeights:
    """The groups' A [G, r, in], (scaled, zero for a group the layer lacks) B [G, out, r] and the scale
    left to apply; B side by side [out, G·r] is made when first asked for."""

    def __init__(self, stacked_a: torch.Tensor, stacked_b: torch.Tensor, scale: float) -> None:
        self.a, self.b, self.scale = stacked_a, stacked_b, scale
        self._b_side_by_side = None

    def b_side_by_side(self) -> torch.Tensor:
        if self._b_side_by_side is None:
            groups, out, rank = self.b.shape
            self._b_side_by_side = self.b.permute(1, 0, 2).reshape(out, groups * rank)
        return self._b_side_by_side


def stacked_weights(layer, names: list[str | None], active: list[str], weights_a: list[torch.Tensor]):
    """The groups' stacked weights, kept on the layer until a weight, a scaling or the groups change (a
    generation's steps, repeated calls), so a call does not stack every adapter again."""
    weights_b = [layer.lora_B[n].weight for n in active]
    scalings = [layer.scaling[n] for n in active]
    versions = tuple((w.data_ptr(), version(w)) for w in (*weights_a, *weights_b))
    key = (tuple(names), tuple(scalings), versions) if all(v is not None for _, v in versions) else None
    cached = getattr(layer, "_stacked_weights", None)
    if key is not None and cached is not None and cached[0] == key:
        return cached[1]
    by_name = dict(zip(active, zip(weights_a, weights_b, scalings, strict=True)))
    if len(set(scalings)) == 1 and len(active) == len(names):
        stacked_b, scale = torch.stack(weights_b), scalings[0]
    else:
        zero = torch.zeros_like(weights_b[0])
        stacked_b = torch.stack([by_name[n][1] * by_name[n][2] if n else zero for n in names])
        scale = 1.0
    stacked = StackedWeights(torch.stack([by_name[n or active[0]][0] for n in names]), stacked_b, scale)
    layer._stacked_weights = (key, stacked)
    return stacked


def version(tensor: torch.Tensor) -> int | None:
    """How many times the tensor was changed in place; None for an inference tensor, which keeps no count
    (its stacks are then made afresh each call)."""
    try:
        return tensor._version
    except RuntimeError:
        return None


def add_gathered_update(result: torch.Tensor, x: torch.Tensor, stacked: StackedWeights,
                        group_of_row: torch.Tensor) -> torch.Tensor:
    """The gathered form: per-row A and B, two batched products."""
    rows_a, rows_b = stacked.a.index_select(0, group_of_row), stacked.b.index_select(0, group_of_row)
    batch = result.shape[0]
    down = torch.bmm(x.reshape(batch, -1, x.shape[-1]).to(rows_a.dtype), rows_a.transpose(1, 2))
    result.view(batch, -1, result.shape[-1]).baddbmm_(down, rows_b.transpose(1, 2), alpha=stacked.scale)
    return result


def add_concatenated_update(result: torch.Tensor, x: torch.Tensor, stacked: StackedWeights,
                            own_columns: torch.Tensor) -> torch.Tensor:
    """The concatenated form: all adapters' A in one product, other adapters' columns zeroed per row
    (``own_columns``: [batch, 1, G·r], 1 where a column belongs to the row's adapter)."""
    groups, rank, width = stacked.a.shape
    batch = result.shape[0]
    down = F.linear(x.reshape(batch, -1, width).to(stacked.a.dtype), stacked.a.reshape(groups * rank, width))
    down.mul_(own_columns)
    result.view(-1, result.shape[-1]).addmm_(down.view(-1, groups * rank), stacked.b_side_by_side().t(),
                                             alpha=stacked.scale)
    return result
