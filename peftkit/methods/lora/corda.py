"""LoRA's CorDA initialisation (peft's ``init_lora_weights="corda"`` and ``preprocess_corda``).

Yang et al., 2024, "CorDA: Context-Oriented Decomposition Adaptation of Large Language Models". Each targeted
Linear's weight is decomposed in the context of the inputs it sees on the user's samples (``run_model``):

    C = mean over calls of X̂ᵀ X̂,  X̂ = X / |max X|        (X: one call's input rows)
    C′ = C + δ · mean(diag C) · I                        (δ = 0.01, doubled until ‖C′ C′⁻¹ − I‖ < 0.05)
    W C′ = U S Hᵀ,   V = C′⁻¹ H                           (so W = U S Vᵀ)

IPM (instruction-previewed mode) builds the adapter from the r largest components, KPM (knowledge-preserved mode)
from the r smallest: with s = α / r, B = U_r √(S_r / s), A = √(S_r / s) V_rᵀ, and the base keeps W − s B A.
These are peft's formulas and constants, so a model prepared by both gives the same factors (float32). The
adapter is saved as a plain LoRA one (``init_lora_weights`` true), so that no reader needs the decomposition again;
as with PiSSA, the base it belongs to is the residual one (``model.get_base_model().save_pretrained``).
``cache_file`` and ``covariance_file`` store the decomposition and the covariances with ``torch.save``, as peft does.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn
from transformers.pytorch_utils import Conv1D

from peftkit.core.errors import ConfigError
from peftkit.core.targets import plan
from peftkit.methods.config_rules import sub_config


@dataclasses.dataclass
class CordaConfig:
    """peft's CorDA settings (``LoraConfig(init_lora_weights="corda", corda_config=CordaConfig(...))``)."""

    cache_file: str | None = None
    covariance_file: str | None = None
    corda_method: str = "ipm"
    verbose: bool = False
    use_float16_for_covariance: bool = False
    prune_temporary_fields: bool = True


@dataclasses.dataclass
class CordaEigens:
    S_WC: torch.Tensor  # noqa: N815  (peft's attribute names)
    U_WC: torch.Tensor  # noqa: N815
    V_WC: torch.Tensor  # noqa: N815


def check_corda(corda_config) -> dict:
    """The CorDA settings as a dict with peft's defaults, checked."""
    values = sub_config("corda_config", corda_config, CordaConfig)
    if values["corda_method"] not in ("ipm", "kpm"):
        raise ConfigError(f"corda_config corda_method must be 'ipm' or 'kpm', got {values['corda_method']!r}")
    return values


def _targets(model: nn.Module, config) -> dict[str, nn.Module]:
    """The Linear / Conv1D modules the config adapts (planned as a plain LoRA: nothing is decomposed yet)."""
    plain = dataclasses.replace(config, init_lora_weights=True, corda_config=None)
    return {item.name: model.get_submodule(item.name) for item in plan(model, plain).modules
            if item.role == "adapt" and isinstance(model.get_submodule(item.name), (nn.Linear, Conv1D))}


def _out_in(module: nn.Module) -> torch.Tensor:
    weight = module.weight.data.float()
    return weight.T if isinstance(module, Conv1D) else weight


@torch.no_grad()
def _covariances(model: nn.Module, targets: dict[str, nn.Module], run_model: Callable[[], None] | None,
                 hooked_model: nn.Module | None, settings: dict) -> dict[str, torch.Tensor]:
    file = settings["covariance_file"]
    if file is not None and os.path.isfile(file) and os.path.getsize(file) > 0:
        return torch.load(file, map_location="cpu")
    if run_model is None:
        raise ConfigError("preprocess_corda needs run_model (a function that runs the model on your samples) unless "
                          "corda_config's cache_file or covariance_file already exists")
    hooked = hooked_model if hooked_model is not None else model
    sums: dict[str, list] = {name: [0, 0] for name in targets}

    def recorder(name: str):
        def record(module, args):
            x = args[0].detach().reshape(-1, args[0].shape[-1])
            x = x if settings["use_float16_for_covariance"] else x.float()
            x = x / torch.max(x).abs()
            if not torch.isfinite(x).all():
                raise ConfigError(f"preprocess_corda: the inputs of '{name}' hold NaN or infinite values")
            sums[name][0] = sums[name][0] + x.T @ x
            sums[name][1] += 1
        return record

    handles = [hooked.get_submodule(name).register_forward_pre_hook(recorder(name)) for name in targets]
    hooked.eval()
    try:
        run_model()
    finally:
        for handle in handles:
            handle.remove()
    missing = [name for name, (_, count) in sums.items() if count == 0]
    if missing:
        raise ConfigError(f"preprocess_corda: run_model never called '{missing[0]}' (and {len(missing) - 1} more)")
    covariances = {name: total / count for name, (total, count) in sums.items()}
    if file is not None:
        Path(file).parent.mkdir(parents=True, exist_ok=True)
        torch.save(covariances, file)
    return covariances


