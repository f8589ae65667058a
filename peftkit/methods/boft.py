"""BOFT: butterfly orthogonal finetuning, a product of permuted block-diagonal rotations of the input and a scale.

Liu et al., 2024, "Parameter-Efficient Orthogonal Finetuning via Butterfly Factorization". For a frozen W (out × in)
and bias b, with m = ``boft_n_butterfly_factor`` factors of d = in / k blocks of size k:

    h = s ⊙ (W Bᵀ x) + b,   B = B_m ⋯ B₂ B₁,   Bⱼ = Pⱼ diag(Rⱼ₁, …, Rⱼd) Pⱼᵀ,   Rⱼᵢ = (I − Sⱼᵢ)(I + Sⱼᵢ)⁻¹
                                                                      merged: W ← diag(s) W Bᵀ

where Sⱼᵢ = (Aⱼᵢ − Aⱼᵢᵀ) / 2 for a free k × k matrix Aⱼᵢ, P₁ = I and Pⱼ is the butterfly permutation that, within
each stretch of k · 2^(j−1) features, puts the half-blocks of size k / 2 in the order even ones, then odd ones (so
that factor j mixes features 2^(j−1) blocks apart). m = 1 is OFT with the exact Cayley map; the bias is not scaled.
A starts at zero and s at one, so the model starts unchanged. ``boft_dropout`` (training only) replaces
⌊p · d⌋ random blocks of one random factor by the identity. Field names, defaults and the saved tensors
(``boft_R``: m × d × k × k, ``boft_s``: out × 1) are peft's; peft's BOFT wraps ``nn.Linear`` only, peftkit's GPT-2's
Conv1D as well. peft computes m > 1 only where its CUDA extension builds: without it peft silently uses m = 1
(and then cannot read a checkpoint with m > 1), while peftkit computes every m the same way on any device.
"""

from __future__ import annotations

import torch
from torch import nn

from peftkit.core.config import TargetedConfig, config_dataclass
from peftkit.core.errors import ConfigError
from peftkit.core.registry import Method, register_method
from peftkit.methods.config_rules import require_choice, require_positive, require_probability
from peftkit.methods.input_rotation import InputRotationLayer, rotation_layers
from peftkit.methods.lora import LORA_DEFAULT_TARGETS, linear_shape


