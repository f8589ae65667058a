"""Poly (Polytropon): each task routes its own mix of a shared inventory of LoRA skills.

Ponti et al., 2023, "Combining Parameter-efficient Modules for Task-level Generalisation"; with splits, Multi-Head
Routing (Caccia et al., 2023, "Multi-Head Adapter Routing for Cross-Task Generalization"). For a frozen Linear W and
a row of task t:

    h = W x + (1/r) · x A_t B_t,   A_t = Σₛ w_{t,q,s} A_{q,s},   B_t = Σₛ w_{t,q,s} B_{q,s}

per split q of the input (A) and output (B) features, over S = ``n_skills`` skills of rank r. The routing weights are
w_{t,q,·} = σ(ℓ_{t,q,·}) / Σ σ(ℓ_{t,q,·}) from learned logits ℓ (``n_tasks`` × splits × skills, starting in ±1e-3);
while training, σ(ℓ) is replaced by a relaxed Bernoulli sample (temperature 1), as in the paper. A starts
Kaiming-uniform, B at zero, so the model starts unchanged.

The forward takes ``task_ids`` (one per row), as peft's; with a single task they may be left out (task 0), where
peft insists on them. Saved tensors, as peft's: ``poly_lora_A`` (splits × skills × in/splits × r), ``poly_lora_B``
(splits × skills × r × out/splits), ``poly_router.module_logits`` (tasks × splits·skills). Linear layers only.
"""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.distributions.relaxed_bernoulli import RelaxedBernoulli

from peftkit.core.config import TargetedConfig, config_dataclass
from peftkit.core.errors import ConfigError
from peftkit.core.layer import AdapterLayer
from peftkit.core.registry import Method, register_method
from peftkit.methods.lora import LORA_DEFAULT_TARGETS

TINY = 1e-12  # keeps the normalisation of the routing weights finite


