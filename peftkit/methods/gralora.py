"""GraLoRA: LoRA split into a k × k grid of independent low-rank blocks.

Jung et al., 2025, "GraLoRA: Granular Low-Rank Adaptation for Parameter-Efficient Fine-Tuning". The input is cut
into k slices xₙ (in / k each) and the output into k slices (out / k each). Input slice n has its own Aₙ
(in/k × r) and output slice j its own Bⱼ (r × out/k); both split their r columns / rows into k sub-ranks of s = r / k.
The block of ΔW from input slice n to output slice j is the rank-s product

    ΔWⱼₙ = (Aₙ[:, j-th sub-rank] · Bⱼ[n-th sub-rank, :])ᵀ,    h = W x + b + (α / (r + r_h)) · (ΔW + B_h A_h) x

so the update has rank up to k · r for the parameters of a rank-r LoRA. With ``hybrid_r`` = r_h > 0 a plain LoRA
pair (A_h: r_h × in, B_h: out × r_h) is added. A starts Kaiming-uniform and B at zero (the model starts
unchanged). Saved tensors, peft's layout: ``gralora_A`` (k × in/k × r), ``gralora_B`` (k × r × out/k),
``gralora_A_general.weight`` / ``gralora_B_general.weight`` (hybrid only); field names and defaults are peft's.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from peftkit.core.config import TargetedConfig, config_dataclass
from peftkit.core.errors import ConfigError
from peftkit.core.registry import Method, register_method
from peftkit.methods.config_rules import require_choice, require_positive, require_probability
from peftkit.methods.lora import LORA_DEFAULT_TARGETS, linear_shape
from peftkit.methods.weight_delta import WeightDeltaLayer, weight_layers


@config_dataclass
class GraloraConfig(TargetedConfig):
    """GraLoRA settings, with peft's field names and defaults."""

    peft_type = "GRALORA"
    default_targets = {**LORA_DEFAULT_TARGETS, "phi": ["q_proj", "v_proj", "fc1", "fc2"]}
    r: int = 32
    hybrid_r: int = 0
    alpha: float = 64
    gralora_dropout: float = 0.0
    gralora_k: int = 2
    fan_in_fan_out: bool = False  # peft's flag for Conv1D; the layout is read from the module type
    bias: str = "none"
    init_weights: bool = True

    field_aliases = {"rank": "r", "k": "gralora_k", "dropout": "gralora_dropout", "lora_alpha": "alpha"}

    def validate(self) -> None:
        super().validate()
        require_positive("r", self.r, integer=True)
        require_positive("gralora_k", self.gralora_k, integer=True)
        require_positive("alpha", self.alpha)
        if isinstance(self.hybrid_r, bool) or not isinstance(self.hybrid_r, int) or self.hybrid_r < 0:
            raise ConfigError(f"hybrid_r must be a non-negative integer, got {self.hybrid_r!r}")
        if self.r % self.gralora_k:
            raise ConfigError(f"r ({self.r}) must be divisible by gralora_k ({self.gralora_k})")
        require_probability("gralora_dropout", self.gralora_dropout)
        require_choice("bias", self.bias, ("none", "all", "gralora_only"))


