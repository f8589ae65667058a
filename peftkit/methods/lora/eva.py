"""LoRA's EVA initialisation (peft's ``init_lora_weights="eva"`` and ``initialize_lora_eva_weights``).

Paischer et al., 2024, "One Initialization to Rule them All: Fine-tuning via Explained Variance Adaptation". Each
adapted Linear's A starts as the principal directions of the inputs it sees on a few batches of the user's data, and
the rank budget (the sum of the configured ranks) goes to the directions that explain the most variance:

    Cov(x) = V Λ Vᵀ, λ₁ ≥ λ₂ ≥ …          over the tokens whose label is not ``label_mask_value`` (``use_label_mask``,
                                           when the batch has labels), else those of the attention mask
    A_ℓ = V_{k_ℓ}ᵀ (whiten: each row over √s_i, s_i = √(λ_i (n − 1)) the data's singular value),   B_ℓ = 0

k_ℓ: of every layer's first round(ρ r_ℓ) explained-variance ratios λ_i / Σλ, the Σ r_ℓ largest are kept, and k_ℓ
counts layer ℓ's (0: the layer gets no adapter). With ``adjust_scaling_factors``, α_ℓ = α · k_ℓ / r_ℓ, so α_ℓ / k_ℓ
stays α / r. The new ranks and alphas go to ``rank_pattern`` / ``alpha_pattern`` and the layers left out leave
``target_modules``, so the saved config reads the same in peft. B = 0: the model starts unchanged.

The covariance is accumulated exactly, batch by batch; after each batch the leading directions are compared with the
previous batch's, and the pass stops once every layer's first round(ρ r) directions have |cosine| ≥ τ (or the data
end). peft estimates the same directions with an incremental PCA, so the two agree to the estimation error, not
bit for bit. Only Linear layers take part, as in peft.
"""

from __future__ import annotations

import copy
import dataclasses
from collections.abc import Callable, Iterable

import torch
from torch import nn
from tqdm.auto import tqdm

from peftkit.core.errors import ConfigError
from peftkit.methods.config_rules import sub_config


@dataclasses.dataclass
class EvaConfig:
    """peft's EVA settings (``LoraConfig(init_lora_weights="eva", eva_config=EvaConfig(...))``)."""

    rho: float = 2.0
    tau: float = 0.99
    use_label_mask: bool = True
    label_mask_value: int = -100
    whiten: bool = False
    adjust_scaling_factors: bool = True


def check_eva(eva_config) -> dict:
    """The EVA settings as a dict with peft's defaults filled in, checked."""
    values = sub_config("eva_config", eva_config, EvaConfig)
    if not isinstance(values["rho"], (int, float)) or values["rho"] < 1:
        raise ConfigError(f"eva_config rho must be ≥ 1, got {values['rho']!r}")
    if not isinstance(values["tau"], (int, float)) or not 0 <= values["tau"] <= 1:
        raise ConfigError(f"eva_config tau must be between 0 and 1, got {values['tau']!r}")
    return values


