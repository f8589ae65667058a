"""LoKr: a Kronecker-product weight update.

Yeh et al., 2024, "Navigating Text-To-Image Customization: From LyCORIS Fine-Tuning to Model Evaluation" (the
LyCORIS LoKr). The output and input widths are factored, out = a·b and in = c·d (each pair as close to a square as
``decompose_factor`` allows), and for a frozen W (out × in):

    h = W x + b + s · (W₁ ⊗ W₂) x,    W₁: a × c,  W₂: b × d,  s = α / r

Each factor is a full matrix when it is small next to the rank (``lokr_w1``, ``lokr_w2``), and otherwise a rank-r
product (``lokr_w1_a`` @ ``lokr_w1_b``: W₁ only with ``decompose_both``; ``lokr_w2_a`` @ ``lokr_w2_b``). W₁ (or
W₁'s left factor) starts at zero, so the model starts unchanged; ``init_weights="lycoris"`` zeroes W₂'s right factor
instead. Field names, defaults, the factoring rule and the saved tensors are peft's.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from peftkit.core.config import config_dataclass
from peftkit.core.errors import ConfigError
from peftkit.core.registry import Method, register_method
from peftkit.methods.lora import linear_shape
from peftkit.methods.lycoris import LycorisConfig, LycorisLayer
from peftkit.methods.weight_delta import weight_layers


@config_dataclass
class LoKrConfig(LycorisConfig):
    """LoKr settings, with peft's field names and defaults."""

    peft_type = "LOKR"
    init_weights: bool | str = True
    decompose_both: bool = False
    decompose_factor: int = -1
    rank_dropout_scale: bool = False

    def validate(self) -> None:
        super().validate()
        if not isinstance(self.init_weights, bool) and self.init_weights != "lycoris":
            raise ConfigError(f"init_weights must be True, False or 'lycoris', got {self.init_weights!r}")
        if isinstance(self.decompose_factor, bool) or not isinstance(self.decompose_factor, int) or (
                self.decompose_factor < 1 and self.decompose_factor != -1):
            raise ConfigError(f"decompose_factor must be -1 (near the square root) or a positive integer, "
                              f"got {self.decompose_factor!r}")


def factor_pair(dimension: int, factor: int = -1) -> tuple[int, int]:
    """(m, n) with m·n = dimension: (factor, dimension / factor) when ``factor`` divides the dimension, else the
    divisor pair nearest a square (m ≤ n) whose smaller member does not pass ``factor`` (-1: no bound)."""
    if factor > 0 and dimension % factor == 0:
        return factor, dimension // factor
    bound = dimension if factor == -1 else factor
    best = (1, dimension)
    for m in range(2, math.isqrt(dimension) + 1):
        if dimension % m == 0 and m <= bound:
            best = (m, dimension // m)
    return best


def kronecker_shapes(in_features: int, out_features: int, config: LoKrConfig, r: int) -> dict[str, tuple]:
    """The saved tensors' shapes for one Linear."""
    a, b = factor_pair(out_features, config.decompose_factor)
    c, d = factor_pair(in_features, config.decompose_factor)
    shapes = {}
    if config.decompose_both and r < max(a, c) / 2:
        shapes.update(lokr_w1_a=(a, r), lokr_w1_b=(r, c))
    else:
        shapes["lokr_w1"] = (a, c)
    if r < max(b, d) / 2:
        shapes.update(lokr_w2_a=(b, r), lokr_w2_b=(r, d))
    else:
        shapes["lokr_w2"] = (b, d)
    return shapes


class LoKrLinear(LycorisLayer):
    adapter_attributes = ("lokr_w1", "lokr_w1_a", "lokr_w1_b", "lokr_w2", "lokr_w2_a", "lokr_w2_b")

    def __init__(self, base_layer: nn.Module) -> None:
        super().__init__(base_layer)
        for attr in self.adapter_attributes:
            setattr(self, attr, nn.ParameterDict())

    @classmethod
    def expected_shapes(cls, base_layer: nn.Module, config: LoKrConfig, module_name: str) -> dict[str, tuple]:
        in_features, out_features = linear_shape(base_layer)
        return kronecker_shapes(in_features, out_features, config, config.rank_for(module_name))

    def add_adapter(self, name: str, config: LoKrConfig, module_name: str) -> None:
        self.start_adapter(name, config, module_name, normalise=config.rank_dropout_scale)
        for attr, shape in self.expected_shapes(self.base, config, module_name).items():
            tensor = self.new_tensor(*shape)
            nn.init.kaiming_uniform_(tensor, a=math.sqrt(5))
            getattr(self, attr)[name] = nn.Parameter(tensor)
        if config.init_weights == "lycoris":
            nn.init.zeros_(self.lokr_w2[name] if name in self.lokr_w2 else self.lokr_w2_b[name])
        elif config.init_weights:
            nn.init.zeros_(self.lokr_w1[name] if name in self.lokr_w1 else self.lokr_w1_a[name])

    def _factor(self, name: str, which: str) -> torch.Tensor:
        full = getattr(self, f"lokr_{which}")
        if name in full:
            return full[name]
        return getattr(self, f"lokr_{which}_a")[name] @ getattr(self, f"lokr_{which}_b")[name]

    def factored_update(self, name: str) -> torch.Tensor:
        return torch.kron(self._factor(name, "w1"), self._factor(name, "w2"))


register_method(Method(name="lokr", config_cls=LoKrConfig, layers=weight_layers(LoKrLinear), learning_rate=2e-3,
                       peft_module_types=(nn.Linear,),
                       train_defaults={"r": 8, "alpha": 16, "target_modules": "all-linear"},
                       description="LoKr: a Kronecker product of two small matrices as the weight update"))