class GraloraLinear(WeightDeltaLayer):
    adapter_attributes = ("gralora_A", "gralora_B", "gralora_A_general", "gralora_B_general")

    def __init__(self, base_layer: nn.Module) -> None:
        super().__init__(base_layer)
        self.gralora_A = nn.ParameterDict()
        self.gralora_B = nn.ParameterDict()
        self.gralora_A_general = nn.ModuleDict()
        self.gralora_B_general = nn.ModuleDict()
        self.blocks: dict[str, int] = {}
        self.dropout: dict[str, float] = {}

    @classmethod
    def expected_shapes(cls, base_layer: nn.Module, config: GraloraConfig, module_name: str) -> dict[str, tuple]:
        in_features, out_features = linear_shape(base_layer)
        k, r = config.gralora_k, config.r
        if in_features % k or out_features % k:
            raise ConfigError(f"gralora_k {k} must divide the in ({in_features}) and out ({out_features}) features "
                              f"of '{module_name}'")
        shapes = {"gralora_A": (k, in_features // k, r), "gralora_B": (k, r, out_features // k)}
        if config.hybrid_r:
            shapes["gralora_A_general.weight"] = (config.hybrid_r, in_features)
            shapes["gralora_B_general.weight"] = (out_features, config.hybrid_r)
        return shapes

    def add_adapter(self, name: str, config: GraloraConfig, module_name: str) -> None:
        shapes = self.expected_shapes(self.base, config, module_name)
        k, r = config.gralora_k, config.r
        self.blocks[name] = k
        self.dropout[name] = config.gralora_dropout
        self.scaling[name] = config.alpha / (r + config.hybrid_r)
        # per slice: A (r × in/k) and B (out/k × r) initialised as in LoRA, then stored in peft's layout
        a = torch.stack([self._kaiming(r, self.in_features // k) for _ in range(k)]).transpose(1, 2).contiguous()
        b = torch.stack([self._start_b(self.out_features // k, r, config) for _ in range(k)]).transpose(1, 2)
        self.gralora_A[name] = nn.Parameter(a)
        self.gralora_B[name] = nn.Parameter(b.contiguous())
        if config.hybrid_r:
            general_a = nn.Linear(self.in_features, config.hybrid_r, bias=False).to(a)
            general_b = nn.Linear(config.hybrid_r, self.out_features, bias=False).to(a)
            general_a.weight.data = self._kaiming(*shapes["gralora_A_general.weight"])
            general_b.weight.data = self._start_b(*shapes["gralora_B_general.weight"], config)
            self.gralora_A_general[name] = general_a
            self.gralora_B_general[name] = general_b

    def _kaiming(self, *shape: int) -> torch.Tensor:
        tensor = self.new_tensor(*shape)
        nn.init.kaiming_uniform_(tensor, a=math.sqrt(5))
        return tensor

    def _start_b(self, rows: int, columns: int, config: GraloraConfig) -> torch.Tensor:
        return self.new_tensor(rows, columns).zero_() if config.init_weights else self._kaiming(rows, columns)

    def reconfigure(self, name: str, config: GraloraConfig, module_name: str) -> None:
        self.scaling[name] = config.alpha / (config.r + config.hybrid_r)
        self.dropout[name] = config.gralora_dropout

    def _grid(self, name: str) -> tuple[torch.Tensor, torch.Tensor]:
        """A as (input slice n, in/k, output slice j, s) and B as (output slice j, input slice n, s, out/k)."""
        a, b, k = self.gralora_A[name], self.gralora_B[name], self.blocks[name]
        s = a.shape[-1] // k
        return a.reshape(k, a.shape[1], k, s), b.reshape(k, k, s, b.shape[-1])

    def update(self, name: str) -> torch.Tensor:
        a, b = self._grid(name)
        transposed = torch.einsum("nijs,jnso->nijo", a, b).reshape(self.in_features, self.out_features)
        update = transposed.T
        if name in self.gralora_A_general:
            update = update + self.gralora_B_general[name].weight @ self.gralora_A_general[name].weight
        return update * self.scaling[name]

    def update_output(self, name: str, x: torch.Tensor) -> torch.Tensor:
        a, b = self._grid(name)
        x = x.to(a.dtype)
        p, training = self.dropout[name], self.training
        slices = F.dropout(x, p, training=training).unflatten(-1, (self.blocks[name], -1))
        mixed = torch.einsum("...ni,nijs->...jns", slices, a)
        result = torch.einsum("...jns,jnso->...jo", mixed, b).flatten(-2)
        if name in self.gralora_A_general:
            hybrid = F.dropout(x, p, training=training)
            result = result + self.gralora_B_general[name](self.gralora_A_general[name](hybrid))
        return result * self.scaling[name]

    def remove_adapter(self, name: str) -> None:
        super().remove_adapter(name)
        self.blocks.pop(name, None)
        self.dropout.pop(name, None)


register_method(Method(name="gralora", config_cls=GraloraConfig, layers=weight_layers(GraloraLinear),
                       learning_rate=1e-3,
                       train_defaults={"r": 8, "alpha": 16, "gralora_k": 2, "target_modules": "all-linear"},
                       description="GraLoRA: LoRA split into a k × k grid of independent low-rank blocks"))
