"""OFT: orthogonal finetuning, a block-diagonal rotation of each adapted layer's input.

Qiu et al., 2023, "Controlling Text-to-Image Diffusion by Orthogonal Finetuning"; the Cayley–Neumann form is from
Qiu et al., 2025, "Orthogonal Finetuning Made Scalable". For a frozen W (out × in), the input's in features are cut
into r blocks of size k (r · k = in), each turned by its own k × k matrix Rᵢ made from a skew-symmetric Qᵢ:

    h = W Rᵀ x + b,   R = diag(R₁, …, R_r),   Rᵢ = Cayley(Qᵢ)       merged: W ← W Rᵀ

    Cayley(Q) = (I − Q)(I + Q)⁻¹                                   (use_cayley_neumann=False: exact)
              ≈ I + 2Q + 2Q² + … + 2Q^{n−2} + Q^{n−1}               (the default: n = num_cayley_neumann_terms
                                                                     terms, peft's series; at least up to Q³)

(peft turns an input row x into x R). Each Qᵢ is stored by its upper triangle (k(k − 1)/2 numbers, row by row)
and starts at zero, so R = I and the model starts unchanged. ``block_share`` keeps one Q for all blocks; ``coft``
(constrained OFT) clips each Qᵢ before use to Frobenius norm ≤ eps / √(blocks), writing the clipped value back as
peft does. Either r or ``oft_block_size`` is given (the other 0); where it does not divide a layer's in features it
is moved to the nearest divisor (ties: the smaller), as in peft, with a warning. ``module_dropout`` (training only)
replaces a random ⌊p · r⌋ of the blocks by the identity, as peft documents (peft 0.21 builds this dropout but
never applies it). Field names, defaults and the saved tensor (``oft_R.weight``: blocks × k(k − 1)/2) are peft's;
peft's OFT wraps ``nn.Linear`` only, peftkit's GPT-2's Conv1D as well.
"""

from __future__ import annotations

import math
import warnings

import torch
from torch import nn

from peftkit.core.config import TargetedConfig, config_dataclass
from peftkit.core.errors import ConfigError
from peftkit.core.registry import Method, register_method
from peftkit.methods.config_rules import require_choice, require_positive, require_probability
from peftkit.methods.input_rotation import InputRotationLayer, rotation_layers
from peftkit.methods.lora import LORA_DEFAULT_TARGETS, linear_shape


