"""Ways to merge task tensors (task vectors, LoRA factors) t₁ … tₙ with weights w₁ … wₙ into one.

* task arithmetic (Ilharco et al., 2023, "Editing Models with Task Arithmetic"): Σ wᵢ tᵢ; a negative
  weight negates a task.
* magnitude pruning: each tᵢ keeps its ⌊density·numel⌋ largest-magnitude entries, then Σ wᵢ tᵢ.
* TIES (Yadav et al., 2023, "TIES-Merging: Resolving Interference When Merging Models"): trim each tᵢ
  to its top-density entries, elect a sign per entry (``total``: the sign of Σ tᵢ; ``frequency``: the
  sign most tᵢ have), and average the weighted entries that agree with it (disjoint mean).
* DARE (Yu et al., 2024, "Language Models are Super Mario"): drop each entry with probability
  1 − density and rescale the rest by 1 / density; then task arithmetic (``dare_linear``) or TIES'
  election and disjoint mean (``dare_ties``).
"""

from __future__ import annotations

import torch

from peftkit.core.errors import ConfigError

SIGN_METHODS = ("total", "frequency")


def _weighted(tensors: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    return tensors * weights.to(tensors).view(-1, *([1] * (tensors.dim() - 1)))


def task_arithmetic(tensors: list[torch.Tensor], weights: torch.Tensor) -> torch.Tensor:
    return _weighted(torch.stack(tensors), weights).sum(0)


def keep_largest(tensor: torch.Tensor, density: float) -> torch.Tensor:
    """``tensor`` with all but its ⌊density·numel⌋ largest-magnitude entries set to 0."""
    keep = int(density * tensor.numel())
    mask = torch.zeros(tensor.numel(), device=tensor.device, dtype=torch.bool)
    if keep > 0:
        mask[torch.topk(tensor.abs().reshape(-1), k=keep).indices] = True
    return tensor * mask.view_as(tensor)


def drop_and_rescale(tensor: torch.Tensor, density: float) -> torch.Tensor:
    """DARE: each entry kept with probability ``density`` and divided by it."""
    keep = torch.bernoulli(torch.full_like(tensor, density))
    return tensor * keep / density


def elected_sign_mask(tensors: torch.Tensor, method: str) -> torch.Tensor:
    """Where each tᵢ agrees with the elected sign (ties go to +)."""
    if method not in SIGN_METHODS:
        raise ConfigError(f"majority_sign_method must be one of {', '.join(SIGN_METHODS)}, got {method!r}")
    signs = tensors.sign()
    strength = tensors.sum(0) if method == "total" else signs.sum(0)
    return signs == torch.where(strength >= 0, 1.0, -1.0)


def disjoint_mean(weighted: torch.Tensor, agrees: torch.Tensor) -> torch.Tensor:
    """The mean over the tᵢ that agree with the elected sign, entry by entry."""
    return (weighted * agrees).sum(0) / agrees.sum(0).clamp(min=1.0)


def magnitude_prune(tensors, weights, density: float) -> torch.Tensor:
    return task_arithmetic([keep_largest(t, density) for t in tensors], weights)


def ties(tensors, weights, density: float, sign_method: str = "total") -> torch.Tensor:
    trimmed = torch.stack([keep_largest(t, density) for t in tensors])
    return disjoint_mean(_weighted(trimmed, weights), elected_sign_mask(trimmed, sign_method))


def dare_linear(tensors, weights, density: float) -> torch.Tensor:
    return task_arithmetic([drop_and_rescale(t, density) for t in tensors], weights)


def dare_ties(tensors, weights, density: float, sign_method: str = "total") -> torch.Tensor:
    dropped = torch.stack([drop_and_rescale(t, density) for t in tensors])
    return disjoint_mean(_weighted(dropped, weights), elected_sign_mask(dropped, sign_method))


def merge_tensors(kind: str, tensors: list[torch.Tensor], weights: torch.Tensor, density: float | None,
                  sign_method: str = "total") -> torch.Tensor:
    """``kind``: linear, magnitude_prune, ties, dare_linear or dare_ties (the pruning ones need ``density``)."""
    if kind == "linear":
        return task_arithmetic(tensors, weights)
    if density is None or not 0 < density <= 1:
        raise ConfigError(f"combination '{kind}' needs a density in (0, 1], got {density!r}")
    if kind == "magnitude_prune":
        return magnitude_prune(tensors, weights, density)
    if kind == "dare_linear":
        return dare_linear(tensors, weights, density)
    if kind == "ties":
        return ties(tensors, weights, density, sign_method)
    if kind == "dare_ties":
        return dare_ties(tensors, weights, density, sign_method)
    raise ConfigError(f"unknown merge {kind!r}")
