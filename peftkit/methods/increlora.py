"""IncreLoRA: LoRA whose rank grows where the training signal says it matters.

Zhang et al., 2023, "IncreLoRA: Incremental Parameter Allocation Method for Parameter-Efficient
Fine-tuning". Each target module's update is a growing sum of rank-1 components (aᵢ, eᵢ, bᵢ)
(``methods/lora/svd.py``):

    ΔW = (α / r_t) Σᵢ bᵢ eᵢ aᵢ,     r_t = the module's number of active components

* It starts with ``init_r`` active components, a, b ~ N(0, 0.02) and e = 0.
* Importance of a module, from each training backward pass (G = ∂L/∂ΔW = Σ_tokens g ⊗ x, with g the
  gradient at the update's output and x its input): S = Σ|ΔW ⊙ G| / √(out · in); smoothed as
  Ī ← β₁Ī + (1−β₁)S, Ū ← β₂Ū + (1−β₂)|S − Ī|; score Ī·Ū.
* ``IncreLoraAllocator.step(t)`` (t = optimizer steps done): at t = ``init_warmup`` and every
  ``incre_interval`` steps after, the ``top_h`` highest-scoring modules get one more component, until the
  total reaches ``target_rank`` × modules (never beyond). ``top_h=None`` (default) picks the smallest
  number that fills the budget by 80 % of the training steps; scoring stops once the budget is full.
* Advance learning (``advance_learning``): each module also carries one reserve component whose a, b train
  while e stays at 1e-5 (a constant, so files need not hold it); on allocation the reserve's e becomes a
  trained parameter (starting at 1e-5) and a new reserve is added. Without it, a new component starts like
  the first (e = 0).
* The parameters an allocation adds join the optimizer as a new group whose learning rate warms up again
  from 0 over ``new_param_warmup`` steps, times the main schedule (transformers' LambdaLR schedules are
  extended; without a scheduler the allocator sets it).
* The orthogonality regulariser on A and B (``objectives/orthogonality.py``), weight ``orth_reg_weight``.

Choices the paper leaves open: one component per chosen module per allocation; with gradient
accumulation S adds up the micro-batches' scores; the reserve is included in ΔW and in S.
Files hold ``lora_A.i`` (1 × in), ``lora_E.i`` (1 × 1, active components only), ``lora_B.i`` (out × 1);
``rank_pattern`` gives each module's active count.
"""

from __future__ import annotations

import math
from dataclasses import field

import torch
from torch import nn
from transformers.pytorch_utils import Conv1D

from peftkit.core.config import TargetedConfig, config_dataclass
from peftkit.core.errors import ConfigError
from peftkit.core.registry import Method, register_method
from peftkit.methods.lora import LORA_DEFAULT_TARGETS, linear_shape
from peftkit.methods.lora.svd import SvdLowRankLinear, check_allocation_settings, require_int

RESERVE_E = 1e-5
INIT_STD = 0.02


@config_dataclass
class IncreLoraConfig(TargetedConfig):
    peft_type = "INCRELORA"
    default_targets = LORA_DEFAULT_TARGETS
    target_rank: int = 8
    init_r: int = 1
    init_warmup: int = 100
    incre_interval: int = 20
    top_h: int | None = None
    beta1: float = 0.85
    beta2: float = 0.85
    advance_learning: bool = True
    new_param_warmup: int = 50
    orth_reg_weight: float = 0.1
    lora_alpha: float = 16
    lora_dropout: float = 0.0
    rank_pattern: dict[str, int] = field(default_factory=dict)

    field_aliases = {"rank": "target_rank", "r": "target_rank", "alpha": "lora_alpha", "targets": "target_modules"}

    def validate(self) -> None:
        super().validate()
        for name in ("target_rank", "init_r", "incre_interval"):
            require_int(name, getattr(self, name), minimum=1)
        if self.top_h is not None:
            require_int("top_h", self.top_h, minimum=1)
        for name in ("init_warmup", "new_param_warmup"):
            require_int(name, getattr(self, name), minimum=0)
        if self.init_r > self.target_rank:
            raise ConfigError(f"init_r ({self.init_r}) must not exceed target_rank ({self.target_rank})")
        check_allocation_settings(self)
        for key, rank in self.rank_pattern.items():
            require_int(f"rank_pattern['{key}']", rank, minimum=1)

    def active_rank(self, module_name: str) -> int:
        return self.rank_pattern.get(module_name, self.init_r)


