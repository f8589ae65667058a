"""MiSS (formerly Bone): one small trained block shared by every r-wide column slice of the weight.

Kang & Yin, 2024, "MiSS: Revisiting the Trade-off in LoRA with an Efficient Shard-Sharing Structure" (first
"Bone: Block-Affine Adaptation of Large Language Models"). For a frozen W (out × in) cut into column slices of
width r (the last one cut short when r does not divide in) and a trained block D (r × out):

    ΔW = [Dᵀ Dᵀ … Dᵀ] (in columns),    ΔW x = Dᵀ Σ_c x_c,    h = W x + b + ΔW x

(x_c: the c-th r-slice of x, zero-padded). D starts at zero, so the model starts unchanged (``init_weights=False``:
Kaiming-uniform). ``init_weights="mini"`` trains only D's first ``mini_r`` columns (r × mini_r), repeated across
the out features. ``init_weights="bat"`` (Bone's block-affine form) needs r to divide in and out; with W cut into
r × r blocks W_ij and D_j (out/r × r × r) one per block row:

    (W + ΔW)_ij = W_ij (I + D_j) + D_j        unmerged: W_ij = ((W + ΔW)_ij − D_j)(I + D_j)⁻¹

so its update depends on W and several active ones apply in turn, as in peft. The saved ``miss_block`` is D in the
shape of its form (r × out, r × mini_r or out/r × r × r); field names and defaults are peft's.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from peftkit.core.config import TargetedConfig, config_dataclass
from peftkit.core.errors import ConfigError
from peftkit.core.registry import Method, register_method
from peftkit.methods.config_rules import require_choice, require_positive, require_probability
from peftkit.methods.lora import LORA_DEFAULT_TARGETS, linear_shape
from peftkit.methods.weight_delta import WeightDeltaLayer, weight_layers


@config_dataclass
class MissConfig(TargetedConfig):
    """MiSS settings, with peft's field names and defaults."""

    peft_type = "MISS"
    default_targets = {**LORA_DEFAULT_TARGETS, "phi": ["q_proj", "v_proj", "fc1", "fc2"]}
    r: int = 64
    miss_dropout: float = 0.0
    mini_r: int = 1
    init_weights: bool | str = True
    bias: str = "none"

    field_aliases = {"rank": "r", "dropout": "miss_dropout"}

    def validate(self) -> None:
        super().validate()
        require_positive("r", self.r, integer=True)
        require_positive("mini_r", self.mini_r, integer=True)
        require_probability("miss_dropout", self.miss_dropout)
        require_choice("init_weights", self.init_weights, (True, False, "bat", "mini"))
        require_choice("bias", self.bias, ("none", "all", "MiSS_only"))