@config_dataclass
class PolyConfig(TargetedConfig):
    """Poly settings, with peft's field names and defaults."""

    peft_type = "POLY"
    r: int = 8
    init_weights: bool = True
    poly_type: str = "poly"
    n_tasks: int = 1
    n_skills: int = 4
    n_splits: int = 1

    default_targets = LORA_DEFAULT_TARGETS

    def validate(self) -> None:
        super().validate()
        for name in ("r", "n_tasks", "n_skills", "n_splits"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
                raise ConfigError(f"{name} must be a positive integer, got {value!r}")
        if self.poly_type != "poly":
            raise ConfigError(f"poly_type must be 'poly' (peft's only router), got {self.poly_type!r}")


class PolyRouter(nn.Module):
    """The routing logits of one adapter in one layer, and the weights they give each row."""

    def __init__(self, config: PolyConfig, options: dict) -> None:
        super().__init__()
        self.splits, self.skills = config.n_splits, config.n_skills
        self.module_logits = nn.Parameter(torch.empty(config.n_tasks, self.splits * self.skills, **options))
        nn.init.uniform_(self.module_logits, -1e-3, 1e-3)

    def forward(self, task_ids: torch.Tensor) -> torch.Tensor:
        logits = self.module_logits[task_ids].view(-1, self.splits, self.skills)
        chosen = RelaxedBernoulli(temperature=1.0, logits=logits).rsample() if self.training else logits.sigmoid()
        return chosen / (chosen.sum(dim=-1, keepdim=True) + TINY)


class PolyLinear(AdapterLayer):
    adapter_attributes = ("poly_lora_A", "poly_lora_B", "poly_router")
    mergeable = False  # the update depends on each row's task
    takes_task_ids = True
    task_ids: torch.Tensor | None = None  # set by PeftModel while a forward with task_ids runs

    def __init__(self, base_layer: nn.Module) -> None:
        super().__init__(base_layer)
        self.poly_lora_A = nn.ParameterDict()
        self.poly_lora_B = nn.ParameterDict()
        self.poly_router = nn.ModuleDict()
        self.ranks: dict[str, int] = {}

    @classmethod
    def expected_shapes(cls, base_layer: nn.Module, config: PolyConfig, module_name: str) -> dict[str, tuple]:
        q, s, r = config.n_splits, config.n_skills, config.r
        if base_layer.in_features % q or base_layer.out_features % q:
            raise ConfigError(f"n_splits={q} does not divide the {base_layer.in_features} inputs and "
                              f"{base_layer.out_features} outputs of '{module_name}'")
        return {"poly_lora_A": (q, s, base_layer.in_features // q, r),
                "poly_lora_B": (q, s, r, base_layer.out_features // q),
                "poly_router.module_logits": (config.n_tasks, q * s)}

    def add_adapter(self, name: str, config: PolyConfig, module_name: str) -> None:
        shapes = self.expected_shapes(self.base, config, module_name)
        weight = self.base.weight
        options = {"device": weight.device, "dtype": weight.dtype if weight.is_floating_point() else torch.float32}
        a, b = torch.empty(shapes["poly_lora_A"], **options), torch.zeros(shapes["poly_lora_B"], **options)
        nn.init.uniform_(a, -1 / math.sqrt(a.shape[2]), 1 / math.sqrt(a.shape[2]))  # Kaiming-uniform, fan-in in/q
        if not config.init_weights:
            nn.init.uniform_(b, -1 / math.sqrt(config.r), 1 / math.sqrt(config.r))
        self.poly_lora_A[name], self.poly_lora_B[name] = nn.Parameter(a), nn.Parameter(b)
        self.poly_router[name] = PolyRouter(config, options).train(self.base_layer.training)
        self.ranks[name] = config.r

    def _rows_tasks(self, name: str, rows: int) -> torch.Tensor:
        router = self.poly_router[name]
        if self.task_ids is None:
            if router.module_logits.shape[0] != 1:
                raise ConfigError(f"adapter '{name}' has {router.module_logits.shape[0]} tasks: pass task_ids, one "
                                  f"per row")
            return torch.zeros(rows, dtype=torch.long, device=router.module_logits.device)
        task_ids = torch.as_tensor(self.task_ids, device=router.module_logits.device).long().reshape(-1)
        if task_ids.numel() != rows:
            raise ConfigError(f"task_ids has {task_ids.numel()} entries, but the batch has {rows} rows here")
        if task_ids.max() >= router.module_logits.shape[0]:
            raise ConfigError(f"task_ids holds {task_ids.max().item()}, but adapter '{name}' has "
                              f"{router.module_logits.shape[0]} tasks")
        return task_ids

    def apply_adapters(self, names: list[str], x: torch.Tensor, *args, **kwargs):
        output = self.call_base(names, x, *args, **kwargs)
        rows = x.shape[0]
        flat = x.reshape(rows, -1, x.shape[-1])
        for name in self.own(names):
            weights = self.poly_router[name](self._rows_tasks(name, rows))  # rows × splits × skills
            a = torch.einsum("bqs,qsdr->bqdr", weights, self.poly_lora_A[name]).reshape(rows, -1, self.ranks[name])
            b = torch.einsum("bqs,qsrd->bqrd", weights, self.poly_lora_B[name])
            b = b.transpose(1, 2).reshape(rows, self.ranks[name], -1)
            update = flat.to(a.dtype).bmm(a).bmm(b) / self.ranks[name]
            output = output + update.reshape(output.shape).to(output.dtype)
        return output


register_method(Method(name="poly", config_cls=PolyConfig, layers={nn.Linear: PolyLinear}, learning_rate=1e-2,
                       peft_module_types=(nn.Linear,),
                       train_defaults={"r": 8, "n_skills": 4},  # LoRA's targets: peft's Poly fails on 2-D inputs
                       description="Poly: each task routes its own mix of a shared set of LoRA skills"))
