"""Lean training: the same forward and backward maths, fewer and smaller tensors kept for backward.

``enable_lean_training(model)`` changes how a (frozen) transformers model trains, not what it computes:

* **Recomputable outputs.** The output y = f(x) of a norm or activation module (LayerNorm, RMSNorm,
  GELU, SiLU, …) is tagged with (f, x). An adapter layer that must keep its input for its own weight
  gradient (LoRA's ∂A = ∂lowᵀ x) keeps x instead of y and recomputes y = f(x) in backward, where x is
  kept anyway by f's own backward. For BERT's feed-forward block this drops a tensor four times the
  hidden size per layer, and one hidden-size tensor per LayerNorm.
* **Gated MLPs** (Llama, Mistral, Qwen2, Gemma: ``down(act(gate(x)) ⊙ up(x))``) keep gate and up only;
  act(gate) and the product are recomputed in backward (``lean_ops.GatedProduct``). Such a module's
  class is swapped for a subclass while lean training is on.
* **Dropout** modules (``nn.Dropout``) keep a one-byte mask instead of CPU dropout's float32 copy, and
  draw it about four times faster (``lean_ops.MaskedDropout``).
* **Attention with dropout** (training, sdpa models) runs ``lean_ops.DroppedAttention``, which keeps the
  probabilities and a one-byte mask instead of probabilities, dropped probabilities and a float mask.

Outputs and gradients equal the plain path's (tests), except that dropout draws its masks from a
different stream of the same generator: the same distribution, not the same masks.
``disable_lean_training`` undoes all of it. Under autocast nothing is tagged (a recomputation in
backward would run outside the autocast region).

Under ``torch.compile`` the autograd functions (fused LoRA, dropout, attention with dropout) are traced as
they are, without graph breaks. The recompute tags (Python attributes on tensors) and the gated-MLP path
(whose backward calls ``torch.autograd.grad``) step aside; the compiler's partitioner (AOTAutograd's
min-cut) makes that kind of choice itself, recomputing cheap norms and activations in backward.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial
from typing import Callable

import torch
from torch import nn
from transformers import activations
from transformers.integrations.sdpa_attention import sdpa_attention_forward
from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, sdpa_mask
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

from peftkit.core.mechanics.lean_ops import DroppedAttention, GatedProduct, MaskedDropout, gated_product

LEAN_ATTENTION = "peftkit_lean"
_ACTIVATION_TYPES = (nn.GELU, *{entry[0] if isinstance(entry, tuple) else entry
                                for entry in activations.ACT2CLS.values()})
_RECOMPUTE_TAG = "_peftkit_recompute"


@dataclass(frozen=True)
class Recompute:
    """How to rebuild a tensor in backward: ``function(*sources)``, valid while all keep their versions."""

    function: Callable[..., torch.Tensor]
    sources: tuple[torch.Tensor, ...]
    source_versions: tuple[int, ...]
    output_version: int


def eager() -> bool:
    """Whether the recompute tags and the gated-MLP path run: not while ``torch.compile`` traces (see the module
    docstring)."""
    return not torch.compiler.is_compiling()


def tag_recomputable(output: torch.Tensor, function: Callable[..., torch.Tensor], *sources: torch.Tensor) -> None:
    """Record that ``output`` equals ``function(*sources)``, for adapter layers that would keep it."""
    if eager() and output.requires_grad and torch.is_grad_enabled() and not (
        torch.is_autocast_enabled("cpu") or torch.is_autocast_enabled("cuda")
    ):
        recipe = Recompute(function, sources, tuple(t._version for t in sources), output._version)
        setattr(output, _RECOMPUTE_TAG, recipe)


def recompute_recipe(tensor: torch.Tensor) -> Recompute | None:
    """The tensor's recipe if it was tagged and neither it nor its sources changed in place since."""
    recipe = getattr(tensor, _RECOMPUTE_TAG, None)
    if recipe is None or recipe.output_version != tensor._version:
        return None
    if any(t._version != v for t, v in zip(recipe.sources, recipe.source_versions, strict=True)):
        return None
    return recipe


def kept_form(tensor: torch.Tensor) -> tuple[tuple[torch.Tensor, ...], Callable | None]:
    """What a custom autograd function should save for ``tensor``: the sources and how to rebuild it from
    them when it is a tagged recomputable output, else the tensor itself (and None)."""
    recipe = recompute_recipe(tensor)
    return ((tensor,), None) if recipe is None else (recipe.sources, recipe.function)


def rebuilt(kept: tuple[torch.Tensor, ...], rebuild: Callable | None) -> torch.Tensor:
    """The tensor saved through ``kept_form``, in backward."""
    return kept[0] if rebuild is None else rebuild(*kept)


def is_activation_module(module: nn.Module) -> bool:
    return isinstance(module, _ACTIVATION_TYPES)


def is_recomputable_module(module: nn.Module) -> bool:
    """Norms and activations: deterministic, cheap, one input."""
    return (is_activation_module(module) or isinstance(module, nn.LayerNorm)
            or type(module).__name__.endswith(("LayerNorm", "RMSNorm")))


