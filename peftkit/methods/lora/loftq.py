"""LoRA's LoftQ initialisation (peft's ``init_lora_weights="loftq"``) on peftkit's NF4 path.

Li et al., 2023, "LoftQ: LoRA-Fine-Tuning-Aware Quantization for Large Language Models". The 4-bit base Q of a
weight W and the factors are chosen together, so that Q + s · B A is close to W, by alternating T times
(``loftq_iter``):

    Q_t = NF4(W − s · B_{t−1} A_{t−1}),      s · B_t A_t = SVD_r(W − Q_t)        (B_0 A_0 = 0)

SVD_r is the best rank-r approximation U_r S_r V_rᵀ, split evenly: B = U_r √(S_r / s), A = √(S_r / s) V_rᵀ. The
base Linear's weight becomes Q, stored in 4 bits (torchao's NF4Tensor, blocks of 64, as ``quantize_nf4`` stores
it). With T = 1, Q is exactly what ``quantize_nf4`` makes of W, so a model quantised for QLoRA later has this base.

Differences from peft: peft keeps Q dequantised in the float model (bitsandbytes quantises it when loaded), and its
factors are U √S and √S Vᵀ without the 1 / s — the same when s = α / r = 1. peftkit quantises to NF4 only (peft also
offers 8 bits) and only ``nn.Linear`` weights. The adapter is saved as a plain LoRA one (``init_lora_weights``
true), as peft's LoftQ guide saves it, so that no reader initialises it again.
"""

from __future__ import annotations

import dataclasses

import torch
from torch import nn

from peftkit.core.errors import ConfigError
from peftkit.core.mechanics.quantization import BLOCK_SIZE, dequantized, is_nf4, nf4_codes
from peftkit.methods.config_rules import sub_config


@dataclasses.dataclass
class LoftQConfig:
    """peft's LoftQ settings (``LoraConfig(init_lora_weights="loftq", loftq_config=LoftQConfig(...))``)."""

    loftq_bits: int = 4
    loftq_iter: int = 1


def check_loftq(loftq_config) -> dict[str, int]:
    """peft's ``loftq_config`` checked and completed with peft's defaults (4 bits, 1 iteration)."""
    if not loftq_config:
        raise ConfigError("init_lora_weights='loftq' needs loftq_config, e.g. {'loftq_bits': 4, 'loftq_iter': 1} "
                          "(as in peft)")
    values = sub_config("loftq_config", loftq_config, LoftQConfig)
    if values["loftq_bits"] != 4:
        raise ConfigError(f"loftq_bits={values['loftq_bits']!r}: peftkit's LoftQ quantises to 4-bit NF4 only")
    iterations = values["loftq_iter"]
    if isinstance(iterations, bool) or not isinstance(iterations, int) or iterations < 1:
        raise ConfigError(f"loftq_iter must be a whole number ≥ 1, got {iterations!r}")
    return values


def check_loftq_layer(base_layer: nn.Module, module_name: str) -> None:
    """LoftQ applies to a float ``nn.Linear`` whose weight fills whole NF4 blocks."""
    if type(base_layer) is not nn.Linear:
        raise ConfigError(f"init_lora_weights='loftq' quantises nn.Linear weights; '{module_name}' is "
                          f"{type(base_layer).__name__} (exclude it)")
    if is_nf4(base_layer.weight):
        raise ConfigError(f"init_lora_weights='loftq' needs the float weight of '{module_name}': it chooses the 4-bit "
                          f"weight itself, so initialise before quantize_nf4")
    if base_layer.weight.numel() % BLOCK_SIZE:
        raise ConfigError(f"init_lora_weights='loftq': the {base_layer.weight.numel()} weights of '{module_name}' "
                          f"are not a multiple of the NF4 block size {BLOCK_SIZE} (exclude it)")


@torch.no_grad()
def loftq_factors(layer, name: str, r: int, iterations: int) -> torch.Tensor:
    """Set the adapter's A and B by LoftQ's alternation; returns the NF4 weight Q that replaces the base's."""
    weight = layer.base.weight
    w = weight.float()
    scale = layer.scaling[name]
    low_rank = torch.zeros_like(w)
    for _ in range(iterations):
        codes = nf4_codes((w - low_rank).to(weight.dtype))
        u, s, vh = torch.linalg.svd(w - dequantized(codes).float(), full_matrices=False)
        u, s, vh = u[:, :r], s[:r], vh[:r]
        low_rank = (u * s) @ vh
    root = torch.sqrt(s / scale)
    layer.lora_A[name].weight.copy_(root[:, None] * vh)
    layer.lora_B[name].weight.copy_(u * root[None, :])
    return codes
