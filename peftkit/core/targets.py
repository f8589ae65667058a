"""Which modules a config hits — decided before anything in the model changes.

``plan(model, config)`` is the public dry run: it lists the modules the config would wrap (and the
modules it would train and save whole), with the parameters each would add, and raises a
``ConfigError`` naming the field when a pattern matches nothing.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

import torch
from torch import nn
from transformers.pytorch_utils import Conv1D

from peftkit.core.config import PeftConfig, TargetedConfig
from peftkit.core.errors import ConfigError
from peftkit.core.layer import AdapterLayer, base_of
from peftkit.core.module_names import ALL, ALL_LINEAR, name_matches, output_heads
from peftkit.core.modules_to_save import ModuleCopies, ModulesToSave
from peftkit.core.registry import Method, method_for_config

# Task heads peft adds to modules_to_save for these task types; optional (a model has one or none).
TASK_HEAD_NAMES = {"SEQ_CLS": ["classifier", "score"], "TOKEN_CLS": ["classifier", "score"]}


@dataclass
class PlannedModule:
    name: str
    module_type: str
    layer_cls: type
    shapes: dict[str, tuple]  # the tensors a checkpoint holds for it
    role: str = "adapt"  # "adapt": wrapped by the method; "save": trained whole; "prompt": virtual tokens
    trainable: int | None = None  # parameters it trains, where they differ from what is saved
    config: PeftConfig | None = None  # the config its layer takes where not the plan's (PeftConfig.companions)

    @property
    def new_parameters(self) -> int:
        if self.trainable is not None:
            return self.trainable
        total = 0
        for shape in self.shapes.values():
            count = 1
            for size in shape:
                count *= size
            total += count
        return total


@dataclass
class Plan:
    method: str
    config: PeftConfig  # with the model-dependent defaults filled in
    model_parameters: int
    modules: list[PlannedModule] = field(default_factory=list)
    shared_shapes: dict[str, tuple] = field(default_factory=dict)  # the adapter's model-level tensors, by saved key
    shared_parameters: int = 0  # of those, the parameters it trains
    skipped: dict[str, str] = field(default_factory=dict)  # 'all-linear' modules the method cannot fit -> why

    @property
    def new_parameters(self) -> int:
        return sum(m.new_parameters for m in self.modules) + self.shared_parameters

    def __str__(self) -> str:
        width = max([len(m.name) for m in self.modules] + [6])
        lines = [f"{'module':<{width}}  {'type':<12} {'role':<6} {'new params':>12}"]
        lines += [f"{m.name:<{width}}  {m.module_type:<12} {m.role:<6} {m.new_parameters:>12,}" for m in self.modules]
        if self.shared_shapes or self.shared_parameters:
            lines.append(f"{'(model-level)':<{width}}  {'':<12} {'shared':<6} {self.shared_parameters:>12,}")
        share = 100.0 * self.new_parameters / max(self.model_parameters, 1)
        lines += [f"skipped {name}: {reason}" for name, reason in self.skipped.items()]
        lines.append(
            f"{self.method}: {len(self.modules)} modules, {self.new_parameters:,} new parameters "
            f"({share:.4f}% of the model's {self.model_parameters:,})"
        )
        return "\n".join(lines)


def plan(model: nn.Module, config: PeftConfig) -> Plan:
    """List what ``config`` would add to ``model`` (a model, or a ``PeftModel`` around one) without changing it."""
    method = method_for_config(config)
    base = model.get_base_model() if callable(getattr(model, "get_base_model", None)) else model
    config = config.resolved(base)
    saved = _saved_modules(base, config)
    skipped: dict[str, str] = {}
    if method.prompt_cls is not None:
        modules = [_prompt_module(base, config, method.prompt_cls)] + saved
    else:
        modules = _adapted_modules(base, config, method, [m.name for m in saved], skipped) + saved
    own = sum(p.numel() for n, p in base.named_parameters() if not inside_adapter_container(base, n))
    the_plan = Plan(method=method.name, config=config, model_parameters=own, modules=modules, skipped=skipped)
    if method.shared is not None:
        _plan_shared(base, the_plan, method.shared)
    the_plan.modules += _companion_modules(base, config, method, {m.name for m in modules})
    return the_plan


def _companion_modules(model: nn.Module, config: PeftConfig, method: Method, taken: set[str]) -> list[PlannedModule]:
    """The modules of the adapters ``config`` brings along (``PeftConfig.companions``), each with its own config."""
    found = []
    for companion in config.companions(model):
        companion_plan = plan(model, companion)
        for item in companion_plan.modules:
            if item.name in taken:
                raise ConfigError(f"'{item.name}' is adapted twice: by the {method.name} adapter's own modules and by "
                                  f"the {companion_plan.method} part it brings along; keep it in one of them")
            item.config = companion_plan.config
            taken.add(item.name)
            found.append(item)
    return found


def adapted_bases(model: nn.Module, the_plan: Plan) -> dict[str, nn.Module]:
    """The base modules the plan wraps, by name, in the model's order."""
    return {m.name: base_of(model.get_submodule(m.name)) for m in the_plan.modules
            if m.role == "adapt" and m.config is None}