def _tag_output(module: nn.Module, args: tuple, kwargs: dict, output) -> None:
    if not kwargs and len(args) == 1 and isinstance(args[0], torch.Tensor) and isinstance(output, torch.Tensor):
        tag_recomputable(output, module.forward, args[0])


class LeanDropout(nn.Dropout):
    """``nn.Dropout`` through ``MaskedDropout`` while training."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p == 0:
            return x
        if self.p == 1 or self.inplace:
            return super().forward(x)
        return MaskedDropout.apply(x, self.p)


class LeanGatedMLP:
    """Mixed into a Llama-style MLP's class (``down(act(gate(x)) ⊙ up(x))``): the product keeps only gate
    and up (``GatedProduct``) and is tagged recomputable from them, so the down projection's adapter does
    not keep it either. The plain path runs while something else hooks the activation module."""

    plain_class: type

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gate, up = self.gate_proj(x), self.up_proj(x)
        watched = any(hook is not _tag_output for hook in self.act_fn._forward_hooks.values())
        if watched or not eager() or not torch.is_grad_enabled() or not (gate.requires_grad or up.requires_grad):
            return self.down_proj(self.act_fn(gate) * up)  # e.g. a density loss needs act(gate) itself
        hidden = GatedProduct.apply(gate, up, self.act_fn)
        tag_recomputable(hidden, partial(gated_product, self.act_fn), gate, up)
        return self.down_proj(hidden)


_LEAN_CLASSES: dict[type, type] = {}


def is_gated_mlp(module: nn.Module) -> bool:
    return type(module).__name__.endswith("MLP") and all(
        hasattr(module, name) for name in ("gate_proj", "up_proj", "down_proj", "act_fn"))


def _lean_class(plain: type) -> type:
    if plain not in _LEAN_CLASSES:
        _LEAN_CLASSES[plain] = type(f"Lean{plain.__name__}", (LeanGatedMLP, plain), {"plain_class": plain})
    return _LEAN_CLASSES[plain]


def lean_attention_forward(module: nn.Module, query, key, value, attention_mask, dropout: float = 0.0,
                           scaling: float | None = None, is_causal: bool | None = None, **kwargs):
    """transformers' attention interface: ``DroppedAttention`` where it applies, else sdpa."""
    causal = is_causal if is_causal is not None else getattr(module, "is_causal", False)
    causal_without_mask = attention_mask is None and causal
    if (
        not module.training or dropout == 0 or causal_without_mask or getattr(module, "num_key_value_groups", 1) > 1
        or any(kwargs.get(option) is not None for option in ("position_bias", "softcap"))
        or kwargs.get("output_attentions")
    ):
        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling,
                                      is_causal=is_causal, **kwargs)
    scale = scaling if scaling is not None else query.shape[-1] ** -0.5
    out = DroppedAttention.apply(query, key, value, attention_mask, scale, dropout)
    return out.transpose(1, 2).contiguous(), None


ALL_ATTENTION_FUNCTIONS.register(LEAN_ATTENTION, lean_attention_forward)
ALL_MASK_ATTENTION_FUNCTIONS.register(LEAN_ATTENTION, sdpa_mask)


def _configs(model: nn.Module):
    """Every distinct transformers config reachable from the model's modules."""
    seen = {}
    for module in model.modules():
        config = getattr(module, "config", None)
        if config is not None and hasattr(config, "_attn_implementation"):
            seen[id(config)] = config
    return seen.values()


def _replace_dropouts(model: nn.Module, old_type: type, new_type: type) -> None:
    for parent in model.modules():
        for name, child in list(parent.named_children()):
            if type(child) is old_type:
                replacement = new_type(child.p, child.inplace)
                replacement.train(child.training)
                setattr(parent, name, replacement)


def enable_lean_training(model: nn.Module) -> None:
    """Switch ``model`` to lean training (idempotent); see the module docstring."""
    for module in model.modules():
        if is_recomputable_module(module) and _tag_output not in module._forward_hooks.values():
            module.register_forward_hook(_tag_output, with_kwargs=True)
        if is_gated_mlp(module) and not isinstance(module, LeanGatedMLP):
            module.__class__ = _lean_class(type(module))
    _replace_dropouts(model, nn.Dropout, LeanDropout)
    for config in _configs(model):
        if config._attn_implementation == "sdpa":
            config._attn_implementation = LEAN_ATTENTION


def disable_lean_training(model: nn.Module) -> None:
    """Undo ``enable_lean_training``."""
    for module in model.modules():
        for key in [k for k, hook in module._forward_hooks.items() if hook is _tag_output]:
            del module._forward_hooks[key]
            module._forward_hooks_with_kwargs.pop(key, None)
        if isinstance(module, LeanGatedMLP):
            module.__class__ = module.plain_class
    _replace_dropouts(model, LeanDropout, nn.Dropout)
    for config in _configs(model):
        if config._attn_implementation == LEAN_ATTENTION:
            config._attn_implementation = "sdpa"