@config_dataclass
class OFTConfig(TargetedConfig):
    """OFT settings, with peft's field names and defaults."""

    peft_type = "OFT"
    default_targets = LORA_DEFAULT_TARGETS
    r: int = 0
    oft_block_size: int = 32
    module_dropout: float = 0.0
    bias: str = "none"
    init_weights: bool = True
    coft: bool = False
    eps: float = 6e-5
    block_share: bool = False
    use_cayley_neumann: bool = True
    num_cayley_neumann_terms: int = 5

    field_aliases = {"block_size": "oft_block_size", "dropout": "module_dropout", "targets": "target_modules"}

    def validate(self) -> None:
        super().validate()
        for name in ("r", "oft_block_size"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise ConfigError(f"{name} must be a non-negative integer, got {value!r}")
        if (self.r == 0) == (self.oft_block_size == 0):
            raise ConfigError(f"set exactly one of r ({self.r}) and oft_block_size ({self.oft_block_size}); the "
                              f"other must be 0, since r × oft_block_size = in_features")
        require_probability("module_dropout", self.module_dropout)
        require_choice("bias", self.bias, ("none", "all", "oft_only"))
        require_positive("eps", self.eps)
        require_positive("num_cayley_neumann_terms", self.num_cayley_neumann_terms, integer=True)

    def blocks_for(self, in_features: int) -> tuple[int, int]:
        """(number of blocks r, block size k) on a layer with ``in_features`` inputs, by peft's rule."""
        given = self.oft_block_size or self.r
        if in_features % given or given > in_features:
            moved = nearest_divisor(in_features, given)
            field_name = "oft_block_size" if self.oft_block_size else "r"
            warnings.warn(f"{field_name} {given} does not divide in_features {in_features}; using {moved}",
                          stacklevel=2)
            given = moved
        return (in_features // given, given) if self.oft_block_size else (given, in_features // given)


def nearest_divisor(n: int, wanted: int) -> int:
    """The divisor of ``n`` nearest ``wanted`` (``n`` itself when ``wanted`` ≥ n; ties: the smaller)."""
    if wanted >= n:
        return n
    above = next(d for d in range(wanted, n + 1) if n % d == 0)
    below = next(d for d in range(wanted, 0, -1) if n % d == 0)
    return below if wanted - below <= above - wanted else above


def cayley(skew: torch.Tensor, neumann_terms: int | None) -> torch.Tensor:
    """Cayley(Q) for a batch of skew-symmetric Q (… × k × k): exact, or peft's Neumann series of that many terms."""
    eye = torch.eye(skew.shape[-1], dtype=skew.dtype, device=skew.device)
    if neumann_terms is None:
        return torch.linalg.solve(eye + skew, eye - skew, left=False)
    if neumann_terms < 2:
        return eye.expand_as(skew)
    result = eye + 2 * skew
    if neumann_terms == 2:
        return result
    top = max(neumann_terms - 1, 3)
    power = skew
    for degree in range(2, top + 1):
        power = power @ skew
        result = result + (power if degree == top else 2 * power)
    return result


class OFTBlocks(nn.Module):
    """One adapter's skew-symmetric generators, stored as ``weight`` (blocks × k(k − 1)/2) like peft's."""

    def __init__(self, weight: torch.Tensor, block_size: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(weight)
        self.block_size = block_size

    def skew(self, vectors: torch.Tensor) -> torch.Tensor:
        k = self.block_size
        rows, cols = torch.triu_indices(k, k, 1, device=vectors.device)
        upper = vectors.new_zeros(vectors.shape[0], k, k)
        upper[:, rows, cols] = vectors
        return upper - upper.transpose(-1, -2)


class OFTLinear(InputRotationLayer):
    adapter_attributes = ("oft_R",)

    def __init__(self, base_layer: nn.Module) -> None:
        super().__init__(base_layer)
        self.oft_R = nn.ModuleDict()
        self.settings: dict[str, tuple[int, int | None, float, float | None]] = {}  # blocks, terms, dropout, eps

    @classmethod
    def expected_shapes(cls, base_layer: nn.Module, config: OFTConfig, module_name: str) -> dict[str, tuple]:
        in_features, _ = linear_shape(base_layer)
        blocks, k = config.blocks_for(in_features)
        return {"oft_R.weight": (1 if config.block_share else blocks, k * (k - 1) // 2)}

    def add_adapter(self, name: str, config: OFTConfig, module_name: str) -> None:
        blocks, k = config.blocks_for(self.in_features)
        weight = self.new_tensor(1 if config.block_share else blocks, k * (k - 1) // 2)
        if config.init_weights:
            nn.init.zeros_(weight)
        else:
            nn.init.normal_(weight, mean=0.0, std=0.1)
        self.oft_R[name] = OFTBlocks(weight, k)
        terms = config.num_cayley_neumann_terms if config.use_cayley_neumann else None
        self.settings[name] = (blocks, terms, config.module_dropout, config.eps if config.coft else None)

    def blocks(self, name: str, dropout: bool = True) -> torch.Tensor:
        """R₁ … R_r (r × k × k), with COFT's clipping and, in training, module dropout applied."""
        module = self.oft_R[name]
        blocks, terms, p, eps = self.settings[name]
        if eps is not None:
            with torch.no_grad():
                vectors = module.weight
                norm = module.skew(vectors).flatten(1).norm(dim=1, keepdim=True)
                bound = eps / math.sqrt(vectors.shape[0])
                vectors.copy_(torch.where(norm <= bound, vectors, vectors * bound / norm))
        rotations = cayley(module.skew(module.weight), terms)
        if rotations.shape[0] == 1:
            rotations = rotations.expand(blocks, -1, -1)
        elif self.training and dropout and p:
            kept = torch.ones(blocks, 1, 1, dtype=rotations.dtype, device=rotations.device)
            kept[torch.randperm(blocks, device=rotations.device)[:int(p * blocks)]] = 0
            eye = torch.eye(module.block_size, dtype=rotations.dtype, device=rotations.device)
            rotations = kept * rotations + (1 - kept) * eye
        return rotations

    def rotate(self, name: str, x: torch.Tensor, dropout: bool = True) -> torch.Tensor:
        rotations = self.blocks(name, dropout)
        rows = x.to(rotations.dtype).reshape(*x.shape[:-1], *rotations.shape[:2])
        return torch.einsum("...rk,rkc->...rc", rows, rotations).reshape(x.shape).to(x.dtype)

    def remove_adapter(self, name: str) -> None:
        super().remove_adapter(name)
        self.settings.pop(name, None)


register_method(Method(name="oft", config_cls=OFTConfig, layers=rotation_layers(OFTLinear), learning_rate=1e-3,
                       peft_module_types=(nn.Linear,),
                       train_defaults={"oft_block_size": 16, "target_modules": "all-linear"},
                       description="OFT: a block-diagonal orthogonal (Cayley) rotation of each layer's input"))
