"""APET: arbitrary parameter-efficient tuning (Su et al., 2023, "Arbitrary Few Parameters are Good
Enough for Adapting Large-scale Pre-trained Language Models").

Given a budget N, train N parameters chosen at random, deterministically from (N, seed), from two pools:

* inserted module groups — a LoRA pair (A: r × in, B: out × r, h += B A x) on a Linear, or a
  bottleneck adapter after a Linear's output (h += U relu(D h), U starting at zero);
* whole backbone tensors — the weight or bias of a Linear or a LayerNorm, trained as W + Δ with Δ
  starting at zero (the same gradients as training W itself, and a checkpoint that holds only Δ).

About ``module_share`` · N (default half) comes from the first pool, the rest from the second: each
pool is shuffled and an item is taken when it still fits. With ``element_mask=True`` the budget is met
exactly: what is left is trained as a random subset of the elements of one more backbone tensor
(Δ on K fixed random positions, the rest of the tensor frozen). Without it the total is at most N.
``budget="match:<method>"`` takes the count of that method's default config on the model (e.g. ``"match:lora"``).

Choices: soft prompts are not in the pool (they change the sequence length, so they cannot mix with
the rest in one forward); embeddings and the output head are not either (the task head, when the
task has one, is trained whole as for every method and is not part of N). The chosen groups are
written into the config (``selection``), so a saved adapter loads exactly what was trained.
"""

from __future__ import annotations

import random
import zlib

import torch
import torch.nn.functional as F
from torch import nn

from peftkit.core.config import TargetedConfig, config_dataclass
from peftkit.core.errors import ConfigError
from peftkit.core.layer import AdapterLayer, base_of
from peftkit.core.registry import Method, method_by_name, register_method
from peftkit.core.targets import candidate_modules, output_heads
from peftkit.methods.bottleneck import Bottleneck

MATCH = "match:"
MASKED = "@"  # "weight@K": K elements of the weight


