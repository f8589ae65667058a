"""C3A: the weight update as a grid of circulant blocks, applied by circular convolution.

Chen et al., 2025, "Parameter-Efficient Fine-Tuning via Circular Convolution" (ACL 2025). For a frozen W (out × in)
cut into b × b blocks and a trained kernel w (out/b × in/b × b), one length-b vector per block:

    ΔW[m·b + t, n·b + j] = w[m, n, (j − t) mod b] / in,    h = W x + b + ΔW x

so output slice m gets Σₙ (xₙ ⋆ w[m, n]) / in, a circular cross-correlation computed with FFTs:
FFT(IFFT(xₙ) · FFT(w[m, n])). Each block is circulant, of full rank in general, for b numbers. The kernel starts
Xavier-uniform (peft's default ``init_weights="xavier_uniform"``; also ``"kaiming_uniform"``, ``"gaussian"``;
``False`` means Xavier), so the model does not start unchanged; ``init_weights=True`` starts it at zero. As in peft,
the update is computed in float32 whatever the model's dtype. Saved tensor: ``c3a_kernel`` = w; field names and
defaults are peft's.
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
from peftkit.methods.fourierft import SPECTRAL_DEFAULT_TARGETS
from peftkit.methods.lora import linear_shape
from peftkit.methods.weight_delta import WeightDeltaLayer, weight_layers


@config_dataclass
class C3AConfig(TargetedConfig):
    """C3A settings, with peft's field names and defaults."""

    peft_type = "C3A"
    default_targets = SPECTRAL_DEFAULT_TARGETS
    block_size: int = 256
    bias: str = "none"
    block_size_pattern: dict[str, int] = field(default_factory=dict)
    init_weights: bool | str = "xavier_uniform"

    def validate(self) -> None:
        super().validate()
        require_positive("block_size", self.block_size, integer=True)
        require_choice("bias", self.bias, ("none", "all", "c3a_only"))
        require_choice("init_weights", self.init_weights,
                       (True, False, "gaussian", "kaiming_uniform", "xavier_uniform"))
        for pattern, value in self.block_size_pattern.items():
            require_positive(f"block_size_pattern['{pattern}']", value, integer=True)

    def block_size_for(self, module_name: str) -> int:
        return pattern_value(self.block_size_pattern, module_name, self.block_size)


class C3ALinear(WeightDeltaLayer):
    adapter_attributes = ("c3a_kernel",)

    def __init__(self, base_layer: nn.Module) -> None:
        super().__init__(base_layer)
        self.c3a_kernel = nn.ParameterDict()

    @classmethod
    def expected_shapes(cls, base_layer: nn.Module, config: C3AConfig, module_name: str) -> dict[str, tuple]:
        in_features, out_features = linear_shape(base_layer)
        b = config.block_size_for(module_name)
        if in_features % b or out_features % b:
            raise ConfigError(f"block_size {b} must divide the in ({in_features}) and out ({out_features}) features "
                              f"of '{module_name}'")
        return {"c3a_kernel": (out_features // b, in_features // b, b)}

    def add_adapter(self, name: str, config: C3AConfig, module_name: str) -> None:
        kernel = self.new_tensor(*self.expected_shapes(self.base, config, module_name)["c3a_kernel"])
        init = config.init_weights
        if init is True:
            kernel.zero_()
        elif init == "gaussian":
            kernel.normal_()
        else:
            fan = 1 / self.in_features if init == "kaiming_uniform" else 2 / (self.in_features + self.out_features)
            bound = math.sqrt(fan) if init == "kaiming_uniform" else math.sqrt(3 * fan)
            kernel.uniform_(-bound, bound)
        self.c3a_kernel[name] = nn.Parameter(kernel)

    def update(self, name: str) -> torch.Tensor:
        kernel = self.c3a_kernel[name].float()
        b = kernel.shape[-1]
        steps = torch.arange(b, device=kernel.device)
        circulant = kernel[:, :, (steps[None, :] - steps[:, None]) % b]  # m × n × t × j
        update = circulant.permute(0, 2, 1, 3).reshape(self.out_features, self.in_features) / self.in_features
        return update.to(self.c3a_kernel[name].dtype)

    def update_output(self, name: str, x: torch.Tensor) -> torch.Tensor:
        kernel = self.c3a_kernel[name].float()
        slices = x.float().unflatten(-1, (kernel.shape[1], kernel.shape[2]))  # … × n × b
        mixed = torch.einsum("...nb,mnb->...mb", torch.fft.ifft(slices), torch.fft.fft(kernel))
        return torch.fft.fft(mixed).real.flatten(-2) / self.in_features


register_method(Method(name="c3a", config_cls=C3AConfig, layers=weight_layers(C3ALinear), learning_rate=1e-1,
                       peft_module_types=(nn.Linear,), unchanged_at_start=False,
                       train_defaults={"block_size": 16, "target_modules": "all-linear"},
                       description="C3A: circulant weight-update blocks applied by FFT circular convolution"))
