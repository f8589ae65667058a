"""GLoRA: a generalised update of a layer's weight and bias through five trained paths.

Chavan et al., 2023, "One-for-All: Generalized LoRA for Parameter-Efficient Fine-tuning". For a frozen Linear with
weight W (out × in) and bias b (out) and five trained paths A, B, C, D, E:

    W' = W + W ⊙ A + B,    b' = b + b ⊙ D + E + W C,    h = W' x + b'

(⊙ broadcasts). Each path takes the form its config field names: ``lora`` a product Xd Xu of rank r (A, B: out × in;
C: in × 1), ``vector`` a column X (A, B, C) or a vector X (D, E: out), ``constant`` one scalar X, ``none`` a frozen
zero tensor ``zeros`` (saved, as peft does). A layer without a bias has C, D, E at ``none``. With ``init_weights``
every trained path starts at zero (a ``lora`` path's Xd; Xu is Kaiming-uniform), so the model starts unchanged.
Merging folds W' and b' into the layer; several merged adapters are each computed from the original W and b, which
are recovered from the merged ones as in peft. Saved tensors: ``glora_<path>.Xd`` / ``.Xu`` / ``.X`` / ``.zeros``;
field names and defaults are peft's.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from peftkit.core.config import TargetedConfig, config_dataclass
from peftkit.core.layer import AdapterLayer
from peftkit.core.registry import Method, register_method
from peftkit.methods.config_rules import require_choice, require_positive
from peftkit.methods.lora import LORA_DEFAULT_TARGETS

PATHS = ("A", "B", "C", "D", "E")


@config_dataclass
class GloraConfig(TargetedConfig):
    """GLoRA settings, with peft's field names and defaults."""

    peft_type = "GLORA"
    default_targets = LORA_DEFAULT_TARGETS
    r: int = 8
    bias: str = "none"
    config_A_B: str = "lora"
    config_C: str = "lora"
    config_D_E: str = "constant"
    init_weights: bool = True

    field_aliases = {"rank": "r"}

    def validate(self) -> None:
        super().validate()
        require_positive("r", self.r, integer=True)
        require_choice("bias", self.bias, ("none", "all", "glora_only"))
        require_choice("config_A_B", self.config_A_B, ("lora", "vector", "constant", "none"))
        require_choice("config_C", self.config_C, ("lora", "vector", "none"))
        require_choice("config_D_E", self.config_D_E, ("vector", "constant", "none"))


def path_shapes(form: str, rows: int, columns: int, r: int, column: bool = True) -> dict[str, tuple]:
    """The tensors of one path of the given form, for a path value of shape rows × columns."""
    if form == "lora":
        return {"Xd": (rows, r), "Xu": (r, columns)}
    if form == "vector":
        return {"X": (rows, 1) if column else (rows,)}
    if form == "constant":
        return {"X": (1,)}
    return {"zeros": (rows, columns) if columns else (rows,)}


