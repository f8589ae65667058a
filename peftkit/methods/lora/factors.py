"""How LoRA's factors start, shared by its Linear, convolution and expert-parameter layers."""

from __future__ import annotations

import math

from torch import nn


def init_factors(lora_a: nn.Module, lora_b: nn.Module, init: bool | str, r: int) -> None:
    """LoRA's start for ``init_lora_weights`` True or "gaussian": A Kaiming-uniform (N(0, 1/r²) for "gaussian"),
    B and its bias zero, so the update starts at zero; False leaves both as created (random)."""
    if init is False:
        return
    if init == "gaussian":
        nn.init.normal_(lora_a.weight, std=1 / r)
    else:
        nn.init.kaiming_uniform_(lora_a.weight, a=math.sqrt(5))
    nn.init.zeros_(lora_b.weight)
    if lora_b.bias is not None:
        nn.init.zeros_(lora_b.bias)