class _InputCovariance:
    """Σx, Σxxᵀ and n of one layer's input rows, and the leading directions they give."""

    def __init__(self, width: int, components: int) -> None:
        self.sum = torch.zeros(width, dtype=torch.float64)
        self.outer = torch.zeros(width, width, dtype=torch.float64)
        self.count = 0
        self.components = components
        self.previous: torch.Tensor | None = None
        self.converged = False

    def add(self, rows: torch.Tensor) -> None:
        rows = rows.detach().to(torch.float64).cpu()
        self.sum += rows.sum(0)
        self.outer += rows.T @ rows
        self.count += rows.shape[0]

    def decomposition(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(eigenvalues λ, descending; the eigenvectors as rows) of the covariance of the rows seen."""
        mean = self.sum / self.count
        covariance = (self.outer - self.count * torch.outer(mean, mean)) / max(self.count - 1, 1)
        values, vectors = torch.linalg.eigh(covariance)
        return values.flip(0).clamp_min(0), vectors.flip(1).T

    def check(self, tau: float) -> None:
        if self.count <= self.components:
            return
        directions = self.decomposition()[1][:self.components]
        if self.previous is not None:
            self.converged = bool((directions * self.previous).sum(1).abs().min() >= tau)
        self.previous = directions


def _rows(x: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    rows = x.reshape(-1, x.shape[-1])
    if mask is not None and mask.numel() == rows.shape[0]:
        rows = rows[mask.reshape(-1).bool()]
    return rows


def _token_mask(inputs: dict, settings: dict) -> torch.Tensor | None:
    labels = inputs.get("labels")
    if settings["use_label_mask"] and isinstance(labels, torch.Tensor) and labels.dim() == 2:
        return labels != settings["label_mask_value"]
    return inputs.get("attention_mask")


@torch.no_grad()
def get_eva_state_dict(model, dataloader: Iterable, adapter_name: str = "default",
                       forward_fn: Callable | None = None, show_progress_bar: bool = True) -> dict[str, torch.Tensor]:
    """Per adapted Linear (its path in the base model): the rows of A that EVA gives it (0 rows: no adapter)."""
    config = model.peft_config[adapter_name]
    settings = check_eva(config.eva_config)
    layers = {path: layer for path, layer in model.adapter_layers()
              if adapter_name in getattr(layer, "lora_A", {}) and type(layer.base) is nn.Linear}
    if not layers:
        raise ConfigError(f"adapter '{adapter_name}' has no LoRA layer on an nn.Linear for EVA to initialise")
    ranks = {path: layer.lora_A[adapter_name].weight.shape[0] for path, layer in layers.items()}
    stats = {path: _InputCovariance(layer.in_features, round(ranks[path] * settings["rho"]))
             for path, layer in layers.items()}
    mask: dict[str, torch.Tensor | None] = {}

    def recorder(path: str):
        def record(module, args, kwargs):
            stats[path].add(_rows(module.module_input(args, kwargs), mask.get("tokens")))
        return record

    handles = [layer.register_forward_pre_hook(recorder(path), with_kwargs=True) for path, layer in layers.items()]
    training = model.training
    model.eval()
    seen = 0
    try:
        for inputs in tqdm(dataloader, desc="EVA", disable=not show_progress_bar, leave=False):
            mask["tokens"] = _token_mask(inputs, settings)
            if forward_fn is None:
                model(**inputs)
            else:
                forward_fn(model, inputs)
            seen += 1
            for item in stats.values():
                if not item.converged:
                    item.check(settings["tau"])
            if all(item.converged for item in stats.values()):
                break
    finally:
        for handle in handles:
            handle.remove()
        model.train(training)
    if seen == 0:
        raise ConfigError("initialize_lora_eva_weights: the dataloader gave no batch")
    return _components(stats, ranks, settings)


def _components(stats: dict[str, _InputCovariance], ranks: dict[str, int], settings: dict) -> dict[str, torch.Tensor]:
    decompositions = {path: item.decomposition() for path, item in stats.items()}
    ratios = [(float(value / values.sum().clamp_min(1e-30)), path)
              for path, (values, _) in decompositions.items()
              for value in values[:stats[path].components]]
    kept = sorted(ratios, key=lambda item: item[0], reverse=True)[:sum(ranks.values())]
    counts = {path: sum(1 for _, owner in kept if owner == path) for path in stats}
    result = {}
    for path, (values, vectors) in decompositions.items():
        rows = vectors[:counts[path]]
        if settings["whiten"]:
            singular = (values[:counts[path]] * (stats[path].count - 1)).sqrt()
            rows = rows / singular.sqrt().clamp_min(1e-12)[:, None]
        result[path] = rows.float()
    return result


def initialize_lora_eva_weights(model, dataloader: Iterable | None = None,
                                eva_state_dict: dict[str, torch.Tensor] | None = None,
                                forward_fn: Callable | None = None, adapter_name: str = "default",
                                show_progress_bar: bool = True) -> None:
    """EVA: A from the principal directions of each layer's inputs on ``dataloader`` (batches the model takes as
    ``model(**batch)``, or through ``forward_fn(model, batch)``), the rank budget redistributed; peft's function."""
    if adapter_name not in model.peft_config:
        raise ConfigError(f"adapter '{adapter_name}' does not exist; adapters: {', '.join(model.peft_config)}")
    config = model.peft_config[adapter_name]
    if getattr(config, "init_lora_weights", None) != "eva":
        raise ConfigError(f"adapter '{adapter_name}' was not made with init_lora_weights='eva'")
    if eva_state_dict is None:
        if dataloader is None:
            raise ConfigError("initialize_lora_eva_weights needs a dataloader (or an eva_state_dict)")
        eva_state_dict = get_eva_state_dict(model, dataloader, adapter_name, forward_fn, show_progress_bar)
    settings = check_eva(config.eva_config)
    new_config = copy.deepcopy(config)
    rank_pattern, alpha_pattern = dict(config.rank_pattern), dict(config.alpha_pattern)
    for path, rows in eva_state_dict.items():
        r, alpha, k = config.rank_for(path), config.alpha_for(path), rows.shape[0]
        if k != config.r:
            rank_pattern[path] = k
        if settings["adjust_scaling_factors"] and k not in (0, r):
            alpha = alpha * k / r
        if alpha != config.lora_alpha:
            alpha_pattern[path] = alpha
    kept = [path for path, rows in eva_state_dict.items() if rows.shape[0] > 0]
    if not kept:
        raise ConfigError("EVA gave every layer rank 0; give more data or a larger r")
    others = [path for path, layer in model.adapter_layers() if path not in eva_state_dict
              and adapter_name in getattr(layer, "lora_A", {})]  # not Linear: they keep the default init
    new_config.target_modules = kept + others
    new_config.rank_pattern = {p: k for p, k in rank_pattern.items() if p in new_config.target_modules}
    new_config.alpha_pattern = {p: a for p, a in alpha_pattern.items() if p in new_config.target_modules}
    active = model.active_adapter
    model.delete_adapter(adapter_name)
    model.add_adapter(adapter_name, new_config)
    layers = dict(model.adapter_layers())
    with torch.no_grad():
        for path in kept:
            weight = layers[path].lora_A[adapter_name].weight
            weight.copy_(eva_state_dict[path].to(weight.dtype))
    if active == adapter_name:
        model.set_adapter(adapter_name)
