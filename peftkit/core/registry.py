"""The method registry: one ``register_method`` call makes a method usable everywhere.

A method declares its config class and, for each kind of base module it can wrap, the wrapper layer
class. Target matching, the dry-run plan, ``PeftModel``, save/load and merge work from that alone. The
registration also carries the method's facts that the command line, the bench and the docs read: its one-line
description, the learning rate and settings ``peftkit train`` uses unless told otherwise, its variants benched
as rows of their own (DoRA for LoRA) and its forms on a quantised base model (QLoRA).

One name per method everywhere: a method's name is its ``peft_type`` in lower case, which is also the name of its
module in ``peftkit/methods`` (``bottleneck`` → ``methods/bottleneck.py`` → ``BottleneckConfig``, peft type
``BOTTLENECK``). Earlier names a method went by (``adapter``) are kept as aliases that the command line accepts.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from torch import nn

from peftkit.core.config import PeftConfig, register_config_class
from peftkit.core.errors import ConfigError
from peftkit.core.layer import AdapterLayer


@dataclass(frozen=True)
class QuantizedForm:
    """The method trained on a base model stored in a quantised format (QLoRA: LoRA on NF4 weights)."""

    quantization: str  # "nf4"
    learning_rate: float
    description: str


@dataclass(frozen=True)
class Method:
    """A method's registration: its name, config class, the layer class that wraps each kind of base module (or
    its prompt class), and its facts (see the module docstring); pass it to ``register_method``."""

    name: str
    config_cls: type[PeftConfig]
    layers: dict[type[nn.Module], type[AdapterLayer]]
    layers_note: str = ""  # what else a module needs, for error messages (e.g. " with a bias")
    prompt_cls: type | None = None  # prompt-learning methods: a PromptAdapter class instead of layers
    shared: type | None = None  # a core.shared.SharedTensors subclass: tensors an adapter keeps once for all its layers
    peft_reads: bool = True  # Hugging Face peft has this method and reads its checkpoints
    # The module types peft's own form of the method wraps, where fewer than ``layers`` (LoHa: no GPT-2 Conv1D)
    peft_module_types: tuple[type[nn.Module], ...] = ()
    aliases: tuple[str, ...] = ()  # earlier names, still accepted (``--method adapter``), never listed
    # Adapter arithmetic (peft's add_weighted_adapter): (model, adapters, weights, new name, **options) -> None
    combine_adapters: Callable[..., None] | None = None
    description: str = ""  # one line, for `peftkit train --help` and the docs' method table
    unchanged_at_start: bool = True  # a new adapter leaves the model's output as it was (LoRA's B = 0)
    learning_rate: float = 1e-3  # what `peftkit train` uses unless --lr is given (a small encoder's need)
    task_learning_rates: dict[str, float] = field(default_factory=dict)  # other rates per task, e.g. causal-lm
    train_defaults: dict = field(default_factory=dict)  # config settings `peftkit train` uses unless set
    variants: dict[str, dict] = field(default_factory=dict)  # benched as rows of their own: name -> options
    quantized: dict[str, QuantizedForm] = field(default_factory=dict)  # name -> the form on a quantised base

    def layer_for(self, module: nn.Module) -> type[AdapterLayer] | None:
        for base_type, layer_cls in self.layers.items():
            if isinstance(module, base_type) and layer_cls.can_wrap(module):
                return layer_cls
        return None

    def peft_wraps(self, module_type: str) -> bool:
        """Whether peft's own form of the method wraps modules of this type (by class name)."""
        return not self.peft_module_types or module_type in {t.__name__ for t in self.peft_module_types}

    def supported_types(self) -> str:
        return ", ".join("modules" if t is nn.Module else t.__name__ for t in self.layers)


_METHODS: dict[str, Method] = {}


def register_method(method: Method) -> Method:
    """Make ``method`` usable everywhere: ``get_peft_model`` and loading by its config, ``peftkit train --method``,
    the bench and the docs by its name."""
    _METHODS[method.name] = method
    register_config_class(method.config_cls)
    return method


def registered_methods() -> dict[str, Method]:
    """Every registered method by name (a copy: registering goes through ``register_method``)."""
    return dict(_METHODS)


def canonical_name(name: str) -> str:
    """The method's name for one of its earlier names ("adapter" → "bottleneck"); any other name as given."""
    for method in _METHODS.values():
        if name.lower() in method.aliases:
            return method.name
    return name


def method_by_name(name: str) -> Method:
    key = canonical_name(name).lower()
    if key not in _METHODS:
        raise ConfigError(f"unknown method '{name}'; peftkit has: {', '.join(sorted(_METHODS))}")
    return _METHODS[key]


def method_for_config(config: PeftConfig) -> Method:
    for method in _METHODS.values():
        if isinstance(config, method.config_cls):
            return method
    raise ConfigError(f"{type(config).__name__} is not the config of a registered method")


def method_form(name: str) -> tuple[Method, QuantizedForm | None]:
    """(the method, its quantised form or None) for a method name or a quantised form's name ("qlora")."""
    for method in _METHODS.values():
        if name in method.quantized:
            return method, method.quantized[name]
    return method_by_name(name), None


def method_variants() -> dict[str, tuple[Method, dict]]:
    """Every registered variant by name: (its method, the options that make it)."""
    return {variant: (method, options) for method in _METHODS.values() for variant, options in method.variants.items()}


def quantized_forms() -> dict[str, tuple[Method, QuantizedForm]]:
    """Every quantised form by name: (its method, the form)."""
    return {name: (method, form) for method in _METHODS.values() for name, form in method.quantized.items()}


def default_learning_rate(name: str, task: str | None = None) -> float:
    """The learning rate ``peftkit train`` uses for a method (or a quantised form) unless told otherwise."""
    method, form = method_form(name)
    if task in method.task_learning_rates:
        return method.task_learning_rates[task]
    return form.learning_rate if form is not None else method.learning_rate


def method_by_peft_type(peft_type: str) -> Method:
    for method in _METHODS.values():
        if method.config_cls.peft_type == peft_type:
            return method
    known = ", ".join(sorted(m.config_cls.peft_type for m in _METHODS.values()))
    raise ConfigError(f"peft_type '{peft_type}' is not supported by peftkit (supported: {known})")