@config_dataclass
class ApetConfig(TargetedConfig):
    """APET settings; ``selection`` (module name → chosen parts) is filled in when applied to a model."""

    peft_type = "APET"
    budget: int | str = "match:lora"
    seed: int = 0
    module_share: float = 0.5
    lora_r: int = 8
    adapter_size: int = 16
    element_mask: bool = False
    selection: dict[str, list[str]] | None = None

    def validate(self) -> None:
        super().validate()
        budget = self.budget
        valid_number = isinstance(budget, int) and not isinstance(budget, bool) and budget > 0
        if not valid_number and not (isinstance(budget, str) and budget.startswith(MATCH)):
            raise ConfigError(f"budget must be a positive integer or 'match:<method>', got {budget!r}")
        if not isinstance(self.module_share, (int, float)) or not 0 <= self.module_share <= 1:
            raise ConfigError(f"module_share must be in [0, 1], got {self.module_share!r}")
        for name in ("lora_r", "adapter_size"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
                raise ConfigError(f"{name} must be a positive integer, got {value!r}")

    def resolved(self, model) -> ApetConfig:
        config = super(TargetedConfig, self).resolved(model)  # targets come from the selection below
        if config.selection is None:
            config.selection = select(model, budget_for(model, config.budget), config)
        config.target_modules = sorted(config.selection)
        return config


def budget_for(model: nn.Module, budget: int | str) -> int:
    if isinstance(budget, int):
        return budget
    from peftkit.core.targets import plan

    method = method_by_name(budget[len(MATCH):])
    adapted = [m for m in plan(model, method.config_cls()).modules if m.role == "adapt"]
    return sum(m.new_parameters for m in adapted)


def _candidates(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """The model's own Linear and LayerNorm modules (under any adapter layers), output heads left out."""
    heads = output_heads(model)
    found = [(n, base_of(m)) for n, m in candidate_modules(model)]
    return [(n, m) for n, m in found if isinstance(m, (nn.Linear, nn.LayerNorm)) and n not in heads]


def part_size(module: nn.Module, part: str, config: ApetConfig) -> int:
    if part == "lora":
        return config.lora_r * (module.in_features + module.out_features)
    if part == "adapter":
        return 2 * config.adapter_size * module.out_features + config.adapter_size + module.out_features
    name, _, count = part.partition(MASKED)
    return int(count) if count else getattr(module, name).numel()


def select(model: nn.Module, budget: int, config: ApetConfig) -> dict[str, list[str]]:
    """The random choice of module groups and backbone tensors for ``budget``; see the module docstring."""
    candidates = _candidates(model)
    groups = [(n, p) for n, m in candidates if isinstance(m, nn.Linear) for p in ("lora", "adapter")]
    tensors = [(n, p) for n, m in candidates for p in ("weight", "bias") if getattr(m, p, None) is not None]
    modules = dict(candidates)
    rng = random.Random(f"apet:{budget}:{config.seed}")
    rng.shuffle(groups)
    rng.shuffle(tensors)
    chosen: dict[str, list[str]] = {}
    used = 0
    for pool, limit in ((groups, round(config.module_share * budget)), (tensors, budget)):
        for name, part in pool:
            size = part_size(modules[name], part, config)
            if used + size <= limit:
                chosen.setdefault(name, []).append(part)
                used += size
    left = budget - used
    if config.element_mask and left > 0:
        name, part = next(((n, p) for n, p in tensors if p not in chosen.get(n, []) and
                           part_size(modules[n], p, config) > left), (None, None))
        if name is not None:
            chosen.setdefault(name, []).append(f"{part}{MASKED}{left}")
    if not chosen:
        smallest = min(part_size(modules[n], p, config) for n, p in tensors)
        raise ConfigError(f"APET budget {budget} is smaller than the smallest candidate ({smallest} parameters); "
                          f"raise it or set element_mask=True")
    return chosen


def element_indices(numel: int, count: int, seed: int, module_name: str, part: str) -> torch.Tensor:
    """``count`` fixed random positions (sorted) in a flattened tensor, from (seed, module, part)."""
    generator = torch.Generator().manual_seed(zlib.crc32(f"{seed}:{module_name}:{part}".encode()))
    return torch.randperm(numel, generator=generator)[:count].sort().values


class ApetLayer(AdapterLayer):
    """The parts APET chose on one Linear or LayerNorm: a LoRA pair, an adapter, Δ on weight / bias."""

    adapter_attributes = ("apet_lora_A", "apet_lora_B", "apet_adapter", "apet_delta")
    mergeable = False

    def __init__(self, base_layer: nn.Module) -> None:
        super().__init__(base_layer)
        self.apet_lora_A = nn.ModuleDict()
        self.apet_lora_B = nn.ModuleDict()
        self.apet_adapter = nn.ModuleDict()
        self.apet_delta = nn.ModuleDict()
        self._positions: dict[str, dict[str, torch.Tensor]] = {}  # element-masked tensors: trained positions

    @classmethod
    def expected_shapes(cls, base_layer: nn.Module, config: ApetConfig, module_name: str) -> dict[str, tuple]:
        shapes = {}
        for part in config.selection[module_name]:
            name = part.partition(MASKED)[0]
            if part == "lora":
                shapes["apet_lora_A.weight"] = (config.lora_r, base_layer.in_features)
                shapes["apet_lora_B.weight"] = (base_layer.out_features, config.lora_r)
            elif part == "adapter":
                size, width = config.adapter_size, base_layer.out_features
                shapes.update({"apet_adapter.down.weight": (size, width), "apet_adapter.down.bias": (size,),
                               "apet_adapter.up.weight": (width, size), "apet_adapter.up.bias": (width,)})
            else:
                count = part.partition(MASKED)[2]
                shapes[f"apet_delta.{name}"] = (int(count),) if count else tuple(getattr(base_layer, name).shape)
        return shapes

    def add_adapter(self, name: str, config: ApetConfig, module_name: str) -> None:
        base = self.base
        like = base.weight
        options = {"device": like.device, "dtype": like.dtype}
        deltas, positions = nn.ParameterDict(), {}
        for part in config.selection[module_name]:
            tensor_name, _, count = part.partition(MASKED)
            if part == "lora":
                self.apet_lora_A[name] = nn.Linear(base.in_features, config.lora_r, bias=False, **options)
                self.apet_lora_B[name] = nn.Linear(config.lora_r, base.out_features, bias=False, **options)
                nn.init.zeros_(self.apet_lora_B[name].weight)
            elif part == "adapter":
                self.apet_adapter[name] = Bottleneck((base.out_features, base.out_features), config.adapter_size,
                                                     "relu", 0.0, like)
            elif count:  # K chosen elements of the tensor: Δ holds just those
                numel = getattr(base, tensor_name).numel()
                positions[tensor_name] = element_indices(numel, int(count), config.seed, module_name, tensor_name)
                deltas[tensor_name] = nn.Parameter(torch.zeros(int(count), **options))
            else:
                deltas[tensor_name] = nn.Parameter(torch.zeros(getattr(base, tensor_name).shape, **options))
        if deltas:
            self.apet_delta[name] = deltas
        self._positions[name] = positions

    def _parameters_with_deltas(self, names: list[str]) -> tuple[torch.Tensor, torch.Tensor | None]:
        weight, bias = self.weight, self.bias
        for name in names:
            if name not in self.apet_delta:
                continue
            for tensor_name, delta in self.apet_delta[name].items():
                current = weight if tensor_name == "weight" else bias
                positions = self._positions[name].get(tensor_name)
                if positions is None:
                    current = current + delta
                else:
                    current = current.flatten().index_add(0, positions.to(delta.device), delta).view_as(current)
                if tensor_name == "weight":
                    weight = current
                else:
                    bias = current
        return weight, bias

    def apply_adapters(self, names: list[str], x: torch.Tensor, *args, **kwargs) -> torch.Tensor:
        own = self.own(names)
        if any(n in self.apet_delta for n in own):
            if isinstance(self.base_layer, AdapterLayer):
                raise ConfigError("APET trains this module's own weights; it cannot sit on another method's layer")
            weight, bias = self._parameters_with_deltas(own)
            base = self.base
            if isinstance(base, nn.Linear):
                result = F.linear(x, weight, bias)
            else:
                result = F.layer_norm(x, base.normalized_shape, weight, bias, base.eps)
        else:
            result = self.call_base(names, x, *args, **kwargs)
        for name in own:
            if name in self.apet_lora_A:
                result = result + self.apet_lora_B[name](self.apet_lora_A[name](x))
            if name in self.apet_adapter:
                result = result + self.apet_adapter[name](result)
        return result


register_method(Method(name="apet", config_cls=ApetConfig, layers={nn.Linear: ApetLayer, nn.LayerNorm: ApetLayer},
                       peft_reads=False, learning_rate=5e-4,
                       description="APET: any chosen parameters of the model trained as sparse deltas, to a budget"))