class MissLinear(WeightDeltaLayer):
    adapter_attributes = ("miss_block",)

    def __init__(self, base_layer: nn.Module) -> None:
        super().__init__(base_layer)
        self.miss_block = nn.ParameterDict()
        self.form: dict[str, bool | str] = {}
        self.dropout: dict[str, float] = {}

    @classmethod
    def expected_shapes(cls, base_layer: nn.Module, config: MissConfig, module_name: str) -> dict[str, tuple]:
        in_features, out_features = linear_shape(base_layer)
        r, form = config.r, config.init_weights
        if r > in_features:
            raise ConfigError(f"r ({r}) must not exceed the {in_features} in features of '{module_name}'")
        if form == "bat":
            if in_features % r or out_features % r:
                raise ConfigError(f"init_weights='bat' needs r ({r}) to divide the in ({in_features}) and out "
                                  f"({out_features}) features of '{module_name}'")
            return {"miss_block": (out_features // r, r, r)}
        if form == "mini":
            if out_features % config.mini_r:
                raise ConfigError(f"mini_r ({config.mini_r}) must divide the {out_features} out features of "
                                  f"'{module_name}'")
            return {"miss_block": (r, config.mini_r)}
        return {"miss_block": (r, out_features)}

    def add_adapter(self, name: str, config: MissConfig, module_name: str) -> None:
        (shape,) = self.expected_shapes(self.base, config, module_name).values()
        if config.init_weights == "bat" and not self.weight.dtype.is_floating_point:
            raise ConfigError("init_weights='bat' reads the base weight, which is quantised here; use another form")
        block = self.new_tensor(*shape).zero_()
        if config.init_weights is False:
            nn.init.kaiming_uniform_(block, a=math.sqrt(5))
        self.miss_block[name] = nn.Parameter(block)
        self.form[name] = config.init_weights
        self.dropout[name] = config.miss_dropout

    def reconfigure(self, name: str, config: MissConfig, module_name: str) -> None:
        self.dropout[name] = config.miss_dropout

    def shared_block(self, name: str) -> torch.Tensor:
        """D (r × out) of the slice-sharing forms ("mini": its columns repeated across the out features)."""
        block = self.miss_block[name]
        return block.repeat(1, self.out_features // block.shape[1]) if self.form[name] == "mini" else block

    def base_weight(self) -> torch.Tensor:
        """The base weight, out × in."""
        weight = self.weight.detach()
        return weight.T if self.transposed else weight

    def bat_update(self, name: str, weight: torch.Tensor) -> torch.Tensor:
        """ΔW of the block-affine form for the base weight ``weight`` (out × in): W_ij D_j + D_j per block."""
        block = self.miss_block[name]
        r = block.shape[-1]
        blocks = weight.to(block.dtype).reshape(self.out_features // r, r, self.in_features // r, r).transpose(1, 2)
        return (blocks @ block[:, None] + block[:, None]).transpose(1, 2).reshape(self.out_features, self.in_features)

    def update(self, name: str) -> torch.Tensor:
        if self.form[name] == "bat":
            return self.bat_update(name, self.base_weight())
        block = self.shared_block(name)
        r = block.shape[0]
        return block.T.repeat(1, -(-self.in_features // r))[:, : self.in_features]

    def update_output(self, name: str, x: torch.Tensor) -> torch.Tensor:
        block = self.shared_block(name)
        r = block.shape[0]
        x = F.dropout(x.to(block.dtype), self.dropout[name], training=self.training)
        x = F.pad(x, (0, -x.shape[-1] % r))
        return x.unflatten(-1, (-1, r)).sum(-2) @ block

    def apply_adapters(self, names: list[str], x: torch.Tensor, *args, **kwargs) -> torch.Tensor:
        result = self.call_base(names, x, *args, **kwargs)
        weight = None  # the block-affine forms apply in turn, each to the weight the previous one made
        for name in self.own(names):
            if self.form[name] == "bat":
                weight = self.base_weight() if weight is None else weight
                update = self.bat_update(name, weight)
                weight = weight + update
                result = result + F.linear(x.to(update.dtype), update).to(result.dtype)
            else:
                result = result + self.update_output(name, x).to(result.dtype)
        return result

    def _out_in(self, weight: torch.Tensor, rule) -> torch.Tensor:
        """``rule`` applied to ``weight`` in the out × in layout, the result in the layout of ``weight``."""
        return rule(weight.T).T if self.transposed else rule(weight)

    def merged_weight(self, name: str, weight: torch.Tensor) -> torch.Tensor:
        if self.form[name] != "bat":
            return super().merged_weight(name, weight)
        return self._out_in(weight, lambda w: w + self.bat_update(name, w).to(w.dtype))

    def unmerged_weight(self, name: str, weight: torch.Tensor) -> torch.Tensor:
        if self.form[name] != "bat":
            return super().unmerged_weight(name, weight)
        block = self.miss_block[name].detach().float()
        r = block.shape[-1]
        inverse = torch.linalg.inv(torch.eye(r, device=block.device) + block)

        def rule(w: torch.Tensor) -> torch.Tensor:
            blocks = w.reshape(self.out_features // r, r, self.in_features // r, r).transpose(1, 2)
            restored = (blocks - block[:, None].to(w.dtype)) @ inverse[:, None].to(w.dtype)
            return restored.transpose(1, 2).reshape(self.out_features, self.in_features)

        return self._out_in(weight, rule)

    def remove_adapter(self, name: str) -> None:
        super().remove_adapter(name)
        self.form.pop(name, None)
        self.dropout.pop(name, None)


register_method(Method(name="miss", config_cls=MissConfig, layers=weight_layers(MissLinear), learning_rate=5e-4,
                       peft_module_types=(nn.Linear,), aliases=("bone",),
                       train_defaults={"r": 16, "target_modules": "all-linear"},
                       description="MiSS (Bone): one trained r × out block shared by every r-wide slice of the weight"))
