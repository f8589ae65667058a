"""VL-PET: granularity-controlled modules (Hu et al., ICCV 2023, "VL-PET: Vision-and-Language
Parameter-Efficient Tuning via Granularity Control").

An encoder sub-layer (self-attention, or feed-forward block) with input x and output h, before its
residual, becomes

    h′ = (h + Δh) ⊙ G,      Δh = W_u GELU(W_d x)

where W_d is a multi-head down-projection (block-diagonal: each of ``num_heads`` slices of x is projected
on its own to a slice of the bottleneck) and the gate G has one of four granularities:

    large      G = 2σ(Δh)                     per token and channel (W_u GELU(W_d x), Δh's own projections)
    middle-x   G = 2σ(w · (x + h))            per token;    w ∈ R^d
    middle-y   G = 1 + g                      per channel;  g ∈ R^d, input independent
    small      G = mean_t 2σ(w · [x_t; h_t])  per example;  w ∈ R^{2d}, over the example's tokens

Decoder layers get only a parallel adapter on the cross-attention value projection:
v′(e) = v(e) + s · U GELU(D e).

Choices the paper leaves open: gates are 2σ(·) rather than σ(·) and W_u, U, w and g start at zero, so
the adapted model starts exactly at the pretrained one (G = 1, Δh = 0); ``small`` averages over all
positions (the module does not see the padding mask); for blocks without a module of their own (BERT's
and BART's feed-forward block) the module wraps the block's output projection and reads x at the
block's first module (``block_input``), as parallel bottleneck adapters do.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from peftkit.core.block_input import ReadsBlockInput
from peftkit.core.config import TargetedConfig, config_dataclass
from peftkit.core.errors import ConfigError
from peftkit.core.layer import AdapterLayer, output_width
from peftkit.core.mixed_batch import put, take
from peftkit.core.module_roles import in_model_order, sublayers
from peftkit.core.registry import Method, register_method
from peftkit.core.targets import name_matches

GRANULARITIES = ("large", "middle-x", "middle-y", "small")

# model_type -> (encoder self-attention, encoder feed-forward output, its block input module or None,
#                decoder cross-attention value projection or None)
SUBLAYERS = {
    "t5": (r"encoder\.block\.\d+\.layer\.0\.SelfAttention", r"encoder\.block\.\d+\.layer\.1\.DenseReluDense", None,
           r"decoder\.block\.\d+\.layer\.1\.EncDecAttention\.v"),
    "bart": (r"(?:model\.)?encoder\.layers\.\d+\.self_attn", r"(?:model\.)?encoder\.layers\.\d+\.fc2", "fc1",
             r"(?:model\.)?decoder\.layers\.\d+\.encoder_attn\.v_proj"),
    "bert": (r".*encoder\.layer\.\d+\.attention\.self", r".*encoder\.layer\.\d+\.output\.dense", "intermediate", None),
}
for _alias, _source in (("roberta", "bert"), ("xlm-roberta", "bert"), ("electra", "bert"), ("mbart", "bart")):
    SUBLAYERS[_alias] = SUBLAYERS[_source]


@config_dataclass
class VlPetConfig(TargetedConfig):
    """VL-PET settings; ``target_modules`` defaults to the model's encoder sub-layers and decoder
    cross-attention value projections (``SUBLAYERS``)."""

    peft_type = "VL_PET"
    granularity: str = "large"
    reduction_factor: int = 8
    num_heads: int = 4
    decoder_scaling: float = 1.0
    block_input: dict[str, str] | None = None  # sub-layer pattern -> the module whose input is x
    decoder_values: list[str] | str | None = None

    def validate(self) -> None:
        super().validate()
        if self.granularity not in GRANULARITIES:
            raise ConfigError(f"granularity must be one of {', '.join(GRANULARITIES)}, got {self.granularity!r}")
        for name in ("reduction_factor", "num_heads"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
                raise ConfigError(f"{name} must be a positive integer, got {value!r}")
        if not isinstance(self.decoder_scaling, (int, float)):
            raise ConfigError(f"decoder_scaling must be a number, got {self.decoder_scaling!r}")

    default_roles = ("attention_output", "mlp_output")  # on a family SUBLAYERS does not name: structure_targets

    def default_target_modules(self, model_type: str | None) -> str | None:
        if model_type not in SUBLAYERS:
            return None
        return "|".join(p for p in (SUBLAYERS[model_type][0], SUBLAYERS[model_type][1], SUBLAYERS[model_type][3]) if p)

    def structure_targets(self, model) -> list[str]:
        """Each attention and feed-forward sub-layer, found from the module structure (``module_roles``)."""
        found = sublayers(model)
        return in_model_order(model, found["attention"] + found["feed_forward"])

    def resolved(self, model) -> VlPetConfig:
        explicit_targets = self.target_modules is not None
        config = super().resolved(model)
        model_type = getattr(getattr(model, "config", None), "model_type", None)
        if not explicit_targets and model_type in SUBLAYERS:
            _, feed_forward, block_input, decoder_values = SUBLAYERS[model_type]
            if config.block_input is None and block_input:
                config.block_input = {feed_forward: block_input}
            if config.decoder_values is None and decoder_values:
                config.decoder_values = decoder_values
        return config


def _bottleneck_size(width: int, config: VlPetConfig) -> int:
    size = max(config.num_heads, width // config.reduction_factor)
    return size - size % config.num_heads


class GatedModule(nn.Module):
    """h′ = (h + Δh) ⊙ G for one sub-layer; see the module docstring."""

    def __init__(self, width: int, config: VlPetConfig, like: torch.Tensor) -> None:
        super().__init__()
        heads, size = config.num_heads, _bottleneck_size(width, config)
        if width % heads:
            raise ConfigError(f"VL-PET: width {width} is not divisible by num_heads={heads}")
        options = {"device": like.device, "dtype": like.dtype if like.dtype.is_floating_point else torch.float32}
        self.granularity = config.granularity
        self.heads = heads
        self.down = nn.Parameter(torch.empty(heads, width // heads, size // heads, **options))
        nn.init.kaiming_uniform_(self.down, a=5**0.5)
        self.up = nn.Linear(size, width, **options)
        nn.init.zeros_(self.up.weight)
        nn.init.zeros_(self.up.bias)
        gate_width = {"large": 0, "middle-x": width, "middle-y": width, "small": 2 * width}[config.granularity]
        self.gate_weight = nn.Parameter(torch.zeros(gate_width, **options)) if gate_width else None

    def delta(self, x: torch.Tensor) -> torch.Tensor:
        """Δh = W_u GELU(W_d x) with the multi-head (block-diagonal) W_d."""
        sliced = x.unflatten(-1, (self.heads, -1))
        low = torch.einsum("...hi,hio->...ho", sliced, self.down).flatten(-2)
        return self.up(F.gelu(low))

    def gate(self, x: torch.Tensor, h: torch.Tensor, delta: torch.Tensor) -> torch.Tensor:
        """G, broadcastable to h: (B, T, d) large, (B, T, 1) middle-x, (d,) middle-y, (B, 1, 1) small."""
        if self.granularity == "large":
            return 2 * torch.sigmoid(delta)
        if self.granularity == "middle-x":
            return 2 * torch.sigmoid((x + h) @ self.gate_weight)[..., None]
        if self.granularity == "middle-y":
            return 1 + self.gate_weight
        per_token = 2 * torch.sigmoid(torch.cat([x, h], dim=-1) @ self.gate_weight)
        return per_token.mean(dim=-1, keepdim=True)[..., None]

    def forward(self, x: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
        delta = self.delta(x)
        return (h + delta) * self.gate(x, h, delta)


class ValueAdapter(nn.Module):
    """s · U GELU(D e), parallel to a cross-attention value projection; U starts at zero."""

    def __init__(self, width_in: int, width_out: int, config: VlPetConfig, like: torch.Tensor) -> None:
        super().__init__()
        options = {"device": like.device, "dtype": like.dtype if like.dtype.is_floating_point else torch.float32}
        size = max(1, width_out // config.reduction_factor)
        self.down = nn.Linear(width_in, size, **options)
        self.up = nn.Linear(size, width_out, **options)
        nn.init.zeros_(self.up.weight)
        nn.init.zeros_(self.up.bias)
        self.scaling = float(config.decoder_scaling)

    def forward(self, e: torch.Tensor) -> torch.Tensor:
        return self.scaling * self.up(F.gelu(self.down(e)))


def _is_decoder_value(module_name: str, config: VlPetConfig) -> bool:
    return config.decoder_values is not None and name_matches(module_name, config.decoder_values)


def _input_width(module: nn.Module) -> int:
    first = next(m for m in module.modules() if isinstance(m, nn.Linear))
    return first.in_features


def _block_input_source(module_name: str, config: VlPetConfig) -> str | None:
    sources = (config.block_input or {}).items()
    return next((source for pattern, source in sources if name_matches(module_name, pattern)), None)


class VlPetLayer(ReadsBlockInput):
    """A VL-PET module around an encoder sub-layer, or a parallel adapter on a decoder value projection."""

    adapter_attributes = ("vl_pet",)
    mergeable = False

    def __init__(self, base_layer: nn.Module) -> None:
        super().__init__(base_layer)
        self.vl_pet = nn.ModuleDict()

    @classmethod
    def can_wrap(cls, module: nn.Module) -> bool:
        return output_width(module) is not None

    @classmethod
    def expected_shapes(cls, base_layer: nn.Module, config: VlPetConfig, module_name: str) -> dict[str, tuple]:
        width = output_width(base_layer)
        if _is_decoder_value(module_name, config):
            size = max(1, width // config.reduction_factor)
            width_in = _input_width(base_layer)
            return {"vl_pet.down.weight": (size, width_in), "vl_pet.down.bias": (size,),
                    "vl_pet.up.weight": (width, size), "vl_pet.up.bias": (width,)}
        if width % config.num_heads:
            raise ConfigError(f"VL-PET on '{module_name}': width {width} is not divisible by "
                              f"num_heads={config.num_heads}")
        size = _bottleneck_size(width, config)
        shapes = {"vl_pet.down": (config.num_heads, width // config.num_heads, size // config.num_heads),
                  "vl_pet.up.weight": (width, size), "vl_pet.up.bias": (width,)}
        gate = {"large": 0, "middle-x": width, "middle-y": width, "small": 2 * width}[config.granularity]
        if gate:
            shapes["vl_pet.gate_weight"] = (gate,)
        return shapes

    def add_adapter(self, name: str, config: VlPetConfig, module_name: str) -> None:
        like = next(self.base.parameters())
        width = output_width(self.base)
        if _is_decoder_value(module_name, config):
            self.vl_pet[name] = ValueAdapter(_input_width(self.base), width, config, like)
        else:
            self.vl_pet[name] = GatedModule(width, config, like)

    def attach(self, model: nn.Module, module_name: str, config: VlPetConfig) -> None:
        """For a sub-layer without a module of its own, capture its input at the block's first module."""
        source = _block_input_source(module_name, config)
        if source is not None:
            self.read_input_at(model, module_name, [source], "block_input")

    def apply_adapters(self, names: list[str], *args, **kwargs):
        x = self.module_input(args, kwargs)
        output = self.call_base(names, *args, **kwargs)
        h, rest = (output[0], output[1:]) if isinstance(output, tuple) else (output, None)
        source = x if self.block_input is None else self.block_input[self.rows]
        for name in self.own(names):
            h = self._adapted(name, x, source, h)
        return h if rest is None else (h, *rest)

    def _adapted(self, name: str, x: torch.Tensor, source: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
        module = self.vl_pet[name]
        return h + module(x) if isinstance(module, ValueAdapter) else module(source, h)

    def apply_mixed(self, mixed, groups: list, *args, **kwargs):
        """Rows with different adapters: the sub-layer once for the whole batch (an attention's key / value cache
        updated once), then each group's module on its rows. Under another method's layer: the generic pass."""
        del mixed
        if isinstance(self.base_layer, AdapterLayer):
            return None
        x = self.module_input(args, kwargs)
        output = self.base_layer(*args, **kwargs)
        h, rest = (output[0], output[1:]) if isinstance(output, tuple) else (output, None)
        source = x if self.block_input is None else self.block_input[self.rows]
        result = h.clone()
        for name, rows in groups:
            if name is not None:
                put(result, rows, self._adapted(name, take(x, rows), take(source, rows), take(h, rows)))
        return result if rest is None else (result, *rest)


register_method(Method(name="vl_pet", config_cls=VlPetConfig, layers={nn.Module: VlPetLayer},
                       layers_note=" holding a Linear", peft_reads=False, learning_rate=2e-3,
                       description="VL-PET: gated modules whose granularity (element, vector, matrix) is chosen"))
