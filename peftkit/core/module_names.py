"""Naming a model's modules: the target patterns' matching rule and the output heads that "all-linear" leaves
out. A leaf module (nothing of peftkit's below it), so both target planning and NF4 quantisation use it."""

from __future__ import annotations

import re

from torch import nn

ALL_LINEAR = "all-linear"
ALL = "all"  # every module the method can wrap, except the output head
_HEAD_ATTRIBUTES = ("lm_head", "classifier", "score", "qa_outputs")


def unwrapped(module: nn.Module) -> nn.Module:
    """The model's own module under any adapter layers wrapped around it (each keeps it as ``base_layer``)."""
    while isinstance(getattr(module, "base_layer", None), nn.Module):
        module = module.base_layer
    return module


def output_heads(model: nn.Module) -> set[str]:
    """Names of the modules holding the model's output layer (its output embeddings, or a task head)."""
    heads = set()
    get_output = getattr(model, "get_output_embeddings", None)
    output = get_output() if callable(get_output) else None
    for name, module in model.named_modules():
        if (output is not None and unwrapped(module) is output) or name in _HEAD_ATTRIBUTES:
            heads.add(name)
    return heads


def name_matches(name: str, pattern: list[str] | str) -> bool:
    """List: exact name or dotted suffix. String: regex full match."""
    if isinstance(pattern, str):
        return re.fullmatch(pattern, name) is not None
    return any(name == p or name.endswith("." + p) for p in pattern)
