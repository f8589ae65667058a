"""LoRA with many adapters in one batch, without a loop over the adapters (inference).

For row i of the batch with adapter a(i), the update is s_a(i) · B_a(i) A_a(i) x_i. The adapters' matrices
are stacked ([G, r, in] and [G, out, r]), gathered per row ([batch, r, in], [batch, out, r]), and the
updates of all rows are two batched matrix products, the second accumulating into the base output in
place: ``y_i += s · (x_i A_a(i)ᵀ) B_a(i)ᵀ`` (``torch.baddbmm``). Rows whose adapter the layer does not hold
(or the base model's rows) get a zero B. The number of kernels per layer does not grow with the number of
adapters — what a GPU needs — and no row is copied out of or back into the batch.

Used when gradients are off and every adapter in the batch has the same rank and the base output's dtype;
otherwise ``LoraLinear.apply_mixed`` runs each group of rows on its own.
"""

from __future__ import annotations

import torch
from torch import nn


def stacked_rows(layer, names: list[str | None], group_of_row: torch.Tensor, dtype: torch.dtype):
    """(A per row [batch, r, in], B per row [batch, out, r], the scale applied to B A) or None where
    the stacked form does not apply (ranks or dtypes differ, dropout in training mode)."""
    active = [n for n in names if n is not None]
    weights_a = [layer.lora_A[n].weight for n in active]
    if len({w.shape for w in weights_a}) != 1 or weights_a[0].dtype != dtype:
        return None
    if layer.training and any(isinstance(layer.lora_dropout[n], nn.Dropout) for n in active):
        return None
    stacked_a, stacked_b, scale = stacked_weights(layer, names, active, weights_a)
    return stacked_a.index_select(0, group_of_row), stacked_b.index_select(0, group_of_row), scale


def stacked_weights(layer, names: list[str | None], active: list[str], weights_a: list[torch.Tensor]):
    """The groups' A [G, r, in] and (scaled, zero for a group the layer lacks) B [G, out, r], and the scale
    left to apply. Kept on the layer until a weight, a scaling or the groups change (a generation's
    steps, repeated calls), so a call costs two gathers instead of stacking every adapter again."""
    weights_b = [layer.lora_B[n].weight for n in active]
    scalings = [layer.scaling[n] for n in active]
    key = (tuple(names), tuple(scalings), tuple((w.data_ptr(), w._version) for w in (*weights_a, *weights_b)))
    cached = getattr(layer, "_stacked_weights", None)
    if cached is not None and cached[0] == key:
        return cached[1]
    by_name = dict(zip(active, zip(weights_a, weights_b, scalings, strict=True)))
    if len(set(scalings)) == 1 and len(active) == len(names):
        stacked_b, scale = torch.stack(weights_b), scalings[0]
    else:
        zero = torch.zeros_like(weights_b[0])
        stacked_b = torch.stack([by_name[n][1] * by_name[n][2] if n else zero for n in names])
        scale = 1.0
    stacked_a = torch.stack([by_name[n or active[0]][0] for n in names])
    layer._stacked_weights = (key, (stacked_a, stacked_b, scale))
    return stacked_a, stacked_b, scale


def add_stacked_update(result: torch.Tensor, x: torch.Tensor, rows_a: torch.Tensor, rows_b: torch.Tensor,
                       scale: float) -> torch.Tensor:
    """``result`` (the base output, [batch, ..., out]) plus every row's own low-rank update, in place."""
    batch = result.shape[0]
    down = torch.bmm(x.reshape(batch, -1, x.shape[-1]).to(rows_a.dtype), rows_a.transpose(1, 2))
    result.view(batch, -1, result.shape[-1]).baddbmm_(down, rows_b.transpose(1, 2), alpha=scale)
    return result