def _plan_shared(model: nn.Module, the_plan: Plan, shared_cls: type) -> None:
    """Add the adapter's model-level tensors to the plan, built once (RNG untouched) to read their shapes."""
    with torch.random.fork_rng(devices=[]):
        shared = shared_cls(the_plan.config, adapted_bases(model, the_plan))
    the_plan.shared_shapes = {key: tuple(t.shape) for key, t in shared.state_dict().items()}
    the_plan.shared_parameters = sum(p.numel() for p in shared.parameters())
    for item in the_plan.modules:
        if item.role == "adapt":
            item.trainable = item.new_parameters  # what the layer saves of the shared tensors does not train
            item.shapes.update(shared.layer_shapes(item.name))


def _prompt_module(model: nn.Module, config: PeftConfig, prompt_cls: type) -> PlannedModule:
    """The virtual tokens of a prompt-learning method, built once (RNG untouched) to count what they train."""
    with torch.random.fork_rng(devices=[]):
        adapter = prompt_cls(config, model)
    trainable = sum(p.numel() for p in adapter.parameters())
    return PlannedModule("prompt_encoder", prompt_cls.__name__, prompt_cls, prompt_cls.expected_shapes(config),
                         role="prompt", trainable=trainable)


def inside_adapter_container(model: nn.Module, param_name: str) -> bool:
    """True for an adapter's own tensor (``q.lora_A.default.weight``), False for a base one
    (``q.base_layer.weight``)."""
    parts = param_name.split(".")
    module = model
    for part in parts[:-1]:
        if isinstance(module, AdapterLayer) and part != "base_layer":
            return True
        module = getattr(module, part)
    return False


