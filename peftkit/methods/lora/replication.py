"""LoRA's ``layer_replication`` (as peft's): a deeper model built from the layers it has, base weights shared.

A layer map ``[[0, 4], [2, 5]]`` over layers 0 … 4 gives the stack 0 1 2 3 2 3 4: the ranges ``[start, end)`` laid
end to end, as mergekit's pass-through merges write them. Each copy shares every parameter with the layer it repeats
(memory stays close to the original model's), keeps its own buffers and gets its own adapter, so the repeated layers
can specialise while the shared base weights stay frozen. The model's config counts the new layers
(``num_hidden_layers``, and ``layer_types`` where the config lists one per layer) and each attention module's
``layer_idx`` is its new position, so a key / value cache keeps one slot per layer.

The stack is the model's one list of identical blocks (``model.layers``, ``encoder.layer``, ``transformer.h`` …);
a model with two (an encoder and a decoder) is refused, as peft refuses it. A replicated model cannot be merged: a
shared weight would take the update of every layer that repeats it.
"""

from __future__ import annotations

import copy
from collections.abc import Callable

from torch import nn

from peftkit.core.errors import ConfigError


def check_layer_map(layer_map) -> None:
    """A list of ``[start, end)`` pairs of layer indices, each non-empty."""
    pairs = layer_map if isinstance(layer_map, (list, tuple)) else None
    if not pairs or not all(isinstance(pair, (list, tuple)) and len(pair) == 2
                            and all(isinstance(i, int) and not isinstance(i, bool) for i in pair) for pair in pairs):
        raise ConfigError(f"layer_replication must be a list of [start, end) layer ranges, e.g. [[0, 4], [2, 5]], "
                          f"got {layer_map!r}")
    for start, end in pairs:
        if not 0 <= start < end:
            raise ConfigError(f"layer_replication range [{start}, {end}) is empty or negative")


def layer_stack(model: nn.Module) -> tuple[str, nn.ModuleList]:
    """The path and list of the model's transformer blocks: the one outermost ``nn.ModuleList`` of same-class
    modules."""
    lists = [(name, module) for name, module in model.named_modules()
             if isinstance(module, nn.ModuleList) and len(module) and len({type(item) for item in module}) == 1]
    outer = [(name, module) for name, module in lists
             if not any(name.startswith(f"{other}.") for other, _ in lists)]
    if len(outer) != 1:
        found = ", ".join(name for name, _ in outer) or "none"
        raise ConfigError(f"layer_replication needs a model with one stack of layers (Llama, BERT, GPT-2 style); "
                          f"stacks found: {found}")
    return outer[0]


def replicate_layers(model: nn.Module, layer_map: list[list[int]]) -> Callable[[], None] | None:
    """Replace the model's layer stack by the one ``layer_map`` describes; returns what puts the original back
    (None when the model already has this very map, as with a second adapter of the same config)."""
    path, layers = layer_stack(model)
    layer_map = [list(pair) for pair in layer_map]
    applied = getattr(layers, "layer_map", None)
    if applied is not None:
        if applied == layer_map:
            return None
        raise ConfigError(f"the layers are already replicated as {applied}; layer_replication={layer_map} would "
                          f"replicate them again (load the base model afresh for another map)")
    for start, end in layer_map:
        if end > len(layers):
            raise ConfigError(f"layer_replication range [{start}, {end}) is beyond the model's {len(layers)} layers "
                              f"({path})")
    order = [index for start, end in layer_map for index in range(start, end)]
    config = getattr(model, "config", None)
    stack = nn.ModuleList(_sharing_copy(layers[index], config) for index in order)
    stack.layer_map = layer_map
    for position, layer in enumerate(stack):
        for module in layer.modules():
            if hasattr(module, "layer_idx"):
                module.layer_idx = position
    undo_config = _count_layers(config, order)
    parent, _, attribute = path.rpartition(".")
    owner = model.get_submodule(parent) if parent else model
    setattr(owner, attribute, stack)

    def undo() -> None:
        setattr(owner, attribute, layers)
        undo_config()

    return undo


def _sharing_copy(layer: nn.Module, config) -> nn.Module:
    """A deep copy of ``layer`` holding the very same parameters (and pointing at the same model config)."""
    shared = {id(parameter): parameter for parameter in layer.parameters()}
    if config is not None:
        shared[id(config)] = config
    return copy.deepcopy(layer, memo=shared)


def _count_layers(config, order: list[int]) -> Callable[[], None]:
    """Set the config's per-layer counts to the new stack; returns what restores them."""
    if config is None:
        return lambda: None
    before = {name: getattr(config, name) for name in ("num_hidden_layers", "layer_types") if hasattr(config, name)}
    if "num_hidden_layers" in before:
        config.num_hidden_layers = len(order)
    layer_types = before.get("layer_types")
    if isinstance(layer_types, (list, tuple)) and len(layer_types) > max(order):
        config.layer_types = [layer_types[index] for index in order]

    def restore() -> None:
        for name, value in before.items():
            setattr(config, name, value)

    return restore
