"""``AdapterLayer``: a base module wrapped with one or more named adapters of one method.

A method's layer subclasses it, lists in ``adapter_attributes`` the ``ModuleDict`` / ``ParameterDict``
attributes that hold each adapter's tensors (keyed by adapter name), and implements ``add_adapter``,
``expected_shapes`` and ``forward`` (plus ``delta_weight`` when the update is a weight delta). What is
the same for every method lives here: which adapters are active, disabling, removing an adapter, the
adapter's tensors under peft's key names (the adapter name dropped), and merge bookkeeping.

The wrapped module stays reachable as ``base_layer``, so its parameters are named
``<path>.base_layer.weight`` exactly as in peft. Layers of different methods on one module nest
(``base_layer`` is then another adapter layer); ``base`` is the model's own module at the bottom, and
``apply_adapters(names, …)`` passes the same names down, so each layer applies the ones it holds.
"""

from __future__ import annotations

from typing import ClassVar

import torch
from torch import nn
from transformers.pytorch_utils import Conv1D

from peftkit.core.config import PeftConfig
from peftkit.core.errors import ConfigError
from peftkit.core.mechanics.quantization import dequantize_for_merge


def output_width(module: nn.Module) -> int | None:
    """Width of a module's output: an Embedding's or Linear / Conv1D's, or a block's last Linear / Conv1D's."""
    if isinstance(module, nn.Embedding):
        return module.embedding_dim
    layers = [m for m in module.modules() if isinstance(m, (nn.Linear, Conv1D))]
    if not layers:
        return None
    last = layers[-1]
    return last.weight.shape[1] if isinstance(last, Conv1D) else last.out_features


def base_of(module: nn.Module) -> nn.Module:
    """The model's own module under any adapter layers wrapped around it."""
    while isinstance(module, AdapterLayer):
        module = module.base_layer
    return module


