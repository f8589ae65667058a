"""Adapter arithmetic for LoRA: a new adapter from weighted existing ones (peft's ``add_weighted_adapter``).

With ΔWᵢ = sᵢ·Bᵢ·Aᵢ (sᵢ the scaling of adapter i) and weights wᵢ (negative ones negate a task, Ilharco
et al., 2023), the new adapter has scaling 1 (``lora_alpha = r``) and

* ``linear``: A = Σ sign(wᵢsᵢ)·√|wᵢsᵢ|·Aᵢ, B = Σ √|wᵢsᵢ|·Bᵢ — the factors combined separately (equal
  ranks; exact for one adapter, e.g. weights (1, 0) give back the first, or −1 its negation);
* ``cat``: A = [wᵢsᵢ·Aᵢ] stacked, B = [Bᵢ] side by side: exactly Σ wᵢ·ΔWᵢ, rank Σ rᵢ;
* ``svd``: Σ wᵢ·ΔWᵢ truncated to ``svd_rank`` (default the largest rᵢ) by SVD: B = U·S, A = Vᵀ;
* ``ties``, ``dare_linear``, ``dare_ties``, ``magnitude_prune`` (``peftkit/core/task_merging.py``):
  those merges of the factors as ``linear`` does, and with a ``_svd`` suffix of the ΔWᵢ as ``svd`` does;
  ``density`` is the share of entries kept.
"""

from __future__ import annotations

import dataclasses
import math

import torch

from peftkit.core.errors import ConfigError
from peftkit.core.task_merging import merge_tensors
from peftkit.methods.lora.layers import LoraConfig, LoraEmbedding, LoraLinear, _LoraLayer

FACTOR_MERGES = ("linear", "ties", "dare_linear", "dare_ties", "magnitude_prune")
COMBINATIONS = (*FACTOR_MERGES, "cat", "svd", *(f"{m}_svd" for m in FACTOR_MERGES[1:]))


def _check(model, adapters: list[str], weights: list[float], combination: str, svd_rank: int | None) -> int:
    """The new adapter's rank, after checking the request."""
    if combination not in COMBINATIONS:
        raise ConfigError(f"combination_type must be one of {', '.join(COMBINATIONS)}, got {combination!r}")
    if not adapters or len(adapters) != len(weights):
        raise ConfigError(f"give one weight per adapter: {len(adapters)} adapters, {len(weights)} weights")
    for name in adapters:
        config = model.peft_config.get(name)
        if config is None:
            raise ConfigError(f"adapter '{name}' does not exist (adapters: {', '.join(model.peft_config)})")
        if not isinstance(config, LoraConfig):
            raise ConfigError(f"adapter '{name}' is {config.peft_type}; weighted combination is defined for LoRA")
        if config.use_dora:
            raise ConfigError(f"adapter '{name}' is DoRA: its magnitude vector has no weighted combination")
    others = sorted({type(layer.base).__name__ for _, layer in model.adapter_layers() if isinstance(layer, _LoraLayer)
                     and not isinstance(layer, (LoraLinear, LoraEmbedding)) and set(adapters) & set(layer.scaling)})
    if others:
        raise ConfigError(f"weighted combination is defined for LoRA on Linear, Conv1D and Embedding, not {others}")
    ranks = [max([config.r, *config.rank_pattern.values()]) for config in (model.peft_config[n] for n in adapters)]
    if combination in FACTOR_MERGES:
        if len(set(ranks)) > 1:
            raise ConfigError(f"combination '{combination}' needs adapters of one rank, got {ranks}; use cat or svd")
        return ranks[0]
    if combination == "cat":
        return sum(ranks)
    return svd_rank or max(ranks)


def _union_of_targets(configs: list[LoraConfig]) -> str | list[str]:
    """Every module the adapters target: the names joined, or the patterns as one alternative."""
    targets = [config.target_modules for config in configs]
    if all(isinstance(t, str) for t in targets):
        return "|".join(f"({t})" for t in dict.fromkeys(targets))
    if any(isinstance(t, str) for t in targets):
        raise ConfigError("cannot combine adapters whose target_modules mix a pattern and a list of names")
    return list(dict.fromkeys(name for t in targets for name in t))


def _factors(layer: _LoraLayer, name: str) -> tuple[torch.Tensor, torch.Tensor]:
    """(A, B) of ``name`` in ``layer`` as parameters: A is r × in, B out × r."""
    if isinstance(layer, LoraEmbedding):
        return layer.lora_embedding_A[name], layer.lora_embedding_B[name]
    return layer.lora_A[name].weight, layer.lora_B[name].weight


def _combined_factors(layer: _LoraLayer, adapters, weights, combination: str, rank: int, density, sign_method):
    present = [(name, weight) for name, weight in zip(adapters, weights, strict=True) if name in layer.scaling]
    if combination == "cat":
        a = torch.cat([weight * layer.scaling[name] * _factors(layer, name)[0] for name, weight in present])
        b = torch.cat([_factors(layer, name)[1] for name, _ in present], dim=1)
        return a, b
    if combination in FACTOR_MERGES:
        scaled = [weight * layer.scaling[name] for name, weight in present]
        a_weights = torch.tensor([math.copysign(math.sqrt(abs(w)), w) for w in scaled])
        b_weights = torch.tensor([math.sqrt(abs(w)) for w in scaled])
        a = merge_tensors(combination, [_factors(layer, n)[0] for n, _ in present], a_weights, density, sign_method)
        b = merge_tensors(combination, [_factors(layer, n)[1] for n, _ in present], b_weights, density, sign_method)
        return a, b
    merge = "linear" if combination == "svd" else combination.removesuffix("_svd")
    deltas = [layer.scaling[name] * layer._product(name).float() for name, _ in present]
    delta = merge_tensors(merge, deltas, torch.tensor([w for _, w in present]), density, sign_method)
    u, s, vh = torch.linalg.svd(delta, full_matrices=False)
    return vh[:rank], u[:, :rank] * s[:rank]


@torch.no_grad()
def add_weighted_adapter(model, adapters: list[str], weights: list[float], adapter_name: str,
                         combination_type: str = "svd", svd_rank: int | None = None, density: float | None = None,
                         majority_sign_method: str = "total") -> None:
    """Add ``adapter_name`` to the ``PeftModel`` ``model``, combined from ``adapters``; see the module docstring.
    Nothing changes when the request is invalid."""
    combination = "linear" if len(adapters) == 1 and combination_type in FACTOR_MERGES else combination_type
    rank = _check(model, adapters, weights, combination, svd_rank)
    model._check_new_name(adapter_name)
    configs = [model.peft_config[name] for name in adapters]
    config = dataclasses.replace(configs[0], r=rank, lora_alpha=rank, rank_pattern={}, alpha_pattern={},
                                 target_modules=_union_of_targets(configs), exclude_modules=None,
                                 layers_to_transform=None, layers_pattern=None, init_lora_weights=True)
    layers = [layer for _, layer in model.adapter_layers() if isinstance(layer, (LoraLinear, LoraEmbedding))
              and any(name in layer.scaling for name in adapters)]
    combined = [_combined_factors(layer, adapters, weights, combination, rank, density, majority_sign_method)
                for layer in layers]  # computed before anything is added, so an error leaves the model as it was
    model.add_adapter(adapter_name, config)
    for layer, (a, b) in zip(layers, combined, strict=True):
        new_a, new_b = _factors(layer, adapter_name)
        new_a.zero_()
        new_b.zero_()
        new_a[: a.shape[0]] = a.to(new_a.dtype)
        new_b[:, : b.shape[1]] = b.to(new_b.dtype)
