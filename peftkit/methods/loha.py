"""LoHa: a low-rank Hadamard-product update.

Hyeon-Woo et al., 2022, "FedPara: Low-Rank Hadamard Product for Communication-Efficient Federated Learning", as
used by LyCORIS. For a frozen W (out × in):

    h = W x + b + s · ((A₁ B₁) ⊙ (A₂ B₂)) x,    A₁, A₂: out × r,  B₁, B₂: r × in,  s = α / r

The Hadamard product of two rank-r matrices has rank up to r², for the parameters of a rank-2r LoRA. A₁, B₁, A₂
start Kaiming-uniform and B₂ at zero, so the model starts unchanged. Field names, defaults and the saved tensors
(``hada_w1_a`` = A₁, ``hada_w1_b`` = B₁, ``hada_w2_a``, ``hada_w2_b``) are peft's.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from peftkit.core.config import config_dataclass
from peftkit.core.registry import Method, register_method
from peftkit.methods.lora import linear_shape
from peftkit.methods.lycoris import LycorisConfig, LycorisLayer
from peftkit.methods.weight_delta import weight_layers


@config_dataclass
class LoHaConfig(LycorisConfig):
    """LoHa settings, with peft's field names and defaults."""

    peft_type = "LOHA"


class LoHaLinear(LycorisLayer):
    adapter_attributes = ("hada_w1_a", "hada_w1_b", "hada_w2_a", "hada_w2_b")

    def __init__(self, base_layer: nn.Module) -> None:
        super().__init__(base_layer)
        for attr in self.adapter_attributes:
            setattr(self, attr, nn.ParameterDict())

    @classmethod
    def expected_shapes(cls, base_layer: nn.Module, config: LoHaConfig, module_name: str) -> dict[str, tuple]:
        in_features, out_features = linear_shape(base_layer)
        r = config.rank_for(module_name)
        return {"hada_w1_a": (out_features, r), "hada_w1_b": (r, in_features),
                "hada_w2_a": (out_features, r), "hada_w2_b": (r, in_features)}

    def add_adapter(self, name: str, config: LoHaConfig, module_name: str) -> None:
        self.start_adapter(name, config, module_name, normalise=True)
        for attr, shape in self.expected_shapes(self.base, config, module_name).items():
            tensor = self.new_tensor(*shape)
            nn.init.kaiming_uniform_(tensor, a=math.sqrt(5))
            getattr(self, attr)[name] = nn.Parameter(tensor)
        if config.init_weights:
            nn.init.zeros_(self.hada_w2_b[name])

    def factored_update(self, name: str) -> torch.Tensor:
        return (self.hada_w1_a[name] @ self.hada_w1_b[name]) * (self.hada_w2_a[name] @ self.hada_w2_b[name])


register_method(Method(name="loha", config_cls=LoHaConfig, layers=weight_layers(LoHaLinear), learning_rate=1e-2,
                       peft_module_types=(nn.Linear,),
                       train_defaults={"r": 8, "alpha": 16, "target_modules": "all-linear"},
                       description="LoHa: a Hadamard product of two low-rank products as the weight update"))
