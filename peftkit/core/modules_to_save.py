"""Modules trained whole, one copy per adapter: modules_to_save (e.g. a fresh classification head) and
the methods built the same way (LayerNorm tuning).

Each adapter owns its own copy of the module; the original stays untouched, so disabling or deleting
the adapter restores it, and ``merge_and_unload`` hands out the active copy.
"""

from __future__ import annotations

import torch
from torch import nn

from peftkit.core.config import PeftConfig
from peftkit.core.layer import AdapterLayer
from peftkit.core.mechanics.sharding import whole_copy


class ModuleCopies(AdapterLayer):
    """Forward runs the active adapter's copy of the module; ``copies_attribute`` names the container."""

    copies_attribute = "copies"

    def __init__(self, base_layer: nn.Module) -> None:
        super().__init__(base_layer)
        setattr(self, self.copies_attribute, nn.ModuleDict())

    @classmethod
    def expected_shapes(cls, base_layer: nn.Module, config: PeftConfig, module_name: str) -> dict[str, tuple]:
        return {f"{cls.copies_attribute}.{key}": tuple(p.shape) for key, p in base_layer.named_parameters()}

    def add_adapter(self, name: str, config: PeftConfig, module_name: str) -> None:
        getattr(self, self.copies_attribute)[name] = whole_copy(self.base_layer)  # whole when sharded (FSDP)

    def merge(self, names: list[str], safe_merge: bool = False) -> None:
        """Nothing to fold: the active copy already is the module; ``unwrapped`` hands it out."""

    def _current(self, names: list[str]) -> nn.Module:
        return getattr(self, self.copies_attribute)[names[-1]] if names else self.base_layer

    def unwrapped(self) -> nn.Module:
        return self._current(self.adapters_to_apply())

    def apply_adapters(self, names: list[str], *args, **kwargs):
        return self._current(self.own(names))(*args, **kwargs)


class ModulesToSave(ModuleCopies):
    """Saved under the module's own parameter names (``classifier.weight``), as peft does; the original module is
    held as ``original_module``, peft's name, so that state-dict names match peft's too."""

    adapter_attributes = ("modules_to_save",)
    copies_attribute = "modules_to_save"

    def __init__(self, base_layer: nn.Module) -> None:
        super().__init__(base_layer)
        children = dict(self._modules)
        self._modules.clear()
        self._modules["original_module"] = children.pop("base_layer")  # first, as in peft's state dicts
        self._modules.update(children)

    @property
    def base_layer(self) -> nn.Module:
        return self._modules["original_module"]

    @classmethod
    def expected_shapes(cls, base_layer: nn.Module, config: PeftConfig, module_name: str) -> dict[str, tuple]:
        return {key: tuple(p.shape) for key, p in base_layer.named_parameters()}

    def adapter_state_dict(self, name: str) -> dict[str, torch.Tensor]:
        return dict(self.modules_to_save[name].named_parameters()) if name in self.modules_to_save else {}
