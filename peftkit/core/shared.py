"""``SharedTensors``: tensors one adapter keeps once for the whole model, used by all of its layers.

Some methods share state across the modules they adapt: frozen random projections sized for the largest
module (VeRA), a trained bank of vectors (VB-LoRA), a trained vector several modules read. A method with such
state names a subclass as its registration's ``shared``. For each adapter ``PeftModel`` builds one, from the
config and the modules the plan adapts (before their layers exist), holds it in ``shared_tensors[name]`` and
hands it to every layer of the adapter as ``layer.shared[name]`` before ``add_adapter``.

Files hold its ``state_dict()`` (parameters and persistent buffers) under ``base_model.<key>``, where peft
writes a tuner's model-level tensors. Parameters train with the adapter; buffers never do. ``layer_shapes``
names tensors a layer saves under its own keys that are sized by the whole model (copies of the projections),
so that a checkpoint can be checked before anything changes.
"""

from __future__ import annotations

import torch
from torch import nn

from peftkit.core.config import PeftConfig

SHARED_KEY_PREFIX = "base_model."


class SharedTensors(nn.Module):
    def __init__(self, config: PeftConfig, modules: dict[str, nn.Module]) -> None:
        """``modules``: the base modules the adapter wraps, by name, in the model's order."""
        super().__init__()

    @staticmethod
    def placement(modules: dict[str, nn.Module]) -> dict:
        """Device and floating dtype of the adapted modules' weights, for new tensors (float32 for quantised ones)."""
        weight = next(iter(modules.values())).weight
        dtype = weight.dtype if weight.dtype.is_floating_point else torch.float32
        return {"device": weight.device, "dtype": dtype}

    def layer_shapes(self, module_name: str) -> dict[str, tuple]:
        """Shapes of tensors the layer on ``module_name`` saves that depend on the other modules (none by default)."""
        return {}
