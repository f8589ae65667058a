"""WaveFT: the weight update as a sparse set of wavelet coefficients, brought back by an inverse 2-D wavelet transform.

Bilican et al., 2025, "Exploring Sparsity for Parameter Efficient Fine Tuning Using Wavelets". For a frozen W
(out × in), n coefficient positions drawn once at random (a permutation of the out · in positions seeded by
``random_loc_seed``, its first n kept, as FourierFT) and n trained coefficients c placed there in a matrix C
(padded by a zero row / column where out / in is odd):

    ΔW = s · IDWT₂(C) (cropped to out × in),    h = W x + b + ΔW x

With the Haar wavelet (``db1``; lo = (1, 1) / √2, hi = (1, −1) / √2) the quarters of C are the approximation
C_A (top left) and the details C_H (top right), C_V (bottom left), C_D (bottom right), and each coefficient at (p, q)
spreads over the 2 × 2 block at (2p, 2q):

    ΔW[2p + i, 2q + j] = s · Σ_{a,b ∈ {0,1}} C_ab[p, q] · f_b[i] · f_a[j],    f₀ = lo, f₁ = hi

``use_idwt=False`` uses ΔW = s · C directly. c starts at zero, so the model starts unchanged (``init_weights=False``:
normal with std 0.01). Only c (``waveft_spectrum``) is saved; the positions are rebuilt from the seed. Field names
and defaults are peft's; peftkit has the Haar wavelet only (peft's default) and not ``proportional_parameters``.
"""

from __future__ import annotations

import math
from dataclasses import field

import torch
from torch import nn

from peftkit.core.config import TargetedConfig, config_dataclass
from peftkit.core.errors import ConfigError
from peftkit.core.registry import Method, register_method
from peftkit.methods.config_rules import pattern_value, require_choice, require_positive
from peftkit.methods.fourierft import SPECTRAL_DEFAULT_TARGETS, spectral_positions
from peftkit.methods.lora import linear_shape
from peftkit.methods.weight_delta import WeightDeltaLayer, weight_layers

_HAAR = ((1.0, 1.0), (1.0, -1.0))  # lo, hi; times 1 / √2


@config_dataclass
class WaveFTConfig(TargetedConfig):
    """WaveFT settings, with peft's field names and defaults."""

    peft_type = "WAVEFT"
    default_targets = SPECTRAL_DEFAULT_TARGETS
    n_frequency: int = 2592
    scaling: float = 25.0
    wavelet_family: str = "db1"
    use_idwt: bool = True
    random_loc_seed: int = 777
    fan_in_fan_out: bool = False  # peft's flag for Conv1D; the layout is read from the module type
    bias: str = "none"
    n_frequency_pattern: dict[str, int] = field(default_factory=dict)
    init_weights: bool = True

    def validate(self) -> None:
        super().validate()
        require_positive("n_frequency", self.n_frequency, integer=True)
        if isinstance(self.scaling, bool) or not isinstance(self.scaling, (int, float)):
            raise ConfigError(f"scaling must be a number, got {self.scaling!r}")
        if self.wavelet_family != "db1":
            raise ConfigError(f"wavelet_family {self.wavelet_family!r} is not supported: peftkit's WaveFT has the "
                              f"Haar wavelet 'db1' only")
        if isinstance(self.random_loc_seed, bool) or not isinstance(self.random_loc_seed, int):
            raise ConfigError(f"random_loc_seed must be an integer, got {self.random_loc_seed!r}")
        require_choice("bias", self.bias, ("none", "all", "waveft_only"))
        for pattern, value in self.n_frequency_pattern.items():
            require_positive(f"n_frequency_pattern['{pattern}']", value, integer=True)

    def n_frequency_for(self, module_name: str) -> int:
        return pattern_value(self.n_frequency_pattern, module_name, self.n_frequency)


def haar_synthesis(coefficients: torch.Tensor) -> torch.Tensor:
    """One level of the inverse 2-D Haar transform of a (2h × 2w) matrix of quarters [[C_A, C_H], [C_V, C_D]]."""
    rows, columns = coefficients.shape
    quarters = coefficients.reshape(2, rows // 2, 2, columns // 2).permute(0, 2, 1, 3)  # a, b, p, q
    filters = coefficients.new_tensor(_HAAR) / math.sqrt(2)
    return torch.einsum("abpq,bi,aj->piqj", quarters, filters, filters).reshape(rows, columns)


class WaveFTLinear(WeightDeltaLayer):
    adapter_attributes = ("waveft_spectrum",)

    def __init__(self, base_layer: nn.Module) -> None:
        super().__init__(base_layer)
        self.waveft_spectrum = nn.ParameterDict()
        self.positions: dict[str, torch.Tensor] = {}
        self.inverse_transform: dict[str, bool] = {}

    @classmethod
    def expected_shapes(cls, base_layer: nn.Module, config: WaveFTConfig, module_name: str) -> dict[str, tuple]:
        in_features, out_features = linear_shape(base_layer)
        n = config.n_frequency_for(module_name)
        if n > in_features * out_features:
            raise ConfigError(f"n_frequency {n} exceeds the {out_features} × {in_features} = "
                              f"{in_features * out_features} weight entries of '{module_name}'")
        return {"waveft_spectrum": (n,)}

    def add_adapter(self, name: str, config: WaveFTConfig, module_name: str) -> None:
        (n,) = self.expected_shapes(self.base, config, module_name)["waveft_spectrum"]
        spectrum = self.new_tensor(n)
        if config.init_weights:
            spectrum.zero_()
        else:
            spectrum.copy_(torch.randn(n) * 0.01)
        self.waveft_spectrum[name] = nn.Parameter(spectrum)
        self.reconfigure(name, config, module_name)

    def reconfigure(self, name: str, config: WaveFTConfig, module_name: str) -> None:
        n = self.waveft_spectrum[name].shape[0]
        self.positions[name] = spectral_positions(self.out_features, self.in_features, n, config.random_loc_seed)
        self.scaling[name] = config.scaling
        self.inverse_transform[name] = config.use_idwt

    def update(self, name: str) -> torch.Tensor:
        spectrum = self.waveft_spectrum[name]
        rows, columns = self.positions[name].to(spectrum.device)
        out_features, in_features = self.out_features, self.in_features
        if self.inverse_transform[name]:  # pad odd sizes to even, then crop the reconstruction
            out_features, in_features = out_features + out_features % 2, in_features + in_features % 2
        dense = spectrum.new_zeros(out_features, in_features).index_put((rows, columns), spectrum)
        if self.inverse_transform[name]:
            dense = haar_synthesis(dense)[: self.out_features, : self.in_features]
        return dense * self.scaling[name]

    def remove_adapter(self, name: str) -> None:
        super().remove_adapter(name)
        self.positions.pop(name, None)
        self.inverse_transform.pop(name, None)


register_method(Method(name="waveft", config_cls=WaveFTConfig, layers=weight_layers(WaveFTLinear), learning_rate=2e-3,
                       train_defaults={"n_frequency": 1000, "scaling": 25.0, "target_modules": "all-linear"},
                       description="WaveFT: sparse trained wavelet coefficients, ΔW by inverse 2-D Haar transform"))
