"""4-bit NormalFloat (NF4) base weights for QLoRA, stored by torchao's ``NF4Tensor``.

Dettmers et al., 2023, "QLoRA: Efficient Finetuning of Quantized LLMs". A weight is cut into blocks of
``block_size`` = 64 values; each value is stored as a 4-bit index i into the 16 NF4 levels q (quantiles
of N(0, 1) scaled to [−1, 1]) and rebuilt as W ≈ q_i · c_b, c_b the block's absmax. Double quantisation
stores the scales c_b themselves in 8 bits, in blocks of up to 256 scales (one float factor and a shared
mean per such block): about 4.13 bits per weight instead of 32. Matrix products dequantise the weight
to the input's dtype on the fly (torchao's ``linear_nf4``), so LoRA trains on top unchanged; gradients
never reach the frozen 4-bit weight. torchao's NF4 tensor runs on CPU and CUDA.
"""

from __future__ import annotations

import sys
import warnings
from dataclasses import dataclass, field

import torch
from torch import nn

from peftkit.core.errors import ConfigError, require_extra
from peftkit.core.module_names import ALL_LINEAR, name_matches, output_heads

BLOCK_SIZE = 64
MAX_SCALER_BLOCK = 256


def _torchao_nf4():
    require_extra("torchao", "qlora", "it stores QLoRA's and LoftQ's 4-bit NF4 weights")
    from torchao.quantization import NF4Tensor, to_nf4

    return NF4Tensor, to_nf4


def is_nf4(tensor) -> bool:
    if sys.modules.get("torchao") is None:  # no NF4 tensor can exist before torchao is imported (or without it)
        return False
    return isinstance(tensor, _torchao_nf4()[0])


def dequantized(tensor: torch.Tensor) -> torch.Tensor:
    """The weight in its original float dtype (a plain tensor is returned as it is)."""
    return tensor.get_original_weight() if is_nf4(tensor) else tensor


def stored_bytes(tensor: torch.Tensor) -> int:
    """Bytes the tensor occupies: for NF4, its 4-bit codes, 8-bit scales and their factors."""
    if is_nf4(tensor):
        names, _ = tensor.__tensor_flatten__()
        return sum(getattr(tensor, n).numel() * getattr(tensor, n).element_size() for n in names)
    return tensor.numel() * tensor.element_size()


def _scaler_block_size(blocks: int) -> int:
    """The largest number of scales ≤ 256 that divides the number of blocks (torchao needs a divisor)."""
    return max(d for d in range(1, min(blocks, MAX_SCALER_BLOCK) + 1) if blocks % d == 0)


@dataclass
class QuantizationReport:
    quantized: list[str] = field(default_factory=list)
    skipped: dict[str, str] = field(default_factory=dict)  # module -> why it stays in float
    float_bytes: int = 0  # the quantised weights' size before
    nf4_bytes: int = 0  # ... and after

    @property
    def ratio(self) -> float:
        return self.nf4_bytes / self.float_bytes if self.float_bytes else 1.0

    def __str__(self) -> str:
        return (f"NF4: {len(self.quantized)} linear layers, weights {self.float_bytes / 2**20:.1f} MiB -> "
                f"{self.nf4_bytes / 2**20:.1f} MiB ({self.ratio:.3f}x); {len(self.skipped)} left in float")


def nf4_codes(weight: torch.Tensor, block_size: int = BLOCK_SIZE):
    """``weight`` as an NF4 tensor (its size a multiple of ``block_size``)."""
    _, to_nf4 = _torchao_nf4()
    blocks = weight.numel() // block_size
    return to_nf4(weight.detach().contiguous(), block_size, _scaler_block_size(blocks))


@torch.no_grad()
def quantize_nf4(model: nn.Module, target_modules: list[str] | str = ALL_LINEAR,
                 block_size: int = BLOCK_SIZE) -> QuantizationReport:
    """Store the weights of the targeted ``nn.Linear`` layers in NF4, in place.

    ``"all-linear"`` (the default) means every Linear except the output head; embeddings, norms and
    biases stay as they are. A weight whose size is not a multiple of ``block_size`` stays in float and
    is listed in the report's ``skipped``.
    """
    _torchao_nf4()
    heads = output_heads(model)
    report = QuantizationReport()
    for name, module in model.named_modules():
        if not isinstance(module, nn.Linear) or is_nf4(module.weight):
            continue
        if target_modules == ALL_LINEAR:
            if name in heads:
                continue
        elif not name_matches(name, target_modules):
            continue
        weight = module.weight
        if weight.numel() % block_size:
            report.skipped[name] = f"{weight.numel()} weights are not a multiple of the block size {block_size}"
            continue
        codes = nf4_codes(weight, block_size)
        report.float_bytes += stored_bytes(weight)
        report.nf4_bytes += stored_bytes(codes)
        module.weight = nn.Parameter(codes, requires_grad=False)
        report.quantized.append(name)
    if not report.quantized:
        raise ConfigError(f"quantize_nf4: target_modules={target_modules!r} matches no Linear layer that can "
                          f"be stored in NF4" + (f" ({'; '.join(report.skipped.values())})" if report.skipped else ""))
    return report


def dequantize_for_merge(module: nn.Module, adapter_name: str) -> None:
    """Replace an NF4 weight by a float copy before an adapter is merged into it, with a warning."""
    weight = getattr(module, "weight", None)
    if not is_nf4(weight):
        return
    warnings.warn(
        f"merging adapter '{adapter_name}' into a 4-bit NF4 weight: the weight is dequantised to "
        f"{weight.dtype} first and stays in float (re-quantising would round the merged update away); the "
        f"merged model differs from the quantised one by NF4's rounding of the base weights",
        stacklevel=3,
    )
    module.weight = nn.Parameter(dequantized(weight), requires_grad=False)