@config_dataclass
class BOFTConfig(TargetedConfig):
    """BOFT settings, with peft's field names and defaults."""

    peft_type = "BOFT"
    default_targets = LORA_DEFAULT_TARGETS
    boft_block_size: int = 4
    boft_block_num: int = 0
    boft_n_butterfly_factor: int = 1
    boft_dropout: float = 0.0
    bias: str = "none"
    init_weights: bool = True

    field_aliases = {"block_size": "boft_block_size", "dropout": "boft_dropout", "targets": "target_modules"}

    def validate(self) -> None:
        super().validate()
        for name in ("boft_block_size", "boft_block_num"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise ConfigError(f"{name} must be a non-negative integer, got {value!r}")
        if (self.boft_block_size == 0) == (self.boft_block_num == 0):
            raise ConfigError(f"set exactly one of boft_block_size ({self.boft_block_size}) and boft_block_num "
                              f"({self.boft_block_num}); the other must be 0, since their product = in_features")
        require_positive("boft_n_butterfly_factor", self.boft_n_butterfly_factor, integer=True)
        require_probability("boft_dropout", self.boft_dropout)
        require_choice("bias", self.bias, ("none", "all", "boft_only"))

    def blocks_for(self, in_features: int, module_name: str) -> tuple[int, int]:
        """(number of blocks d, block size k) on a layer with ``in_features`` inputs; a ``ConfigError`` where peft
        refuses the combination."""
        spread = 2 ** (self.boft_n_butterfly_factor - 1)  # the largest factor's stretch, in blocks
        given, field_name = ((self.boft_block_size, "boft_block_size") if self.boft_block_size
                             else (self.boft_block_num, "boft_block_num"))
        if in_features % given:
            raise ConfigError(f"{module_name}: in_features {in_features} is not divisible by {field_name} {given}")
        blocks, size = (in_features // given, given) if self.boft_block_size else (given, in_features // given)
        if spread > 1 and (blocks % spread or size % 2):
            raise ConfigError(
                f"{module_name}: boft_n_butterfly_factor {self.boft_n_butterfly_factor} needs a number of blocks "
                f"divisible by {spread} and an even block size, got {blocks} blocks of {size}"
            )
        return blocks, size


def butterfly_order(n: int, stretch: int, half: int) -> torch.Tensor:
    """The butterfly permutation of n features: within each stretch, the half-blocks of ``half`` features taken
    even ones first, then odd ones."""
    pieces = stretch // half
    within = torch.cat([torch.arange(p * half, (p + 1) * half) for p in [*range(0, pieces, 2), *range(1, pieces, 2)]])
    return torch.cat([start + within for start in range(0, n, stretch)])


class BOFTLinear(InputRotationLayer):
    adapter_attributes = ("boft_R", "boft_s")
    last_first = True

    def __init__(self, base_layer: nn.Module) -> None:
        super().__init__(base_layer)
        self.boft_R = nn.ParameterDict()
        self.boft_s = nn.ParameterDict()
        self.dropouts: dict[str, float] = {}

    @classmethod
    def expected_shapes(cls, base_layer: nn.Module, config: BOFTConfig, module_name: str) -> dict[str, tuple]:
        in_features, out_features = linear_shape(base_layer)
        blocks, size = config.blocks_for(in_features, module_name)
        return {"boft_R": (config.boft_n_butterfly_factor, blocks, size, size), "boft_s": (out_features, 1)}

    def add_adapter(self, name: str, config: BOFTConfig, module_name: str) -> None:
        shapes = self.expected_shapes(self.base, config, module_name)
        generators, scale = self.new_tensor(*shapes["boft_R"]), self.new_tensor(*shapes["boft_s"])
        if config.init_weights:
            nn.init.zeros_(generators)
            nn.init.ones_(scale)
        else:
            nn.init.normal_(generators, mean=0.0, std=0.1)
            nn.init.normal_(scale, mean=1.0, std=0.1)
        self.boft_R[name] = nn.Parameter(generators)
        self.boft_s[name] = nn.Parameter(scale)
        self.dropouts[name] = config.boft_dropout

    def butterfly(self, name: str, dropout: bool = True) -> torch.Tensor:
        """B (in × in), in the dtype of the adapter's tensors."""
        free = self.boft_R[name]
        factors, blocks, size, _ = free.shape
        skew = (free - free.transpose(-1, -2)) / 2
        eye = torch.eye(size, dtype=free.dtype, device=free.device)
        rotations = torch.linalg.solve(eye + skew, eye - skew, left=False)
        p = self.dropouts[name]
        if self.training and dropout and p:
            dropped = torch.zeros(factors, blocks, 1, 1, dtype=free.dtype, device=free.device)
            dropped[torch.randint(factors, ()), torch.randperm(blocks)[:int(p * blocks)]] = 1
            rotations = dropped * eye + (1 - dropped) * rotations
        product = None
        for j in range(factors):
            factor = torch.block_diag(*rotations[j])
            if j:
                order = butterfly_order(self.in_features, size * 2 ** j, size // 2).to(free.device)
                factor = factor[order][:, order]
            product = factor if product is None else factor @ product
        return product

    def rotate(self, name: str, x: torch.Tensor, dropout: bool = True) -> torch.Tensor:
        return x @ self.butterfly(name, dropout).to(x.dtype)

    def output_scale(self, name: str) -> torch.Tensor:
        return self.boft_s[name].flatten()

    def remove_adapter(self, name: str) -> None:
        super().remove_adapter(name)
        self.dropouts.pop(name, None)


register_method(Method(name="boft", config_cls=BOFTConfig, layers=rotation_layers(BOFTLinear), learning_rate=1e-2,
                       peft_module_types=(nn.Linear,),
                       train_defaults={"boft_block_size": 4, "target_modules": "all-linear"},
                       description="BOFT: butterfly products of orthogonal block rotations of each layer's input, "
                                   "and an output scale"))
