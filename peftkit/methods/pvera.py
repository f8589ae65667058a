"""PVeRA: VeRA whose scaled projection is a Gaussian: a mean and a log-variance, sampled while training.

Probabilistic VeRA (peft's PVeRA, after Kopiczko et al., 2024, "VeRA: Vector-based Random Matrix Adaptation"). As
VeRA, with one frozen A ∈ ℝ^{2r × n} (twice as many rows) and B ∈ ℝ^{m × r} for the model (Kaiming-uniform from a
generator seeded with ``projection_prng_key``; n, m the largest input and output widths), and per layer λ_d ∈ ℝ^{2r},
λ_b ∈ ℝ^{out}. With A_in = A[:, :in], B_out = B[:out, :]:

    [μ ; log σ²] = Λ_d A_in x,    z = μ + ε ⊙ σ, ε ~ N(0, I) (training, or ``sample_at_inference``), else z = μ
    h = W x + b + Λ_b B_out z

Merging folds in the mean: ΔW = Λ_b B_out diag(λ_d[:r]) A[:r, :in]. λ_b starts at zero, so the model starts
unchanged; λ_d at ``d_initial``. ``generator_seed`` seeds the noise (a CPU generator per adapter). Saved tensors, as
peft names them: ``pvera_lambda_b``, ``pvera_lambda_d`` per layer, and ``base_model.pvera_A`` = A,
``base_model.pvera_B`` = B once with ``save_projection``. Field names and defaults are peft's.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from peftkit.core.config import config_dataclass
from peftkit.core.registry import Method, register_method
from peftkit.methods.lora import linear_shape
from peftkit.methods.vera import RandomProjectionConfig, VeraProjections
from peftkit.methods.weight_delta import WeightDeltaLayer, weight_layers


@config_dataclass
class PveraConfig(RandomProjectionConfig):
    """PVeRA settings, with peft's field names and defaults."""

    peft_type = "PVERA"
    pvera_dropout: float = 0.0
    sample_at_inference: bool = False
    generator_seed: int | None = None

    field_aliases = {"rank": "r", "dropout": "pvera_dropout", "targets": "target_modules"}


class PveraProjections(VeraProjections):
    """The frozen A (2r × largest in) and B (largest out × r), saved only with ``save_projection``."""

    prefix = "pvera"
    a_rows_per_rank = 2


class PveraLinear(WeightDeltaLayer):
    adapter_attributes = ("pvera_lambda_b", "pvera_lambda_d")

    def __init__(self, base_layer: nn.Module) -> None:
        super().__init__(base_layer)
        self.pvera_lambda_b = nn.ParameterDict()
        self.pvera_lambda_d = nn.ParameterDict()
        self.settings: dict[str, tuple[float, bool, torch.Generator | None]] = {}  # dropout, sample, noise generator

    @classmethod
    def expected_shapes(cls, base_layer: nn.Module, config: PveraConfig, module_name: str) -> dict[str, tuple]:
        _, out_features = linear_shape(base_layer)
        return {"pvera_lambda_b": (out_features,), "pvera_lambda_d": (2 * config.r,)}

    def add_adapter(self, name: str, config: PveraConfig, module_name: str) -> None:
        lambda_b, lambda_d = self.new_tensor(self.out_features), self.new_tensor(2 * config.r)
        if config.init_weights:
            lambda_b.zero_()
            lambda_d.fill_(config.d_initial)
        else:
            lambda_b.fill_(1.0)
            lambda_d.normal_()
        self.pvera_lambda_b[name] = nn.Parameter(lambda_b)
        self.pvera_lambda_d[name] = nn.Parameter(lambda_d)
        seed = config.generator_seed
        generator = torch.Generator().manual_seed(seed) if seed is not None else None
        self.settings[name] = (config.pvera_dropout, config.sample_at_inference, generator)

    def projections(self, name: str) -> tuple[torch.Tensor, torch.Tensor]:
        """(A_in: 2r × in, B_out: out × r)."""
        shared = self.shared[name]
        return shared.pvera_A[:, : self.in_features], shared.pvera_B[: self.out_features, :]

    def update(self, name: str) -> torch.Tensor:
        a, b = self.projections(name)
        lambda_d = self.pvera_lambda_d[name]
        r = lambda_d.shape[0] // 2
        return (self.pvera_lambda_b[name][:, None] * b) @ (lambda_d[:r, None] * a[:r])

    def update_output(self, name: str, x: torch.Tensor) -> torch.Tensor:
        a, b = self.projections(name)
        lambda_d = self.pvera_lambda_d[name]
        dropout, sample, generator = self.settings[name]
        x = F.dropout(x.to(lambda_d.dtype), dropout, self.training)
        mean, log_variance = (lambda_d * F.linear(x, a.to(x.dtype))).chunk(2, dim=-1)
        z = mean
        if self.training or sample:
            std = torch.exp(0.5 * log_variance)
            if generator is None:
                noise = torch.randn_like(std)
            else:  # a CPU generator: drawn there, then moved
                noise = torch.randn(std.shape, dtype=std.dtype, generator=generator).to(std.device)
            z = mean + noise * std
        return self.pvera_lambda_b[name] * F.linear(z, b.to(x.dtype))

    def remove_adapter(self, name: str) -> None:
        super().remove_adapter(name)
        self.settings.pop(name, None)


register_method(Method(name="pvera", config_cls=PveraConfig, layers=weight_layers(PveraLinear),
                       shared=PveraProjections, learning_rate=4e-3,
                       train_defaults={"r": 256, "target_modules": "all-linear"},
                       description="PVeRA: VeRA with a sampled Gaussian in the shared random projection"))
