"""LoRA on parameters, not modules (peft's ``target_parameters``): the weights of mixture-of-experts layers stored
as one 3-D tensor per projection (E experts × out × in, or E × in × out where the module says ``is_transposed``),
or any 2-D parameter.

For expert e of a parameter W (E experts), with A (rE × in) and B (out × rE) read as E pairs of rank r:

    W'_e = W_e + s · B_e A_e,     A_e = A.reshape(E, r, in)[e],   B_e = B.reshape(out, r, E)[:, :, e]

(a 2-D parameter is one expert: W' = W + s · B A). The module runs with W' in place of W (``torch.func.
functional_call``), so its own routing and expert loop are untouched. Several parameters of one module are held by
one layer; in files each sits where peft's nested wrappers put it: the module's last such parameter at
``lora_A.weight``, each earlier one a ``base_layer.`` further in. Dropout, DoRA and ``lora_bias`` do not apply (as
in peft); the update merges into the parameter.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.func import functional_call

from peftkit.core.errors import ConfigError
from peftkit.core.layer import AdapterLayer
from peftkit.methods.lora.factors import init_factors


def targeted_parameters(module: nn.Module, module_name: str, targets: list[str]) -> list[str]:
    """Names of ``module``'s own parameters that ``targets`` (``<module name or suffix>.<parameter>``) hit, in the
    module's order (which sets the nesting in peft's files, whatever the order of ``targets``)."""
    found = []
    for parameter, _ in module.named_parameters(recurse=False):
        key = f"{module_name}.{parameter}"
        if any(key == target or key.endswith("." + target) for target in targets):
            found.append(parameter)
    return found


def expert_shape(module: nn.Module, parameter: str) -> tuple[int, int, int]:
    """(experts, in, out) of a targeted parameter, read as peft reads it."""
    shape = getattr(module, parameter).shape
    if len(shape) == 2:
        return 1, shape[1], shape[0]
    if len(shape) != 3:
        raise ConfigError(f"target_parameters: '{parameter}' has {len(shape)} dimensions; LoRA adapts 2-D and 3-D "
                          f"parameters")
    experts, first, second = shape
    return (experts, first, second) if getattr(module, "is_transposed", False) else (experts, second, first)


class LoraParameters(AdapterLayer):
    """LoRA on the targeted parameters of one module."""

    adapter_attributes = ("lora_A", "lora_B")

    def __init__(self, base_layer: nn.Module) -> None:
        super().__init__(base_layer)
        self.lora_A = nn.ModuleDict()  # adapter -> parameter name -> Linear(in, r·E)
        self.lora_B = nn.ModuleDict()  # adapter -> parameter name -> Linear(r·E, out)
        self.scaling: dict[str, float] = {}

    @classmethod
    def can_wrap(cls, module: nn.Module) -> bool:
        """A module with a matrix or expert-stack parameter of its own (not a norm, not a container)."""
        return any(p.dim() in (2, 3) for p in module.parameters(recurse=False))

    @classmethod
    def expected_shapes(cls, base_layer: nn.Module, config, module_name: str) -> dict[str, tuple]:
        parameters = targeted_parameters(base_layer, module_name, config.target_parameters or [])
        if not parameters:
            raise ConfigError(f"target_modules: '{module_name}' ({type(base_layer).__name__}) is not a module LoRA "
                              f"wraps, and target_parameters names none of its parameters")
        if config.lora_dropout or config.use_dora or config.lora_bias or config.init_from_weight:
            raise ConfigError("target_parameters works without lora_dropout, use_dora, lora_bias and inits from the "
                              "weight (as in peft)")
        r = config.rank_for(module_name)
        shapes = {}
        for depth, parameter in enumerate(reversed(parameters)):
            experts, in_features, out_features = expert_shape(base_layer, parameter)
            prefix = "base_layer." * depth
            shapes[f"{prefix}lora_A.weight"] = (r * experts, in_features)
            shapes[f"{prefix}lora_B.weight"] = (out_features, r * experts)
        return shapes

    def add_adapter(self, name: str, config, module_name: str) -> None:
        self.expected_shapes(self.base, config, module_name)
        r = config.rank_for(module_name)
        self.scaling[name] = config.scaling_for(module_name)
        weight = next(self.base.parameters())
        options = {"device": weight.device, "dtype": weight.dtype if weight.dtype.is_floating_point else torch.float32}
        self.lora_A[name], self.lora_B[name] = nn.ModuleDict(), nn.ModuleDict()
        for parameter in targeted_parameters(self.base, module_name, config.target_parameters):
            experts, in_features, out_features = expert_shape(self.base, parameter)
            self.lora_A[name][parameter] = nn.Linear(in_features, r * experts, bias=False, **options)
            self.lora_B[name][parameter] = nn.Linear(r * experts, out_features, bias=False, **options)
            init_factors(self.lora_A[name][parameter], self.lora_B[name][parameter], config.init_lora_weights, r)

    def _nesting(self, name: str) -> list[str]:
        """The adapter's parameters, outermost (the module's last) first."""
        return list(reversed(list(self.lora_A[name])))

    def adapter_state_dict(self, name: str) -> dict[str, torch.Tensor]:
        tensors = {}
        for depth, parameter in enumerate(self._nesting(name)):
            prefix = "base_layer." * depth
            tensors[f"{prefix}lora_A.weight"] = self.lora_A[name][parameter].weight
            tensors[f"{prefix}lora_B.weight"] = self.lora_B[name][parameter].weight
        return tensors

    def delta(self, name: str, parameter: str) -> torch.Tensor:
        """s · B_e A_e for every expert, in the parameter's own layout."""
        experts, _, _ = expert_shape(self.base, parameter)
        a, b = self.lora_A[name][parameter].weight, self.lora_B[name][parameter].weight
        if experts == 1 and getattr(self.base, parameter).dim() == 2:
            return self.scaling[name] * (b @ a)
        a = a.reshape(experts, -1, a.shape[-1])  # E × r × in
        b = b.reshape(b.shape[0], -1, experts)  # out × r × E
        pattern = "ore,eri->eio" if getattr(self.base, "is_transposed", False) else "ore,eri->eoi"
        return self.scaling[name] * torch.einsum(pattern, b, a)

    def apply_adapters(self, names: list[str], *args, **kwargs):
        mine = self.own(names)
        if not mine:
            return self.call_base(names, *args, **kwargs)
        if isinstance(self.base_layer, AdapterLayer):
            raise ConfigError("target_parameters: the module also holds another adapter layer; LoRA on its "
                              "parameters must wrap the module itself")
        updated = {}
        for name in mine:
            for parameter in self.lora_A[name]:
                current = updated.get(parameter, getattr(self.base, parameter))
                updated[parameter] = current + self.delta(name, parameter).to(current.dtype)
        return functional_call(self.base_layer, updated, args, kwargs)

    def merge(self, names: list[str], safe_merge: bool = False) -> None:
        names = [n for n in names if self.has_adapter(n) and n not in self.merged_adapters]
        with torch.no_grad():
            changes = [(getattr(self.base, p), self.delta(n, p)) for n in names for p in self.lora_A[n]]
            if safe_merge and not all(torch.isfinite(w.float() + d.float()).all() for w, d in changes):
                raise ValueError("merging gives non-finite weights; the model is unchanged")
            for weight, delta in changes:
                weight.add_(delta.to(weight.dtype))
        self.merged_adapters.extend(names)

    def unmerge(self) -> None:
        with torch.no_grad():
            while self.merged_adapters:
                name = self.merged_adapters.pop()
                for parameter in self.lora_A[name]:
                    weight = getattr(self.base, parameter)
                    weight.sub_(self.delta(name, parameter).to(weight.dtype))

    def remove_adapter(self, name: str) -> None:
        super().remove_adapter(name)
        self.scaling.pop(name, None)
