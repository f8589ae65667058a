"""DEFT: a density loss that makes feed-forward activations sparse.

Runwal et al., 2024, "From PEFT to DEFT: Parameter Efficient Finetuning for Reducing Activation Density
in Transformers". For the feed-forward activation a of layer ℓ (BERT: the intermediate GELU's output;
Llama-style: act(gate)), example b, its non-padding tokens t and units u:

    ρ_ℓ,b = mean_{t, u} a²/(a² + ε),   ε = 1e-7           (a smooth count of non-zeros: ≈ 1 unless |a| ≲ √ε)
    L = L_task + w · mean_ℓ mean_b ρ_ℓ,b                    (w = 1 by default)

The routed experts of a mixture-of-experts layer (DeepSeek-V3, Qwen-MoE) see only the tokens routed to them, as a
2-D activation (one row per token and expert it went to × units; one call per expert or one for all, as the model
computes them): each such call's term is the mean over its rows, ρ = mean_{rows, u} a²/(a² + ε).

Choices the paper leaves open: padding tokens are left out of the mean (the attention mask the model is
called with); an example's ρ is its own token mean, so long and short examples weigh the same.

``DensityLoss(model)`` hooks the activations; after each training forward, ``loss()`` returns the term
to add (a plain loop, or ``ObjectiveTrainer`` for transformers' Trainer). ``activation_density`` is the
report: per layer, the fraction of activations with |a| > τ over non-padding tokens.
"""

from __future__ import annotations

import fnmatch

import torch
from torch import nn

from peftkit.core.errors import ConfigError
from peftkit.core.mechanics.lean import is_activation_module, kept_form, rebuilt

# The report's τ: |a| ≤ √ε (ε = 1e-7) is where the loss counts an activation as zero (a²/(a² + ε) ≤ 1/2).
DENSITY_THRESHOLD = 1e-7 ** 0.5
FEED_FORWARD_PARTS = ("intermediate", "mlp", "ffn", "feed_forward", "DenseReluDense")


def feed_forward_activations(model: nn.Module, patterns: list[str] | None = None) -> dict[str, nn.Module]:
    """The activation modules of the feed-forward blocks (or those whose names match ``patterns``)."""
    found = {}
    for name, module in model.named_modules():
        if not is_activation_module(module):
            continue
        if patterns is None:
            if any(part in name.split(".") for part in FEED_FORWARD_PARTS):
                found[name] = module
        elif any(fnmatch.fnmatchcase(name, p) or name.endswith("." + p) or name == p for p in patterns):
            found[name] = module
    if not found:
        raise ConfigError("no feed-forward activation module found"
                          + (f" matching {patterns}" if patterns else "; name them with modules=[...]"))
    return found


class ExampleDensity(torch.autograd.Function):
    """ρ_b = Σ_{t,u} m_bt · a²/(a² + ε) / (U · Σ_t m_bt) per example b, keeping only a (or its source under
    lean training). ∂ρ_b/∂a = m_bt · 2aε/(a² + ε)² / (U · Σ_t m_bt)."""

    @staticmethod
    def forward(ctx, activation: torch.Tensor, token_mask: torch.Tensor, epsilon: float):
        dtype = torch.promote_types(activation.dtype, torch.float32)  # at least float32 for the sums
        squared = activation.to(dtype).square()
        ratio = squared / (squared + epsilon)
        mask = token_mask.to(dtype)
        weights = mask / (mask.sum(1, keepdim=True).clamp_min(1) * activation.shape[-1])
        kept, ctx.rebuild = kept_form(activation)
        ctx.save_for_backward(weights, *kept)
        ctx.epsilon = epsilon
        return (ratio.sum(-1) * weights).sum(1)

    @staticmethod
    def backward(ctx, grad_out):
        weights, *kept = ctx.saved_tensors
        a = rebuilt(kept, ctx.rebuild)
        wide = a.to(weights.dtype)
        grad = 2 * wide * ctx.epsilon / (wide.square() + ctx.epsilon).square()
        grad = grad * (weights * grad_out[:, None])[..., None]
        return grad.to(a.dtype), None, None


class DensityLoss:
    """w · mean over hooked layers and examples of ρ; ``loss()`` after each training forward."""

    def __init__(self, model: nn.Module, weight: float = 1.0, epsilon: float = 1e-7,
                 modules: list[str] | None = None) -> None:
        if not isinstance(weight, (int, float)) or weight < 0:
            raise ConfigError(f"density loss weight must be a number >= 0, got {weight!r}")
        if not isinstance(epsilon, (int, float)) or epsilon <= 0:
            raise ConfigError(f"density loss epsilon must be > 0, got {epsilon!r}")
        self.weight, self.epsilon = float(weight), float(epsilon)
        self.activations = feed_forward_activations(model, modules)
        self._token_mask: torch.Tensor | None = None
        self._terms: list[torch.Tensor] = []
        self._handles = [model.register_forward_pre_hook(self._remember_mask, with_kwargs=True)]
        self._handles += [m.register_forward_hook(self._add_term) for m in self.activations.values()]

    def _remember_mask(self, module, args, kwargs) -> None:
        self._token_mask = kwargs.get("attention_mask")

    def _add_term(self, module, args, output) -> None:
        if not module.training or not torch.is_grad_enabled() or not output.requires_grad:
            return
        if output.dim() == 2:  # routed experts' activation: one row per token routed, one term
            output = output[None]
        mask = self._token_mask
        if mask is None or mask.shape != output.shape[:2]:
            mask = torch.ones(output.shape[:2], device=output.device)
        self._terms.append(ExampleDensity.apply(output, mask, self.epsilon).mean())

    def loss(self) -> torch.Tensor:
        """The term for the last forward pass (0 when nothing was hooked), and forget it."""
        terms, self._terms = self._terms, []
        if not terms:
            return torch.zeros(())
        return self.weight * torch.stack(terms).mean()  # each term: one layer's (or expert's) mean over examples

    def remove(self) -> None:
        for handle in self._handles:
            handle.remove()


@torch.no_grad()
def activation_density(model: nn.Module, batches, threshold: float = 0.0,
                       modules: list[str] | None = None) -> dict[str, float]:
    """Per hooked layer, the fraction of activations with |a| > ``threshold`` over non-padding tokens of
    ``batches`` (dicts of model inputs); the model runs in eval mode."""
    activations = feed_forward_activations(model, modules)
    counts = {name: [0, 0] for name in activations}
    mask_holder: dict[str, torch.Tensor | None] = {}

    def counter(name):
        def count(module, args, output):
            mask = mask_holder.get("mask")
            if output.dim() == 2:  # routed experts' activation: every row a token routed
                output = output[None]
            if mask is None or mask.shape != output.shape[:2]:
                mask = torch.ones(output.shape[:2], dtype=torch.bool, device=output.device)
            selected = output[mask.bool()]
            counts[name][0] += int((selected.abs() > threshold).sum())
            counts[name][1] += selected.numel()
        return count

    handles = [m.register_forward_hook(counter(n)) for n, m in activations.items()]
    was_training = model.training
    model.eval()
    try:
        for batch in batches:
            mask_holder["mask"] = batch.get("attention_mask")
            model(**batch)
    finally:
        for handle in handles:
            handle.remove()
        model.train(was_training)
    return {name: nonzero / max(total, 1) for name, (nonzero, total) in counts.items()}