def _eigens(weight: torch.Tensor, covariance: torch.Tensor, rank: int, method: str) -> CordaEigens:
    covariance = covariance.float()
    identity = torch.eye(covariance.shape[0])
    damp = 0.01
    while True:
        fixed = covariance + identity * torch.mean(torch.diag(covariance)) * damp
        inverse = torch.linalg.inv(fixed)
        if torch.dist(fixed @ inverse, identity).item() < 0.05:
            break
        damp *= 2
    u, s, vh = torch.linalg.svd(weight @ fixed, full_matrices=False)
    v = (vh @ inverse).T
    kept = slice(None, rank) if method == "ipm" else slice(-rank, None)
    return CordaEigens(S_WC=s[kept].clone(), U_WC=u[:, kept].clone(), V_WC=v[:, kept].clone())


@torch.no_grad()
def preprocess_corda(model: nn.Module, lora_config, run_model: Callable[[], None] | None = None,
                     hooked_model: nn.Module | None = None) -> None:
    """Decompose each Linear ``lora_config`` targets in the context of its inputs on ``run_model``'s samples; the
    result waits on the module (``module.eigens``) for ``get_peft_model`` with ``init_lora_weights="corda"``."""
    settings = check_corda(lora_config.corda_config)
    targets = _targets(model, lora_config)
    cache = settings["cache_file"]
    if cache is not None and os.path.isfile(cache) and os.path.getsize(cache) > 0:
        saved = torch.load(cache, map_location="cpu")
        for name, module in targets.items():
            module.eigens = CordaEigens(*(saved[f"{name}.eigens.{part}"] for part in ("S_WC", "U_WC", "V_WC")))
        return
    covariances = _covariances(model, targets, run_model, hooked_model, settings)
    for name, module in targets.items():
        module.eigens = _eigens(_out_in(module), covariances[name], lora_config.rank_for(name),
                                settings["corda_method"])
    if cache is not None:
        Path(cache).parent.mkdir(parents=True, exist_ok=True)
        torch.save({f"{name}.eigens.{part}": getattr(module.eigens, part)
                    for name, module in targets.items() for part in ("S_WC", "U_WC", "V_WC")}, cache)


def check_corda_layer(base_layer: nn.Module, module_name: str, rank: int) -> None:
    """The layer was decomposed by ``preprocess_corda`` for this rank."""
    eigens = getattr(base_layer, "eigens", None)
    if eigens is None:
        raise ConfigError(f"init_lora_weights='corda': '{module_name}' has no decomposition; run "
                          f"peftkit.preprocess_corda(model, config, run_model) first")
    if eigens.S_WC.shape[0] != rank:
        raise ConfigError(f"init_lora_weights='corda': '{module_name}' was decomposed for rank "
                          f"{eigens.S_WC.shape[0]}, the config asks {rank}")


@torch.no_grad()
def corda_factors(layer, name: str) -> torch.Tensor:
    """Set the adapter's A and B from the base's decomposition; returns the residual weight W − s B A (out × in)."""
    base = layer.base
    eigens = base.eigens
    scale = layer.scaling[name]
    root = torch.sqrt(eigens.S_WC / scale)
    layer.lora_A[name].weight.copy_(eigens.V_WC.T * root[:, None])
    layer.lora_B[name].weight.copy_(eigens.U_WC * root[None, :])
    del base.eigens
    return _out_in(base) - scale * (layer.lora_B[name].weight.float() @ layer.lora_A[name].weight.float())