def candidate_modules(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """Named modules a method may target: adapter layers stand for their base, their insides are hidden."""
    found, hidden = [], []
    for name, module in model.named_modules():
        if not name or any(name.startswith(prefix) for prefix in hidden):
            continue
        if isinstance(module, AdapterLayer):
            hidden.append(name + ".")
        found.append((name, module))
    return found


def layer_index(name: str, layers_pattern: list[str] | str | None) -> int | None:
    patterns = [layers_pattern] if isinstance(layers_pattern, str) else (layers_pattern or [])
    regexes = [rf"(?:^|.*?\.){re.escape(p)}\.(\d+)(?:\.|$)" for p in patterns] or [r"(?:^|.*?\.)(\d+)(?:\.|$)"]
    for regex in regexes:
        match = re.match(regex, name)
        if match:
            return int(match.group(1))
    return None


def _adapted_modules(
    model: nn.Module, config: PeftConfig, method: Method, saved: list[str], skipped: dict[str, str]
) -> list[PlannedModule]:
    """The modules the config wraps. Under 'all-linear' or 'all' (no module named), a module whose shape the
    method cannot fit (a width its block size does not divide) is left out, with the reason in ``skipped``;
    a module named in ``target_modules`` that does not fit is an error."""
    if not isinstance(config, TargetedConfig):
        return []
    candidates = candidate_modules(model)
    targets = config.target_modules
    if targets in (ALL_LINEAR, ALL):
        heads = output_heads(model)
        wanted = (lambda m: isinstance(m, (nn.Linear, Conv1D))) if targets == ALL_LINEAR else method.layer_for
        matched = [(n, m) for n, m in candidates if wanted(base_of(m)) and n not in heads]
    else:
        matched = [(n, m) for n, m in candidates if name_matches(n, targets) or n in config.also_adapted]
    matched = [(n, m) for n, m in matched if not any(n == s or n.startswith(s + ".") for s in saved)]
    if config.exclude_modules:
        matched = [(n, m) for n, m in matched if not name_matches(n, config.exclude_modules)]
    if config.layers_to_transform is not None:
        wanted = config.layers_to_transform
        wanted = {wanted} if isinstance(wanted, int) else set(wanted)
        matched = [(n, m) for n, m in matched if layer_index(n, config.layers_pattern) in wanted]
    if not matched:
        raise ConfigError(_nothing_matched_message(config, targets, candidates, method))

    planned = []
    unsupported = []
    for name, module in matched:
        base = base_of(module)
        layer_cls = method.layer_for(base)
        if layer_cls is None:
            unsupported.append(f"{name} ({type(base).__name__})")
            continue
        if isinstance(module, AdapterLayer) and _copies_conflict(module, layer_cls):
            raise ConfigError(
                f"target_modules: '{name}' already holds a {type(module).__name__}; a method that trains whole copies "
                f"of a module cannot share it with another method"
            )
        try:
            shapes = layer_cls.expected_shapes(base, config, name)
        except ConfigError as error:
            if targets not in (ALL_LINEAR, ALL):
                raise
            skipped[name] = str(error)
            continue
        trainable = layer_cls.planned_trainable(base, config, name)
        if trainable is None and layer_cls.frozen_attributes:  # saved, not trained
            trained = {k: s for k, s in shapes.items() if k.split(".")[0] not in layer_cls.frozen_attributes}
            trainable = PlannedModule(name, "", layer_cls, trained).new_parameters
        planned.append(PlannedModule(name, type(base).__name__, layer_cls, shapes, trainable=trainable))
    if unsupported:
        raise ConfigError(
            f"target_modules matched modules that {method.name} cannot wrap: {', '.join(unsupported[:5])}; "
            f"{method.name} wraps {method.supported_types()}"
        )
    if not planned and skipped:
        raise ConfigError(f"{method.name} fits none of the {len(skipped)} modules {targets!r} matches; "
                          f"{next(iter(skipped.values()))}")
    return planned


def _copies_conflict(module: AdapterLayer, layer_cls: type) -> bool:
    """Whole-copy methods (modules_to_save, LN tuning) cannot nest with other methods on one module."""
    chain = []
    while isinstance(module, AdapterLayer):
        chain.append(type(module))
        module = module.base_layer
    kinds = {issubclass(c, ModuleCopies) for c in chain} | {issubclass(layer_cls, ModuleCopies)}
    return len(kinds) > 1 or (issubclass(layer_cls, ModuleCopies) and layer_cls not in chain)


def _nothing_matched_message(config, targets, candidates, method: Method) -> str:
    adaptable = [name for name, module in candidates if method.layer_for(base_of(module)) is not None]
    if not adaptable:
        return (f"{method.name} finds no module it can adapt in this model (it wraps {method.supported_types()}"
                f"{method.layers_note})")
    suffixes = list(dict.fromkeys(name.rsplit(".", 1)[-1] for name in adaptable))
    filters = []
    if config.exclude_modules:
        filters.append(f"exclude_modules={config.exclude_modules!r}")
    if config.layers_to_transform is not None:
        filters.append(f"layers_to_transform={config.layers_to_transform!r}")
    after = f" after {' and '.join(filters)}" if filters else ""
    return (
        f"target_modules={targets!r} matched no module{after}; {method.supported_types()} modules here "
        f"end in: {', '.join(suffixes[:12])} (e.g. {', '.join(adaptable[:3])})"
    )


def _matched_saved(model: nn.Module, config: PeftConfig) -> list[tuple[str, nn.Module]]:
    requested = list(config.modules_to_save or [])
    optional = TASK_HEAD_NAMES.get(config.task_type or "", [])
    candidates = candidate_modules(model)
    found = []
    for entry in dict.fromkeys(requested + optional):
        # peft's rule for modules_to_save is a plain suffix ("norm" also hits "input_layernorm"); kept for
        # checkpoint compatibility. Modules inside one already chosen are skipped.
        hits = [(n, m) for n, m in candidates if n.endswith(entry)
                and not any(n.startswith(f + ".") for f, _ in found)]
        if not hits and entry in requested and entry not in optional:
            raise ConfigError(f"modules_to_save: '{entry}' matches no module of {type(model).__name__}")
        found += [(n, m) for n, m in hits if n not in {f for f, _ in found}]
    return found


def _saved_modules(model: nn.Module, config: PeftConfig) -> list[PlannedModule]:
    planned = []
    for name, module in _matched_saved(model, config):
        if isinstance(module, AdapterLayer) and not isinstance(module, ModulesToSave):
            raise ConfigError(f"modules_to_save: '{name}' is already adapted by {type(module).__name__}")
        base = base_of(module)
        shapes = ModulesToSave.expected_shapes(base, config, name)
        planned.append(PlannedModule(name, type(base).__name__, ModulesToSave, shapes, role="save"))
    return planned
