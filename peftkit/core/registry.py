"""The method registry: one ``register_method`` call makes a method usable everywhere.

A method declares its config class and, for each kind of base module it can wrap, the wrapper layer
class. Target matching, the dry-run plan, ``PeftModel``, save/load and merge work from that alone.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from peftkit.core.config import PeftConfig, register_config_class
from peftkit.core.errors import ConfigError
from peftkit.core.layer import AdapterLayer


@dataclass(frozen=True)
class Method:
    name: str
    config_cls: type[PeftConfig]
    layers: dict[type[nn.Module], type[AdapterLayer]]
    layers_note: str = ""  # what else a module needs, for error messages (e.g. " with a bias")
    prompt_cls: type | None = None  # prompt-learning methods: a PromptAdapter class instead of layers
    peft_reads: bool = True  # Hugging Face peft has this method and reads its checkpoints

    def layer_for(self, module: nn.Module) -> type[AdapterLayer] | None:
        for base_type, layer_cls in self.layers.items():
            if isinstance(module, base_type) and layer_cls.can_wrap(module):
                return layer_cls
        return None

    def supported_types(self) -> str:
        return ", ".join("modules" if t is nn.Module else t.__name__ for t in self.layers)


_METHODS: dict[str, Method] = {}


def register_method(method: Method) -> Method:
    _METHODS[method.name] = method
    register_config_class(method.config_cls)
    return method


def registered_methods() -> dict[str, Method]:
    return dict(_METHODS)


def method_by_name(name: str) -> Method:
    key = name.lower()
    if key not in _METHODS:
        raise ConfigError(f"unknown method '{name}'; peftkit has: {', '.join(sorted(_METHODS))}")
    return _METHODS[key]


def method_for_config(config: PeftConfig) -> Method:
    for method in _METHODS.values():
        if isinstance(config, method.config_cls):
            return method
    raise ConfigError(f"{type(config).__name__} is not the config of a registered method")


def method_by_peft_type(peft_type: str) -> Method:
    for method in _METHODS.values():
        if method.config_cls.peft_type == peft_type:
            return method
    known = ", ".join(sorted(m.config_cls.peft_type for m in _METHODS.values()))
    raise ConfigError(f"peft_type '{peft_type}' is not supported by peftkit (supported: {known})")
