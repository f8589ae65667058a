"""FourierFT: the weight update as a sparse spectrum, brought back by an inverse 2-D Fourier transform.

Gao et al., 2024, "Parameter-Efficient Fine-Tuning with Discrete Fourier Transform". For a frozen W (out × in), n
spectral positions E = {(uⱼ, vⱼ)} drawn once at random (a permutation of the out · in positions seeded by
``random_loc_seed``, its first n kept) and n trained coefficients c:

    F[uⱼ, vⱼ] = cⱼ (zero elsewhere),    ΔW = s · Re(IDFT₂(F)),    h = W x + b + ΔW x

Only c (``fourierft_spectrum``, n values) is trained and saved; the positions are rebuilt from the seed. c starts
standard normal (peft's default ``init_weights=False``, as in the paper), so the model does not start unchanged;
``init_weights=True`` starts it at zero. The transform runs in float32 whatever the model's dtype, as in peft. Field
names and defaults are peft's.
"""

from __future__ import annotations

from dataclasses import field

import torch
from torch import nn

from peftkit.core.config import TargetedConfig, config_dataclass
from peftkit.core.errors import ConfigError
from peftkit.core.registry import Method, register_method
from peftkit.methods.config_rules import pattern_value, require_choice, require_positive
from peftkit.methods.lora import LORA_DEFAULT_TARGETS, linear_shape
from peftkit.methods.weight_delta import WeightDeltaLayer, weight_layers

# peft's default targets for the spectral methods (FourierFT, C3A, WaveFT): GPT-2's MLP output, Phi's MLP too
SPECTRAL_DEFAULT_TARGETS = {**LORA_DEFAULT_TARGETS, "gpt2": ["mlp.c_proj"], "phi": ["q_proj", "v_proj", "fc1", "fc2"]}


@config_dataclass
class FourierFTConfig(TargetedConfig):
    """FourierFT settings, with peft's field names and defaults."""

    peft_type = "FOURIERFT"
    default_targets = SPECTRAL_DEFAULT_TARGETS
    n_frequency: int = 1000
    scaling: float = 150.0
    random_loc_seed: int = 777
    fan_in_fan_out: bool = False  # peft's flag for Conv1D; the layout is read from the module type
    bias: str = "none"
    n_frequency_pattern: dict[str, int] = field(default_factory=dict)
    init_weights: bool = False

    def validate(self) -> None:
        super().validate()
        require_positive("n_frequency", self.n_frequency, integer=True)
        if isinstance(self.scaling, bool) or not isinstance(self.scaling, (int, float)):
            raise ConfigError(f"scaling must be a number, got {self.scaling!r}")
        if isinstance(self.random_loc_seed, bool) or not isinstance(self.random_loc_seed, int):
            raise ConfigError(f"random_loc_seed must be an integer, got {self.random_loc_seed!r}")
        require_choice("bias", self.bias, ("none", "all", "fourier_only"))
        for pattern, value in self.n_frequency_pattern.items():
            require_positive(f"n_frequency_pattern['{pattern}']", value, integer=True)

    def n_frequency_for(self, module_name: str) -> int:
        return pattern_value(self.n_frequency_pattern, module_name, self.n_frequency)


def spectral_positions(out_features: int, in_features: int, n: int, seed: int) -> torch.Tensor:
    """The n (row, column) positions of the trained coefficients, 2 × n: peft's seeded permutation."""
    flat = torch.randperm(out_features * in_features, generator=torch.Generator().manual_seed(seed))[:n]
    return torch.stack([flat // in_features, flat % in_features])


class FourierFTLinear(WeightDeltaLayer):
    adapter_attributes = ("fourierft_spectrum",)

    def __init__(self, base_layer: nn.Module) -> None:
        super().__init__(base_layer)
        self.fourierft_spectrum = nn.ParameterDict()
        self.positions: dict[str, torch.Tensor] = {}

    @classmethod
    def expected_shapes(cls, base_layer: nn.Module, config: FourierFTConfig, module_name: str) -> dict[str, tuple]:
        in_features, out_features = linear_shape(base_layer)
        n = config.n_frequency_for(module_name)
        if n > in_features * out_features:
            raise ConfigError(f"n_frequency {n} exceeds the {out_features} × {in_features} = "
                              f"{in_features * out_features} weight entries of '{module_name}'")
        return {"fourierft_spectrum": (n,)}

    def add_adapter(self, name: str, config: FourierFTConfig, module_name: str) -> None:
        (n,) = self.expected_shapes(self.base, config, module_name)["fourierft_spectrum"]
        self.positions[name] = spectral_positions(self.out_features, self.in_features, n, config.random_loc_seed)
        self.scaling[name] = config.scaling
        spectrum = self.new_tensor(n)
        if config.init_weights:
            nn.init.zeros_(spectrum)
        else:
            spectrum.copy_(torch.randn(n))
        self.fourierft_spectrum[name] = nn.Parameter(spectrum)

    def reconfigure(self, name: str, config: FourierFTConfig, module_name: str) -> None:
        self.scaling[name] = config.scaling
        n = self.fourierft_spectrum[name].shape[0]
        self.positions[name] = spectral_positions(self.out_features, self.in_features, n, config.random_loc_seed)

    def update(self, name: str) -> torch.Tensor:
        spectrum = self.fourierft_spectrum[name]
        dtype = torch.float32  # as peft: its outputs in float64 models carry float32 rounding of ΔW
        rows, columns = self.positions[name].to(spectrum.device)
        dense = torch.zeros(self.out_features, self.in_features, dtype=dtype, device=spectrum.device)
        dense = dense.index_put((rows, columns), spectrum.to(dtype))
        return (torch.fft.ifft2(dense).real * self.scaling[name]).to(spectrum.dtype)

    def remove_adapter(self, name: str) -> None:
        super().remove_adapter(name)
        self.positions.pop(name, None)


register_method(Method(name="fourierft", config_cls=FourierFTConfig, layers=weight_layers(FourierFTLinear),
                       learning_rate=5e-2, unchanged_at_start=False,
                       train_defaults={"n_frequency": 1000, "scaling": 150.0, "target_modules": "all-linear"},
                       description="FourierFT: coefficients at fixed random frequencies, ΔW by inverse 2-D DFT"))
