"""LoRA on ``nn.MultiheadAttention``, in peft's form.

The module applies its weights inside one function (no Linear whose forward could be wrapped): the packed
query / key / value projection ``in_proj_weight`` (3E × E) and ``out_proj.weight`` (E × E). Both get a low-rank
update, and the attention runs on the updated weights:

    W_in' = W_in + s · B A,          A: r × E,  B: 3E × r       (saved ``lora_A.weight``, ``lora_B.weight``)
    W_out' = W_out + 2 s · B_o A_o,  A_o: r × E, B_o: E × r     (``base_layer.out_proj.lora_A.weight``, ``…lora_B…``)

s = α / r (α / √r with rsLoRA); B and B_o start at zero, so the model starts unchanged. The factor 2 on the
output projection is peft 0.21's: its forward and merge add that update to the weight twice (once for the
attention layer, once more through the output projection's own LoRA layer), so a peft checkpoint computes
W_out + 2 s B_o A_o, and peftkit computes the same to read and write peft's files with equal outputs. Merging
adds both updates to the base weights. As in peft: key / value widths must equal the embedding width, there is
no DoRA, no ``lora_bias``, no mixed-adapter batch, and ``lora_dropout`` has no effect (the update acts on the
weights, not on an input).
"""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.func import functional_call

from peftkit.core.errors import ConfigError
from peftkit.methods.lora.layers import LoraConfig, _LoraLayer

_OUT_PROJ_REPEATS = 2  # peft 0.21 adds the output projection's update twice (see the module docstring)
_OUT_PREFIX = "out_proj_lora_"  # attribute names of the output projection's factors ...
_OUT_SAVED = "base_layer.out_proj.lora_"  # ... and their keys in peft's files


class LoraMultiheadAttention(_LoraLayer):
    """LoRA on ``nn.MultiheadAttention``: updates of the packed input projection and the output projection."""

    adapter_attributes = ("lora_A", "lora_B", "out_proj_lora_A", "out_proj_lora_B")

    def __init__(self, base_layer: nn.Module) -> None:
        super().__init__(base_layer)
        self.lora_A = nn.ModuleDict()
        self.lora_B = nn.ModuleDict()
        self.out_proj_lora_A = nn.ModuleDict()
        self.out_proj_lora_B = nn.ModuleDict()

    @property
    def weight(self) -> torch.Tensor:
        return self.base.in_proj_weight

    @classmethod
    def expected_shapes(cls, base_layer: nn.Module, config: LoraConfig, module_name: str) -> dict[str, tuple]:
        refused = {"use_dora=True": config.use_dora, "lora_bias=True": config.lora_bias,
                   f"init_lora_weights={config.init_lora_weights!r}": config.init_from_weight,
                   "key / value widths other than embed_dim": not base_layer._qkv_same_embed_dim}
        for what, present in refused.items():
            if present:
                raise ConfigError(f"LoRA on MultiheadAttention '{module_name}' does not support {what} (as in peft)")
        r, width = config.rank_for(module_name), base_layer.embed_dim
        return {"lora_A.weight": (r, width), "lora_B.weight": (3 * width, r),
                f"{_OUT_SAVED}A.weight": (r, width), f"{_OUT_SAVED}B.weight": (width, r)}

    def add_adapter(self, name: str, config: LoraConfig, module_name: str) -> None:
        r, width = config.rank_for(module_name), self.base.embed_dim
        options = self._new_tensor_options()
        pairs = ((self.lora_A, self.lora_B, 3 * width), (self.out_proj_lora_A, self.out_proj_lora_B, width))
        for down, up, out_width in pairs:
            down[name] = nn.Linear(width, r, bias=False, **options)
            up[name] = nn.Linear(r, out_width, bias=False, **options)
            init = config.init_lora_weights
            if init is not False:
                if init == "gaussian":
                    nn.init.normal_(down[name].weight, std=1 / r)
                else:
                    nn.init.kaiming_uniform_(down[name].weight, a=math.sqrt(5))
                nn.init.zeros_(up[name].weight)
        self._start_adapter(name, config, module_name)

    def adapter_state_dict(self, name: str) -> dict[str, torch.Tensor]:
        return {(_OUT_SAVED + key[len(_OUT_PREFIX):] if key.startswith(_OUT_PREFIX) else key): tensor
                for key, tensor in super().adapter_state_dict(name).items()}

    def _product(self, name: str) -> torch.Tensor:
        """B A, the input projection's update before scaling (3E × E)."""
        return self.lora_B[name].weight @ self.lora_A[name].weight

    def out_proj_delta(self, name: str) -> torch.Tensor:
        """The output projection's update (E × E), scaling and peft's repeat included."""
        product = self.out_proj_lora_B[name].weight @ self.out_proj_lora_A[name].weight
        return (_OUT_PROJ_REPEATS * self.scaling[name]) * product

    def merge(self, names: list[str], safe_merge: bool = False) -> None:
        self.check_mergeable()
        for name in names:
            if name not in self.merged_adapters and self.has_adapter(name):
                self._shift(name, 1.0, safe_merge)
                self.merged_adapters.append(name)

    def unmerge(self) -> None:
        while self.merged_adapters:
            self._shift(self.merged_adapters.pop(), -1.0, safe_merge=False)

    @torch.no_grad()
    def _shift(self, name: str, sign: float, safe_merge: bool) -> None:
        """Add (sign 1) or take out (-1) both updates, computed in float32; all or nothing."""
        base = self.base
        pairs = ((base.in_proj_weight, self.delta_weight(name)), (base.out_proj.weight, self.out_proj_delta(name)))
        values = [(weight, (weight.float() + sign * delta.float()).to(weight.dtype)) for weight, delta in pairs]
        if safe_merge and not all(torch.isfinite(value).all() for _, value in values):
            raise ValueError(f"merging adapter '{name}' gives non-finite weights; the model is unchanged")
        for weight, value in values:
            weight.copy_(value)

    def apply_adapters(self, names: list[str], query: torch.Tensor, *args, **kwargs):
        own = self.own(names)
        if not own:
            return self.call_base(names, query, *args, **kwargs)
        base = self.base
        in_weight, out_weight = base.in_proj_weight, base.out_proj.weight
        for name in own:
            in_weight = in_weight + self.delta_weight(name).to(in_weight.dtype)
            out_weight = out_weight + self.out_proj_delta(name).to(out_weight.dtype)
        # the base module's own forward, on the updated weights (its arguments and fast path unchanged)
        return functional_call(self.base_layer, {"in_proj_weight": in_weight, "out_proj.weight": out_weight},
                               (query, *args), kwargs)

    def apply_mixed(self, mixed, groups: list, *args, **kwargs):
        raise ConfigError("LoRA on MultiheadAttention cannot take mixed-adapter batches (adapter_names), as in peft")