class GloraLinear(AdapterLayer):
    adapter_attributes = tuple(f"glora_{p}" for p in PATHS)

    def __init__(self, base_layer: nn.Module) -> None:
        super().__init__(base_layer)
        for attr in self.adapter_attributes:
            setattr(self, attr, nn.ModuleDict())

    @classmethod
    def expected_shapes(cls, base_layer: nn.Module, config: GloraConfig, module_name: str) -> dict[str, tuple]:
        out_features, in_features = base_layer.weight.shape
        has_bias = base_layer.bias is not None
        forms = {"A": config.config_A_B, "B": config.config_A_B,
                 "C": config.config_C if has_bias else "none",
                 "D": config.config_D_E if has_bias else "none", "E": config.config_D_E if has_bias else "none"}
        sizes = {"A": (out_features, in_features), "B": (out_features, in_features), "C": (in_features, 1),
                 "D": (out_features, 0), "E": (out_features, 0)}
        shapes = {}
        for path in PATHS:
            rows, columns = sizes[path]
            for key, shape in path_shapes(forms[path], rows, columns, config.r, column=path in "ABC").items():
                shapes[f"glora_{path}.{key}"] = shape
        return shapes

    @classmethod
    def planned_trainable(cls, base_layer: nn.Module, config: GloraConfig, module_name: str) -> int:
        shapes = cls.expected_shapes(base_layer, config, module_name)
        return sum(math.prod(shape) for key, shape in shapes.items() if not key.endswith(".zeros"))

    def add_adapter(self, name: str, config: GloraConfig, module_name: str) -> None:
        weight = self.weight
        dtype = weight.dtype if weight.dtype.is_floating_point else torch.float32
        tensors: dict[str, dict[str, torch.Tensor]] = {path: {} for path in PATHS}
        for key, shape in self.expected_shapes(self.base, config, module_name).items():
            path, _, part = key.removeprefix("glora_").partition(".")
            tensor = torch.zeros(shape)
            if part == "Xu" or (part == "Xd" and not config.init_weights):
                nn.init.kaiming_uniform_(tensor, a=math.sqrt(5))
            elif part == "X" and not config.init_weights:
                if shape == (1,):
                    nn.init.normal_(tensor, mean=0.0, std=0.02)
                else:
                    nn.init.kaiming_uniform_(tensor.unsqueeze(0) if tensor.dim() == 1 else tensor, a=math.sqrt(5))
            tensors[path][part] = tensor
        for path in PATHS:
            getattr(self, f"glora_{path}")[name] = nn.ParameterDict({
                part: nn.Parameter(t.to(device=weight.device, dtype=dtype), requires_grad=part != "zeros")
                for part, t in tensors[path].items()})

    def frozen_tensors(self, name: str) -> list[torch.Tensor]:
        return [getattr(self, f"glora_{p}")[name]["zeros"] for p in PATHS
                if name in getattr(self, f"glora_{p}") and "zeros" in getattr(self, f"glora_{p}")[name]]

    def path(self, name: str, path: str, dtype: torch.dtype) -> torch.Tensor:
        """The value of one path (broadcastable to its place in W' or b')."""
        tensors = getattr(self, f"glora_{path}")[name]
        if "Xd" in tensors:
            value = tensors["Xd"] @ tensors["Xu"]
        elif "X" in tensors:
            value = tensors["X"][0] if tensors["X"].shape == (1,) else tensors["X"]
        else:
            value = tensors["zeros"]
        return value.to(dtype)

    def updates(self, name: str, weight: torch.Tensor, bias: torch.Tensor | None):
        """(W ⊙ A + B, b ⊙ D + E + W C or None) for original W and b."""
        paths = {p: self.path(name, p, weight.dtype) for p in PATHS}
        weight_update = weight * paths["A"] + paths["B"]
        if bias is None:
            return weight_update, None
        return weight_update, bias * paths["D"] + paths["E"] + (weight @ paths["C"]).squeeze(-1)

    def original(self, names: list[str], weight: torch.Tensor, bias: torch.Tensor | None):
        """The W and b from before the named adapters were merged into ``weight`` and ``bias``."""
        if not names:
            return weight, bias
        paths = {p: sum(self.path(n, p, weight.dtype) for n in names) for p in PATHS}
        weight0 = (weight - paths["B"]) / (1.0 + paths["A"])
        if bias is None:
            return weight0, None
        coupling = sum((weight0 @ self.path(n, "C", weight.dtype)).squeeze(-1) for n in names)
        return weight0, (bias - paths["E"] - coupling) / (1.0 + paths["D"])

    def current(self) -> tuple[torch.Tensor, torch.Tensor | None]:
        bias = self.bias
        return self.weight.detach().float(), None if bias is None else bias.detach().float()

    def merged_weight(self, name: str, weight: torch.Tensor) -> torch.Tensor:
        weight0, _ = self.original(self.merged_adapters, weight, None)
        return weight + self.updates(name, weight0, None)[0]

    def unmerged_weight(self, name: str, weight: torch.Tensor) -> torch.Tensor:
        weight0, _ = self.original([*self.merged_adapters, name], weight, None)
        return weight - self.updates(name, weight0, None)[0]

    def merged_bias(self, name: str, bias: torch.Tensor) -> torch.Tensor:
        weight0, bias0 = self.original(self.merged_adapters, self.current()[0], bias)
        return bias + self.updates(name, weight0, bias0)[1]

    def unmerged_bias(self, name: str, bias: torch.Tensor) -> torch.Tensor:
        weight0, bias0 = self.original([*self.merged_adapters, name], self.current()[0], bias)
        return bias - self.updates(name, weight0, bias0)[1]

    def apply_adapters(self, names: list[str], x: torch.Tensor, *args, **kwargs) -> torch.Tensor:
        result = self.call_base(names, x, *args, **kwargs)
        weight, bias = self.weight, self.bias
        for name in self.own(names):
            weight_update, bias_update = self.updates(name, weight, bias)
            result = result + F.linear(x.to(weight_update.dtype), weight_update, bias_update).to(result.dtype)
        return result


register_method(Method(name="glora", config_cls=GloraConfig, layers={nn.Linear: GloraLinear}, learning_rate=1e-3,
                       train_defaults={"r": 8, "target_modules": "all-linear"},
                       description="GLoRA: trained scalings and shifts of a layer's weight and bias (W ⊙ A + B, …)"))
