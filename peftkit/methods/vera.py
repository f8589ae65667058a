"""VeRA: one pair of frozen random matrices for the whole model, and two trained scaling vectors per layer.

Kopiczko, Blankevoort and Asano, 2024, "VeRA: Vector-based Random Matrix Adaptation". A ∈ ℝ^{r × n} and
B ∈ ℝ^{m × r} are drawn once (Kaiming-uniform from a generator seeded with ``projection_prng_key``), n and m being
the largest input and output widths among the adapted modules. A layer with weight W (out × in) uses their top-left
corners A_in = A[:, :in], B_out = B[:out, :]:

    h = W x + b + Λ_b B_out Λ_d A_in x,     Λ_d = diag(λ_d) (r),  Λ_b = diag(λ_b) (out)

λ_b starts at zero (so the model starts unchanged) and λ_d at ``d_initial``. Saved tensors, as peft names them:
``vera_lambda_b`` = λ_b, ``vera_lambda_d`` = λ_d per layer, and ``base_model.vera_A`` = A, ``base_model.vera_B`` = B
once for the model when ``save_projection`` (otherwise they are drawn again from the key when loading). Field names
and defaults are peft's.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from peftkit.core.config import TargetedConfig, config_dataclass
from peftkit.core.registry import Method, register_method
from peftkit.core.shared import SharedTensors
from peftkit.methods.config_rules import require_choice, require_positive, require_probability
from peftkit.methods.lora import LORA_DEFAULT_TARGETS, linear_shape
from peftkit.methods.weight_delta import WeightDeltaLayer, weight_layers


def largest_widths(modules: dict[str, nn.Module]) -> tuple[int, int]:
    """(largest input width, largest output width) among Linear / Conv1D modules."""
    shapes = [linear_shape(module) for module in modules.values()]
    return max(s[0] for s in shapes), max(s[1] for s in shapes)


def kaiming_uniform(shape: tuple[int, ...], generator: torch.Generator) -> torch.Tensor:
    """U(−√(6 / fan_in), √(6 / fan_in)) in float32 on the CPU, drawn from ``generator`` (peft's draw)."""
    return nn.init.kaiming_uniform_(torch.empty(shape), generator=generator)


@config_dataclass
class RandomProjectionConfig(TargetedConfig):
    """What VeRA and PVeRA share: frozen random projections drawn from a key, trained scaling vectors."""

    default_targets = LORA_DEFAULT_TARGETS
    r: int = 256
    projection_prng_key: int = 0
    save_projection: bool = True
    d_initial: float = 0.1
    fan_in_fan_out: bool = False  # peft's flag for Conv1D; the layout is read from the module type
    bias: str = "none"
    init_weights: bool = True

    omit_at_default = ("exclude_modules",)  # peft's VeRA and PVeRA have no such field

    @property
    def dropout(self) -> float:
        return getattr(self, f"{self.peft_type.lower()}_dropout")

    def validate(self) -> None:
        super().validate()
        require_positive("r", self.r, integer=True)
        require_probability(f"{self.peft_type.lower()}_dropout", self.dropout)
        require_choice("bias", self.bias, ("none", "all", f"{self.peft_type.lower()}_only"))


@config_dataclass
class VeraConfig(RandomProjectionConfig):
    """VeRA settings, with peft's field names and defaults."""

    peft_type = "VERA"
    vera_dropout: float = 0.0

    field_aliases = {"rank": "r", "dropout": "vera_dropout", "targets": "target_modules"}


class VeraProjections(SharedTensors):
    """The frozen A (r × largest in) and B (largest out × r), saved only with ``save_projection``; drawn from
    ``projection_prng_key`` as peft draws them. PVeRA's are the same with A twice as tall."""

    prefix = "vera"  # the saved keys: <prefix>_A, <prefix>_B
    a_rows_per_rank = 1

    def __init__(self, config: VeraConfig, modules: dict[str, nn.Module]) -> None:
        super().__init__(config, modules)
        in_features, out_features = largest_widths(modules)
        generator = torch.Generator().manual_seed(config.projection_prng_key)
        a = kaiming_uniform((self.a_rows_per_rank * config.r, in_features), generator)
        b = kaiming_uniform((out_features, config.r), generator)
        where = self.placement(modules)
        self.register_buffer(f"{self.prefix}_A", a.to(**where), persistent=config.save_projection)
        self.register_buffer(f"{self.prefix}_B", b.to(**where), persistent=config.save_projection)


class VeraLinear(WeightDeltaLayer):
    adapter_attributes = ("vera_lambda_b", "vera_lambda_d")

    def __init__(self, base_layer: nn.Module) -> None:
        super().__init__(base_layer)
        self.vera_lambda_b = nn.ParameterDict()
        self.vera_lambda_d = nn.ParameterDict()
        self.dropout: dict[str, float] = {}

    @classmethod
    def expected_shapes(cls, base_layer: nn.Module, config: VeraConfig, module_name: str) -> dict[str, tuple]:
        _, out_features = linear_shape(base_layer)
        return {"vera_lambda_b": (out_features,), "vera_lambda_d": (config.r,)}

    def add_adapter(self, name: str, config: VeraConfig, module_name: str) -> None:
        lambda_b, lambda_d = self.new_tensor(self.out_features), self.new_tensor(config.r)
        if config.init_weights:
            lambda_b.zero_()
            lambda_d.fill_(config.d_initial)
        else:
            lambda_b.fill_(1.0)
            lambda_d.normal_()
        self.vera_lambda_b[name] = nn.Parameter(lambda_b)
        self.vera_lambda_d[name] = nn.Parameter(lambda_d)
        self.dropout[name] = config.vera_dropout

    def projections(self, name: str) -> tuple[torch.Tensor, torch.Tensor]:
        """(A_in, B_out): the corners of the shared matrices this layer uses."""
        shared = self.shared[name]
        return shared.vera_A[:, : self.in_features], shared.vera_B[: self.out_features, :]

    def update(self, name: str) -> torch.Tensor:
        a, b = self.projections(name)
        return (self.vera_lambda_b[name][:, None] * b) @ (self.vera_lambda_d[name][:, None] * a)

    def update_output(self, name: str, x: torch.Tensor) -> torch.Tensor:
        a, b = self.projections(name)
        lambda_d = self.vera_lambda_d[name]
        x = F.dropout(x.to(lambda_d.dtype), self.dropout[name], self.training)
        return self.vera_lambda_b[name] * F.linear(lambda_d * F.linear(x, a.to(x.dtype)), b.to(x.dtype))

    def remove_adapter(self, name: str) -> None:
        super().remove_adapter(name)
        self.dropout.pop(name, None)


register_method(Method(name="vera", config_cls=VeraConfig, layers=weight_layers(VeraLinear), shared=VeraProjections,
                       learning_rate=4e-3, train_defaults={"r": 256, "target_modules": "all-linear"},
                       description="VeRA: frozen random A, B shared by all layers, trained scaling vectors λ_d, λ_b"))
