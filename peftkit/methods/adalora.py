"""AdaLoRA: SVD-shaped LoRA whose rank budget is pruned to the most important triplets.

Zhang et al., 2023, "AdaLoRA: Adaptive Budget Allocation for Parameter-Efficient Fine-Tuning" (ICLR).
Each target module holds ΔW = (α / (r₀ + 1e-5)) · B diag(E) A with r₀ = ``init_r`` triplets
(aᵢ, eᵢ, bᵢ): E starts at 0, A and B ~ N(0, 0.02) (``methods/lora/svd.py``).

Budget allocation (``AdaLoraAllocator.step(t)``, after each optimizer step, before the gradients are
cleared — ``recipes/rank_allocation.py`` does it inside transformers' Trainer):

* per element w of every A, E, B: I = |w · ∂L/∂w|, Ī ← β₁Ī + (1−β₁)I, Ū ← β₂Ū + (1−β₂)|I − Ī|, score Ī·Ū;
* triplet i's score: score(eᵢ) + mean_j score(A_ij) + mean_j score(B_ji);
* budget b(t): all r₀ triplets per module until ``tinit``; then the cubic schedule
  b = (b₀ − b_T)(1 − (t − t_i)/(T − t_f − t_i))³ + b_T down to b_T = ``target_r`` × modules, masking
  (eᵢ ← 0) every triplet whose score is at or below the (b₀ − b)-th smallest, every ``deltaT`` steps;
  from T − ``tfinal`` on the last mask stays fixed.
* the orthogonality regulariser ‖AAᵀ − I‖_F + ‖BᵀB − I‖_F (``objectives/orthogonality.py``).

Checkpoints are peft's: ``rank_pattern`` maps ``<module>.lora_E`` to the kept-triplet mask and the file
holds only the kept triplets; r₀ stays the divisor (as in peft, which reads and writes these files).
"""

from __future__ import annotations

import torch
from torch import nn
from transformers.pytorch_utils import Conv1D

from peftkit.core.config import TargetedConfig, config_dataclass
from peftkit.core.errors import ConfigError
from peftkit.core.registry import Method, register_method
from peftkit.methods.lora import LORA_DEFAULT_TARGETS, LoraConfig, linear_shape
from peftkit.methods.lora.svd import SvdLowRankLinear, check_allocation_settings, require_int


@config_dataclass
class AdaLoraConfig(TargetedConfig):
    """AdaLoRA settings with peft's names and defaults (``total_step`` may be left for the allocator)."""

    peft_type = "ADALORA"
    default_targets = LORA_DEFAULT_TARGETS
    target_r: int = 8
    init_r: int = 12
    tinit: int = 0
    tfinal: int = 0
    deltaT: int = 1  # noqa: N815  (peft's name)
    beta1: float = 0.85
    beta2: float = 0.85
    orth_reg_weight: float = 0.5
    total_step: int | None = None
    rank_pattern: dict[str, list[bool]] | None = None
    lora_alpha: float = 8
    lora_dropout: float = 0.0
    fan_in_fan_out: bool = False  # peft's flag for Conv1D (GPT-2); the orientation is read from the module type

    field_aliases = {"rank": "init_r", "r": "init_r", "alpha": "lora_alpha", "targets": "target_modules"}
    # peft writes its LoRA fields too; at these values they change nothing for AdaLoRA (r is unused there)
    foreign_defaults = {**LoraConfig.foreign_defaults, "r": 8, "init_lora_weights": True, "bias": "none"}

    def validate(self) -> None:
        super().validate()
        for name in ("target_r", "init_r", "deltaT"):
            require_int(name, getattr(self, name), minimum=1)
        for name in ("tinit", "tfinal"):
            require_int(name, getattr(self, name), minimum=0)
        if self.target_r > self.init_r:
            raise ConfigError(f"target_r ({self.target_r}) must not exceed init_r ({self.init_r})")
        check_allocation_settings(self)
        if self.total_step is not None:
            require_int("total_step", self.total_step, minimum=1)
            if self.tinit >= self.total_step - self.tfinal:
                raise ConfigError(f"tinit ({self.tinit}) must be below total_step − tfinal "
                                  f"({self.total_step} − {self.tfinal}): no steps are left to prune in")
        for key, mask in (self.rank_pattern or {}).items():
            if not isinstance(mask, list) or len(mask) != self.init_r:
                raise ConfigError(f"rank_pattern['{key}'] must be a list of {self.init_r} booleans")

    def kept_rank(self, module_name: str) -> int:
        """Triplets a module holds: the saved mask's count, or init_r."""
        mask = (self.rank_pattern or {}).get(f"{module_name}.lora_E")
        return self.init_r if mask is None else sum(bool(m) for m in mask)


