"""LoRA (Hu et al., 2021): h = W₀x + (α/r)·B·A·x, with its variants (rsLoRA, DoRA, PiSSA) in ``layers.py``,
adapter arithmetic (peft's ``add_weighted_adapter``) in ``arithmetic.py``, LoRA on convolutions, multi-head
attention and 3-D expert parameters in ``conv.py``, ``multihead.py`` and ``parameters.py``, the mixed-adapter batch
forms in ``mixed.py`` and the SVD-shaped update AdaLoRA and IncreLoRA share in ``svd.py``. Registered here as the
method "lora"."""

from torch import nn
from transformers.pytorch_utils import Conv1D

from peftkit.core.registry import Method, QuantizedForm, register_method
from peftkit.methods.lora.arithmetic import add_weighted_adapter
from peftkit.methods.lora.conv import LoraConv
from peftkit.methods.lora.layers import (
    LORA_DEFAULT_TARGETS,
    DroppedLowRank,
    FusedLowRank,
    LoraConfig,
    LoraEmbedding,
    LoraLinear,
    linear_shape,
)
from peftkit.methods.lora.multihead import LoraMultiheadAttention
from peftkit.methods.lora.parameters import LoraParameters

__all__ = ["LORA_DEFAULT_TARGETS", "DroppedLowRank", "FusedLowRank", "LoraConfig", "LoraEmbedding", "LoraLinear",
           "linear_shape"]

register_method(
    Method(
        name="lora",
        config_cls=LoraConfig,
        layers={nn.Linear: LoraLinear, Conv1D: LoraLinear, nn.Embedding: LoraEmbedding, nn.Conv1d: LoraConv,
                nn.Conv2d: LoraConv, nn.Conv3d: LoraConv, nn.MultiheadAttention: LoraMultiheadAttention,
                nn.Module: LoraParameters},  # the modules holding target_parameters (mixture-of-experts weights)
        combine_adapters=add_weighted_adapter,
        description="LoRA: a trained low-rank update B·A beside each targeted layer (DoRA, rsLoRA, PiSSA options)",
        learning_rate=1e-3,
        task_learning_rates={"causal-lm": 2e-4, "token-classification": 2e-3},
        train_defaults={"r": 8, "lora_alpha": 16, "target_modules": "all-linear"},
        variants={"dora": {"use_dora": True}, "rslora": {"use_rslora": True}},
        quantized={"qlora": QuantizedForm("nf4", 2e-3, "QLoRA: LoRA on a base model stored in 4-bit NF4")},
    )
)