class AdapterLayer(nn.Module):
    adapter_attributes: ClassVar[tuple[str, ...]] = ()
    # Of ``adapter_attributes``, those whose tensors are saved with the adapter but never train (peft's persistent
    # buffers, e.g. a statistic of the base weight taken when the adapter was made)
    frozen_attributes: ClassVar[tuple[str, ...]] = ()
    mergeable: ClassVar[bool] = True
    # Merging may write a weight other modules share: the method adapts them all alike (trainable tokens' tied rows)
    merges_tied_weight: ClassVar[bool] = False

    def __init__(self, base_layer: nn.Module) -> None:
        super().__init__()
        self.base_layer = base_layer
        self.active_adapters: list[str] = []
        self.merged_adapters: list[str] = []
        self.adapters_disabled = False
        self.composition = None  # a core.composition block set by PeftModel, or None
        self.rows = slice(None)  # the batch rows a composition is computing (BatchSplit, Parallel)
        self.fusion = nn.ModuleDict()  # AdapterFusion layers, by Fuse.key
        self.shared: dict[str, nn.Module] = {}  # each adapter's model-level tensors (core.shared), where it has them

    # ---- what each method provides -------------------------------------------------------------
    @classmethod
    def can_wrap(cls, module: nn.Module) -> bool:
        """Whether this module instance suits the method (e.g. BitFit needs a bias)."""
        return True

    @classmethod
    def expected_shapes(cls, base_layer: nn.Module, config: PeftConfig, module_name: str) -> dict[str, tuple]:
        """Shapes of the tensors one adapter adds, under their saved (relative) key names.

        Raises ``ConfigError`` when the config cannot apply to this module. Used by the dry-run plan and
        to check a checkpoint before the model is touched.
        """
        raise NotImplementedError

    @classmethod
    def planned_trainable(cls, base_layer: nn.Module, config: PeftConfig, module_name: str) -> int | None:
        """How many parameters the adapter trains here, where that is not the size of its saved tensors (None)."""
        return None

    def add_adapter(self, name: str, config: PeftConfig, module_name: str) -> None:
        raise NotImplementedError

    def apply_adapters(self, names: list[str], *args, **kwargs):
        """The module's output with the named adapters applied (in order; none: the base module)."""
        raise NotImplementedError

    def adapter_deltas(self, names: list[str], *args, **kwargs) -> tuple[torch.Tensor, torch.Tensor]:
        """(the module's output without adapters h, the stacked changes aₖ each named adapter alone makes to h)."""
        base_output = self.apply_adapters([], *args, **kwargs)
        return base_output, torch.stack([self.apply_adapters([n], *args, **kwargs) - base_output for n in names])

    def attach(self, model: nn.Module, module_name: str, config: PeftConfig) -> None:
        """Called once the layer sits in ``model``, for methods that need more of it than their module."""

    def reconfigure(self, name: str, config: PeftConfig, module_name: str) -> None:
        """Take a new config for an existing adapter whose tensors keep their shapes (hot-swapping weights saved
        with, say, another LoRA alpha); a method whose layer derives nothing else from its config does nothing."""

    def delta_weight(self, name: str) -> torch.Tensor:
        """The adapter's update in the layout of ``base_layer.weight`` (mergeable methods)."""
        raise NotImplementedError

    def merged_weight(self, name: str, weight: torch.Tensor) -> torch.Tensor:
        return weight + self.delta_weight(name)

    def unmerged_weight(self, name: str, weight: torch.Tensor) -> torch.Tensor:
        return weight - self.delta_weight(name)

    def merged_bias(self, name: str, bias: torch.Tensor) -> torch.Tensor:
        """The base bias once the adapter is folded in (unchanged unless a method says otherwise)."""
        return bias

    def unmerged_bias(self, name: str, bias: torch.Tensor) -> torch.Tensor:
        return bias

    def unwrapped(self) -> nn.Module:
        """The module that replaces this layer in ``merge_and_unload`` / ``unload``."""
        return self.base_layer

    # ---- generic --------------------------------------------------------------------------------
    @property
    def base(self) -> nn.Module:
        return base_of(self.base_layer)

    @property
    def weight(self) -> torch.Tensor:
        return self.base.weight

    @property
    def bias(self) -> torch.Tensor | None:
        return getattr(self.base, "bias", None)

    def own(self, names: list[str]) -> list[str]:
        """Of ``names``, the adapters this layer holds and has not merged, in order."""
        return [n for n in names if self.has_adapter(n) and n not in self.merged_adapters]

    @staticmethod
    def module_input(args: tuple, kwargs: dict) -> torch.Tensor:
        """The wrapped module's main input: its first argument, or ``hidden_states`` where a block passes it by
        name (transformers' attention and feed-forward modules)."""
        return args[0] if args else kwargs["hidden_states"]

    def call_base(self, names: list[str], *args, **kwargs):
        """The wrapped module's output; a nested adapter layer applies the same ``names``."""
        if isinstance(self.base_layer, AdapterLayer):
            return self.base_layer.apply_adapters(names, *args, **kwargs)
        return self.base_layer(*args, **kwargs)

    @property
    def adapter_names(self) -> list[str]:
        names: dict[str, None] = {}
        for attr in self.adapter_attributes:
            names.update(dict.fromkeys(getattr(self, attr).keys()))
        return list(names)

    def has_adapter(self, name: str) -> bool:
        return any(name in getattr(self, attr) for attr in self.adapter_attributes)

    def adapters_to_apply(self) -> list[str]:
        """Active adapters that this forward pass must compute (not disabled, not merged, present)."""
        return [] if self.adapters_disabled else self.own(self.active_adapters)

    def forward(self, *args, **kwargs):
        if self.adapters_disabled:
            return self.apply_adapters([], *args, **kwargs)
        if self.composition is None:
            return self.apply_adapters(self.active_adapters, *args, **kwargs)
        return self.composition.run(self, args, kwargs)

    def adapter_state_dict(self, name: str) -> dict[str, torch.Tensor]:
        """The adapter's live tensors, keyed as in peft's files relative to this layer."""
        tensors = {}
        for attr in self.adapter_attributes:
            container = getattr(self, attr)
            if name not in container:
                continue
            item = container[name]
            if isinstance(item, torch.Tensor):
                tensors[attr] = item
            else:
                tensors.update({f"{attr}.{key}": p for key, p in item.named_parameters()})
        return tensors

    def frozen_tensors(self, name: str) -> list[torch.Tensor]:
        """The adapter's saved tensors that do not train (``frozen_attributes``)."""
        return [getattr(self, attr)[name] for attr in self.frozen_attributes if name in getattr(self, attr)]

    def saved_state_dict(self, name: str) -> dict[str, torch.Tensor]:
        """What a checkpoint holds of the adapter: its live tensors, unless a method saves a reduced form."""
        return self.adapter_state_dict(name)

    def remove_adapter(self, name: str) -> None:
        if name in self.merged_adapters:
            raise ConfigError(f"adapter '{name}' is merged; unmerge it before removing it")
        for attr in self.adapter_attributes:
            container = getattr(self, attr)
            if name in container:
                del container[name]
        self.shared.pop(name, None)
        self.active_adapters = [n for n in self.active_adapters if n != name]

    def check_mergeable(self) -> None:
        if not self.mergeable:
            raise ConfigError(
                f"{type(self).__name__} cannot be merged into the base weights: its output is not a "
                f"function of a changed weight"
            )

    def merge(self, names: list[str], safe_merge: bool = False) -> None:
        self.check_mergeable()
        for name in names:
            if name in self.merged_adapters or not self.has_adapter(name):
                continue
            self._fold(name, self.merged_weight, self.merged_bias, safe_merge)
            self.merged_adapters.append(name)

    def unmerge(self) -> None:
        while self.merged_adapters:
            name = self.merged_adapters.pop()
            self._fold(name, self.unmerged_weight, self.unmerged_bias, safe_merge=False)

    @torch.no_grad()
    def _fold(self, name: str, weight_rule, bias_rule, safe_merge: bool) -> None:
        """Replace the base weight and bias by ``rule(current)``, computed in float32; all or nothing."""
        dequantize_for_merge(self.base, name)
        updates = []
        for parameter, rule in ((getattr(self.base, "weight", None), weight_rule), (self.bias, bias_rule)):
            if parameter is not None:
                updates.append((parameter, rule(name, parameter.detach().float()).to(parameter.dtype)))
        if safe_merge and not all(torch.isfinite(value).all() for _, value in updates):
            raise ValueError(f"merging adapter '{name}' gives non-finite weights; the model is unchanged")
        for parameter, value in updates:
            parameter.copy_(value)

    def extra_repr(self) -> str:
        return f"adapters={self.adapter_names}, active={self.active_adapters}, merged={self.merged_adapters}"