class IncreLoraLinear(SvdLowRankLinear):
    """IncreLoRA on a Linear / Conv1D: one parameter per component and factor, so growth adds parameters."""

    adapter_attributes = ("lora_A", "lora_E", "lora_B", "lora_dropout")

    def __init__(self, base_layer: nn.Module) -> None:
        super().__init__(base_layer)
        self.lora_A = nn.ModuleDict()
        self.lora_E = nn.ModuleDict()
        self.lora_B = nn.ModuleDict()
        self.reserve: dict[str, bool] = {}
        self.scoring = True  # off once the allocator has nothing left to allocate
        self.importance: dict[str, torch.Tensor] = {}  # S summed over the backward passes since the last read

    @classmethod
    def expected_shapes(cls, base_layer: nn.Module, config: IncreLoraConfig, module_name: str) -> dict[str, tuple]:
        r = config.active_rank(module_name)
        vectors = r + int(config.advance_learning)
        in_features, out_features = linear_shape(base_layer)
        return {**{f"lora_A.{i}": (1, in_features) for i in range(vectors)},
                **{f"lora_E.{i}": (1, 1) for i in range(r)},
                **{f"lora_B.{i}": (out_features, 1) for i in range(vectors)}}

    def add_adapter(self, name: str, config: IncreLoraConfig, module_name: str) -> None:
        self.lora_A[name], self.lora_E[name], self.lora_B[name] = (nn.ParameterList() for _ in range(3))
        self.reserve[name] = config.advance_learning
        for _ in range(config.active_rank(module_name)):
            self._append_vectors(name)
            self.lora_E[name].append(nn.Parameter(torch.zeros(1, 1, **self._new_tensor_options())))
        if config.advance_learning:
            self._append_vectors(name)
        self._add_dropout(name, config.lora_dropout)
        self.lora_alpha[name] = config.lora_alpha

    def _append_vectors(self, name: str) -> list[nn.Parameter]:
        options = self._new_tensor_options()
        a = nn.Parameter(torch.randn(1, self.in_features, **options) * INIT_STD)
        b = nn.Parameter(torch.randn(self.out_features, 1, **options) * INIT_STD)
        self.lora_A[name].append(a)
        self.lora_B[name].append(b)
        return [a, b]

    def remove_adapter(self, name: str) -> None:
        super().remove_adapter(name)
        self.reserve.pop(name, None)
        self.importance.pop(name, None)

    def active_rank(self, name: str) -> int:
        return len(self.lora_E[name])

    def rank_divisor(self, name: str) -> float:
        return float(self.active_rank(name))

    def factors(self, name: str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        lora_a = torch.cat(list(self.lora_A[name]))
        e = list(self.lora_E[name])
        if self.reserve[name]:
            e.append(torch.full((1, 1), RESERVE_E, device=lora_a.device, dtype=lora_a.dtype))
        return lora_a, torch.cat(e), torch.cat(list(self.lora_B[name]), dim=1)

    def grow(self, name: str) -> list[nn.Parameter]:
        """One more active component; returns the new parameters (for a new optimizer group)."""
        options = self._new_tensor_options()
        if self.reserve[name]:  # the reserve's e becomes trained, and a new reserve takes its place
            e = nn.Parameter(torch.full((1, 1), RESERVE_E, **options))
            self.lora_E[name].append(e)
            return [e, *self._append_vectors(name)]
        new = self._append_vectors(name)
        e = nn.Parameter(torch.zeros(1, 1, **options))
        self.lora_E[name].append(e)
        return [*new, e]

    def observe(self, name: str, dropped_input: torch.Tensor, update: torch.Tensor) -> None:
        if self.scoring and self.training and update.requires_grad:
            update.register_hook(lambda grad: self._score(name, dropped_input, grad))

    @torch.no_grad()
    def _score(self, name: str, x: torch.Tensor, grad: torch.Tensor) -> None:
        """S = Σ|ΔW ⊙ ∂L/∂ΔW| / √numel with ∂L/∂ΔW = gᵀx over all tokens (ΔW in out × in layout)."""
        gradient = grad.reshape(-1, grad.shape[-1]).T.float() @ x.reshape(-1, x.shape[-1]).float()
        delta = self.delta_weight(name).float()
        delta = delta.T if self.transposed else delta
        score = (delta * gradient).abs().sum() / math.sqrt(delta.numel())
        self.importance[name] = self.importance[name] + score if name in self.importance else score


class IncreLoraAllocator:
    """IncreLoRA's importance tracking and rank growth for one adapter (see the module docstring).

    Call ``step(t)`` once per optimizer step, after ``optimizer.step()`` and before ``scheduler.step()``,
    t counting optimizer steps from 0. ``optimizer`` receives the new parameters as new groups;
    ``scheduler`` (a LambdaLR, such as transformers' schedules, or None) gets their warm-up;
    ``total_steps`` sets ``top_h`` when the config leaves it to the allocator.
    """

    def __init__(self, model, optimizer: torch.optim.Optimizer, scheduler=None, adapter_name: str = "default",
                 total_steps: int | None = None) -> None:
        from peftkit.core.peft_model import module_key  # here: peft_model imports the registry of methods

        config = model.peft_config.get(adapter_name)
        if not isinstance(config, IncreLoraConfig):
            raise ConfigError(f"adapter '{adapter_name}' is not an IncreLoRA adapter")
        self.scheduler = getattr(scheduler, "scheduler", scheduler)  # accelerate wraps the scheduler
        if self.scheduler is not None and not hasattr(self.scheduler, "lr_lambdas"):
            raise ConfigError(f"IncreLoRA warms new parameters up on a LambdaLR schedule; got "
                              f"{type(self.scheduler).__name__}")
        self.model, self.config, self.name, self.optimizer = model, config, adapter_name, optimizer
        self.layers = {module_key(path): layer for path, layer in model.adapter_layers()
                       if isinstance(layer, IncreLoraLinear) and layer.has_adapter(adapter_name)}
        self.budget = config.target_rank * len(self.layers)
        self.top_h = config.top_h or self._top_h_for(total_steps)
        self.sensitivity = dict.fromkeys(self.layers, 0.0)
        self.uncertainty = dict.fromkeys(self.layers, 0.0)
        self.base_lr = optimizer.param_groups[0].get("initial_lr", optimizer.param_groups[0]["lr"])
        self.added_groups: list[tuple[dict, int]] = []  # (group, step added), without a scheduler

    def _top_h_for(self, total_steps: int | None) -> int:
        """The fewest modules per allocation that fill the budget by 80 % of ``total_steps``."""
        if not total_steps:
            raise ConfigError("IncreLoRA with top_h=None needs the number of training steps (total_steps) "
                              "to spread its allocations; or set top_h")
        c = self.config
        allocations = max(1, (int(0.8 * total_steps) - c.init_warmup) // c.incre_interval + 1)
        return max(1, math.ceil((self.budget - self.total_rank()) / allocations))

    def total_rank(self) -> int:
        return sum(layer.active_rank(self.name) for layer in self.layers.values())

    def ranks(self) -> dict[str, int]:
        return {key: layer.active_rank(self.name) for key, layer in self.layers.items()}

    def update_scores(self) -> None:
        beta1, beta2 = self.config.beta1, self.config.beta2
        for key, layer in self.layers.items():
            if self.name not in layer.importance:
                continue
            importance = float(layer.importance.pop(self.name))
            self.sensitivity[key] = beta1 * self.sensitivity[key] + (1 - beta1) * importance
            deviation = abs(importance - self.sensitivity[key])
            self.uncertainty[key] = beta2 * self.uncertainty[key] + (1 - beta2) * deviation

    def scores(self) -> dict[str, float]:
        return {key: self.sensitivity[key] * self.uncertainty[key] for key in self.layers}

    def warm_up(self, steps_since: int) -> float:
        return min(1.0, steps_since / self.config.new_param_warmup) if self.config.new_param_warmup else 1.0

    def step(self, step: int) -> list[str]:
        """Update the scores; at an allocation step, grow the top modules. Returns the modules grown."""
        self.update_scores()
        done = step + 1
        c = self.config
        grown = []
        if done >= c.init_warmup and (done - c.init_warmup) % c.incre_interval == 0:
            room = self.budget - self.total_rank()
            ranked = sorted(self.scores().items(), key=lambda item: -item[1])
            grown = [key for key, _ in ranked[:max(0, min(self.top_h, room))]]
            if grown:
                self._add_group([p for key in grown for p in self.layers[key].grow(self.name)], done)
                c.rank_pattern = self.ranks()
            if self.total_rank() >= self.budget:
                for layer in self.layers.values():
                    layer.scoring = False
        self._set_unscheduled_rates(done)
        return grown

    def _add_group(self, parameters: list[nn.Parameter], done: int) -> None:
        if self.scheduler is None:
            self.optimizer.add_param_group({"params": parameters, "lr": 0.0})
            self.added_groups.append((self.optimizer.param_groups[-1], done))
            return
        main, started = self.scheduler.lr_lambdas[0], self.scheduler.last_epoch
        self.scheduler.lr_lambdas.append(lambda epoch: main(epoch) * self.warm_up(epoch - started))
        self.scheduler.base_lrs.append(self.base_lr)
        self.optimizer.add_param_group({"params": parameters, "lr": 0.0, "initial_lr": self.base_lr})
        self.scheduler._last_lr.append(0.0)

    def _set_unscheduled_rates(self, done: int) -> None:
        """Without a scheduler: for the next optimizer step, the new groups take the first group's rate times
        their warm-up (the group added at ``done`` gets 1/``new_param_warmup`` of it, as with a scheduler)."""
        current = self.optimizer.param_groups[0]["lr"]
        for group, added in self.added_groups:
            group["lr"] = current * self.warm_up(done - added + 1)


register_method(Method(name="increlora", config_cls=IncreLoraConfig,
                       layers={nn.Linear: IncreLoraLinear, Conv1D: IncreLoraLinear}, peft_reads=False,
                       description="IncreLoRA: LoRA whose ranks grow where the importance scores are highest",
                       learning_rate=1e-2,
                       train_defaults={"target_rank": 8, "lora_alpha": 16, "target_modules": "all-linear"}))