class AdaLoraLinear(SvdLowRankLinear):
    """AdaLoRA on a Linear / Conv1D; after pruning, ``kept[name]`` is the triplet mask saved files keep."""

    adapter_attributes = ("lora_A", "lora_E", "lora_B", "lora_dropout")

    def __init__(self, base_layer: nn.Module) -> None:
        super().__init__(base_layer)
        self.lora_A = nn.ParameterDict()
        self.lora_E = nn.ParameterDict()
        self.lora_B = nn.ParameterDict()
        self.ranknum: dict[str, int] = {}
        self.kept: dict[str, torch.Tensor] = {}

    @classmethod
    def expected_shapes(cls, base_layer: nn.Module, config: AdaLoraConfig, module_name: str) -> dict[str, tuple]:
        r = config.kept_rank(module_name)
        in_features, out_features = linear_shape(base_layer)
        return {"lora_A": (r, in_features), "lora_E": (r, 1), "lora_B": (out_features, r)}

    def add_adapter(self, name: str, config: AdaLoraConfig, module_name: str) -> None:
        r = config.kept_rank(module_name)
        options = self._new_tensor_options()
        self.lora_A[name] = nn.Parameter(torch.randn(r, self.in_features, **options) * 0.02)
        self.lora_E[name] = nn.Parameter(torch.zeros(r, 1, **options))
        self.lora_B[name] = nn.Parameter(torch.randn(self.out_features, r, **options) * 0.02)
        self._add_dropout(name, config.lora_dropout)
        self.lora_alpha[name] = config.lora_alpha
        self.ranknum[name] = config.init_r

    def remove_adapter(self, name: str) -> None:
        super().remove_adapter(name)
        self.ranknum.pop(name, None)
        self.kept.pop(name, None)

    def factors(self, name: str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        return self.lora_A[name], self.lora_E[name], self.lora_B[name]

    def rank_divisor(self, name: str) -> float:
        return float(self.ranknum[name])

    def saved_state_dict(self, name: str) -> dict[str, torch.Tensor]:
        """The kept triplets only, as peft writes them."""
        tensors = self.adapter_state_dict(name)
        kept = self.kept.get(name)
        if kept is None or bool(kept.all()):
            return tensors
        return {"lora_A": tensors["lora_A"][kept], "lora_E": tensors["lora_E"][kept],
                "lora_B": tensors["lora_B"][:, kept]}


class AdaLoraAllocator:
    """AdaLoRA's budget schedule and triplet pruning for one adapter (see the module docstring).

    Call ``step(t)`` after ``optimizer.step()`` and before the gradients are cleared, t counting optimizer
    steps from 0 (as peft's ``update_and_allocate``). ``total_step`` defaults to the config's.
    """

    def __init__(self, model, adapter_name: str = "default", total_step: int | None = None) -> None:
        from peftkit.core.peft_model import module_key  # here: peft_model imports the registry of methods

        config = model.peft_config.get(adapter_name)
        if not isinstance(config, AdaLoraConfig):
            raise ConfigError(f"adapter '{adapter_name}' is not an AdaLoRA adapter")
        total_step = total_step or config.total_step
        if total_step is None:
            raise ConfigError("AdaLoRA needs total_step (the number of optimizer steps) to schedule its budget")
        config.total_step = total_step
        config.validate()
        self.config, self.name = config, adapter_name
        self.layers = {module_key(path): layer for path, layer in model.adapter_layers()
                       if isinstance(layer, AdaLoraLinear) and layer.has_adapter(adapter_name)}
        for key, layer in self.layers.items():
            if layer.lora_E[adapter_name].shape[0] != config.init_r:
                raise ConfigError(f"{key} holds a pruned AdaLoRA adapter; budget allocation starts from init_r")
        self.initial_budget = config.init_r * len(self.layers)
        self.target_budget = config.target_r * len(self.layers)
        self.sensitivity: dict[torch.Tensor, torch.Tensor] = {}
        self.uncertainty: dict[torch.Tensor, torch.Tensor] = {}

    def budget(self, step: int) -> tuple[int, bool]:
        """(rank budget at ``step``, whether to mask now)."""
        c = self.config
        if step <= c.tinit:
            return self.initial_budget, False
        if step > c.total_step - c.tfinal:
            return self.target_budget, True
        remaining = 1 - (step - c.tinit) / (c.total_step - c.tfinal - c.tinit)
        budget = int((self.initial_budget - self.target_budget) * remaining ** 3 + self.target_budget)
        return budget, step % c.deltaT == 0

    def _parameters(self):
        for layer in self.layers.values():
            yield from (layer.lora_A[self.name], layer.lora_E[self.name], layer.lora_B[self.name])

    @torch.no_grad()
    def update_importance(self) -> None:
        beta1, beta2 = self.config.beta1, self.config.beta2
        for p in self._parameters():
            if p.grad is None:
                continue
            importance = (p * p.grad).abs()
            mean = self.sensitivity.get(p, torch.zeros_like(p)) * beta1 + (1 - beta1) * importance
            self.sensitivity[p] = mean
            self.uncertainty[p] = (self.uncertainty.get(p, torch.zeros_like(p)) * beta2
                                   + (1 - beta2) * (importance - mean).abs())

    def _score(self, p: torch.Tensor) -> torch.Tensor:
        if p not in self.sensitivity:
            return torch.zeros_like(p)
        return self.sensitivity[p] * self.uncertainty[p]

    def triplet_scores(self) -> dict[str, torch.Tensor]:
        """score(eᵢ) + mean_j score(A_ij) + mean_j score(B_ji), per module."""
        n = self.name
        return {key: (self._score(layer.lora_E[n]).view(-1) + self._score(layer.lora_A[n]).mean(dim=1)
                      + self._score(layer.lora_B[n]).mean(dim=0))
                for key, layer in self.layers.items()}

    @torch.no_grad()
    def mask_to_budget(self, budget: int) -> None:
        """Zero the E of every triplet at or below the (b₀ − budget)-th smallest score; record the masks."""
        scores = self.triplet_scores()
        pruned = self.initial_budget - budget
        if pruned <= 0:
            return
        threshold = torch.kthvalue(torch.cat(list(scores.values())), k=pruned).values
        pattern = {}
        for key, layer in self.layers.items():
            kept = scores[key] > threshold
            layer.lora_E[self.name].masked_fill_(~kept.view(-1, 1), 0.0)
            layer.kept[self.name] = kept
            pattern[f"{key}.lora_E"] = kept.tolist()
        self.config.rank_pattern = pattern

    @torch.no_grad()
    def apply_masks(self) -> None:
        for layer in self.layers.values():
            if self.name in layer.kept:
                layer.lora_E[self.name].masked_fill_(~layer.kept[self.name].view(-1, 1), 0.0)

    def step(self, step: int) -> None:
        final = self.config.total_step - self.config.tfinal
        if step < final:
            self.update_importance()
            budget, mask_now = self.budget(step)
            if mask_now:
                self.mask_to_budget(budget)
        elif step == final:
            self.mask_to_budget(self.target_budget)
            self.sensitivity.clear()
            self.uncertainty.clear()
        else:
            self.apply_masks()

    def ranks(self) -> dict[str, int]:
        """Unmasked triplets per module."""
        return {key: int(layer.kept[self.name].sum()) if self.name in layer.kept else self.config.init_r
                for key, layer in self.layers.items()}


register_method(Method(name="adalora", config_cls=AdaLoraConfig,
                       layers={nn.Linear: AdaLoraLinear, Conv1D: AdaLoraLinear},
                       description="AdaLoRA: SVD-shaped LoRA whose rank budget moves to the most important layers",
                       learning_rate=1e-2,
                       train_defaults={"init_r": 12, "target_r": 8, "lora_alpha": 32, "target_modules": "all-linear"}))
