"""Many adapters in one batch: each row of the batch names its own adapter (``adapter_names=[...]``).

``PeftModel.forward(..., adapter_names=names)`` and ``generate(..., adapter_names=names)`` (peft's API;
``"__base__"`` for the model without adapters) group the rows by adapter once per call, as contiguous
slices where the rows of an adapter are contiguous and index tensors otherwise, and set a
``MixedBatch`` on every adapter layer for the call. A LoRA layer then computes the base output once for
the whole batch and adds every row's own low-rank update (``LoraLinear.apply_mixed``; without
gradients in two batched products over the rows, ``methods/lora/mixed.py``): the extra work is each row's
products with its own adapter, not a pass per adapter. Any other layer runs
each group's rows through its adapter (``apply_adapters([name], x[rows])``, with the block's other per-row
inputs, such as an attention mask, cut to the same rows) and puts the outputs back in order — right for every
method that acts on each row on its own. Prompt-learning adapters change the
input length, so they cannot take part.
"""

from __future__ import annotations

import torch

from peftkit.core.errors import ConfigError
from peftkit.core.layer import AdapterLayer

BASE_MODEL = "__base__"  # the row goes through the model without adapters


def row_groups(names: list[str], device: torch.device) -> list[tuple[str, slice | torch.Tensor]]:
    """(adapter, its rows) in order of first appearance; rows a slice when contiguous."""
    positions: dict[str, list[int]] = {}
    for row, name in enumerate(names):
        positions.setdefault(name, []).append(row)
    groups = []
    for name, rows in positions.items():
        if rows[-1] - rows[0] + 1 == len(rows):
            groups.append((name, slice(rows[0], rows[-1] + 1)))
        else:
            groups.append((name, torch.tensor(rows, device=device)))
    return groups


def holds(layer, name: str) -> bool:
    """Whether the layer, or an adapter layer nested inside it, holds the adapter."""
    while isinstance(layer, AdapterLayer):
        if layer.has_adapter(name):
            return True
        layer = layer.base_layer
    return False


def take(tensor: torch.Tensor, rows: slice | torch.Tensor) -> torch.Tensor:
    return tensor[rows] if isinstance(rows, slice) else tensor.index_select(0, rows)


def put(result: torch.Tensor, rows: slice | torch.Tensor, values: torch.Tensor, add: bool = False) -> torch.Tensor:
    """Write (or add) ``values`` into ``result``'s ``rows``; returns ``result``."""
    if isinstance(rows, slice):
        if add:
            result[rows] += values
        else:
            result[rows] = values
        return result
    return result.index_add_(0, rows, values) if add else result.index_copy_(0, rows, values)


class MixedBatch:
    """The layers' composition during a mixed-adapter call."""

    kind = "mixed_batch"

    def __init__(self, names: list[str], device: torch.device) -> None:
        self.batch = len(names)
        self.groups = row_groups(names, device)
        self.names = tuple(name for name, _ in self.groups if name != BASE_MODEL)
        position = {name: index for index, (name, _) in enumerate(self.groups)}
        self.group_of_row = torch.tensor([position[name] for name in names], device=device)
        self._own_columns: dict[tuple, torch.Tensor] = {}

    def own_columns(self, rank: int, dtype: torch.dtype) -> torch.Tensor:
        """[batch, 1, groups·rank]: 1 where a column of the groups' side-by-side rank-``rank`` factors
        belongs to the row's group, else 0 (made once per call, shared by the layers)."""
        key = (rank, dtype)
        if key not in self._own_columns:
            groups = torch.arange(len(self.groups), device=self.group_of_row.device)
            own = self.group_of_row[:, None] == groups[None, :]
            self._own_columns[key] = own.repeat_interleave(rank, dim=1).to(dtype)[:, None, :]
        return self._own_columns[key]

    def _rows_of(self, value, rows):
        """A per-row input of a wrapped block (an attention mask of shape [batch, ...]) cut to ``rows``; anything
        else (a mask broadcast over the batch, position tables, flags) as it is."""
        if isinstance(value, torch.Tensor) and value.dim() > 0 and value.shape[0] == self.batch:
            return take(value, rows)
        return value

    def run(self, layer, args: tuple, kwargs: dict):
        x = layer.module_input(args, kwargs)
        if x.shape[0] != self.batch:
            raise ConfigError(f"adapter_names has {self.batch} entries, but the batch has {x.shape[0]} rows")
        groups = [(name if name != BASE_MODEL and holds(layer, name) else None, rows) for name, rows in self.groups]
        if all(name is None for name, _ in groups):
            return layer.apply_adapters([], *args, **kwargs)
        mixed = getattr(layer, "apply_mixed", None)
        if mixed is not None:
            output = mixed(self, groups, *args, **kwargs)
            if output is not None:
                return output
        outputs = []
        captured = getattr(layer, "block_input", None)  # another module's input, read for this pass (VL-PET)
        try:
            for name, rows in groups:
                own_args = [self._rows_of(value, rows) for value in args]
                own_kwargs = {key: self._rows_of(value, rows) for key, value in kwargs.items()}
                if captured is not None:
                    layer.block_input = self._rows_of(captured, rows)
                outputs.append((rows, layer.apply_adapters([name] if name else [], *own_args, **own_kwargs)))
        finally:
            if captured is not None:
                layer.block_input = captured
        return self._joined(outputs)

    def _joined(self, outputs: list):
        """The groups' outputs in row order: tensors row by row, tuples (a block's outputs) element by element,
        anything else (None) as the first group gave it."""
        first = outputs[0][1]
        if isinstance(first, torch.Tensor):
            result = first.new_empty((self.batch, *first.shape[1:]))
            for rows, output in outputs:
                put(result, rows, output)
            return result
        if isinstance(first, tuple):
            return tuple(self._joined([(rows, output[i]) for rows, output in outputs]) for i in range(len(first)))
        return first
