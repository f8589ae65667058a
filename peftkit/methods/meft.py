"""MEFT: a pretrained transformer made reversible by adapters, so training memory does not grow with depth.

Liao, Tan & Monz, 2023, "Make Pre-trained Model Reversible: From Parameter to Memory Efficient
Fine-Tuning" (NeurIPS). The embedding output h₀ enters as two streams (x₁, x₂) = (h₀, h₀); every
targeted layer ℓ becomes a reversible coupling (``peftkit.methods.reversible``)

    y₁ = λ·x₁ + F(x₂),    y₂ = β·x₂ + G(y₁)

and the stack's output is the mean of the two streams, (x₁ + x₂) / 2. The three variants:

* MEFT1: F = the pretrained layer with an adapter parallel to its feed-forward block, G = a bottleneck
  adapter; λ = 0.1, β = 1; the streams swap after each layer.
* MEFT2: F = a bottleneck adapter, G = the pretrained layer; λ = 1, β = 0.1; the streams swap.
* MEFT3: F = the attention block with a parallel adapter, G = the feed-forward block with a parallel
  adapter; λ = β = 0.1; no swap.

An adapter is a(z) = s · U f(D z) with U = 0 at the start (``bottleneck.Bottleneck``); a parallel one is
added to its block's residual sum (before the layer norm of a post-norm encoder; reading the normed
input of a pre-norm decoder block). With the adapters at zero and λ = 0 (MEFT1) or β = 0 (MEFT2), one
stream carries exactly the pretrained hidden states.

Training runs the bottom ``reversible_layers`` layers (default: all) through ``ReversibleSegment``:
only their last outputs are kept and the backward pass rebuilds each layer's inputs by inversion, so
activation memory stays that of one layer. Layers above run the same coupling with ordinary autograd.
Choices the paper leaves open: the adapters use ReLU and scaling s = 1 (both settable); a
parallel adapter on a pre-norm block reads the normed input.

Precision: inversion divides by λ and β, so the rounding of each sum λ·x₁ + F(x₂) grows about
1/min(λ, β)-fold per layer on the way down (``benchmarks/meft_reconstruction.py`` prints the error of
the rebuilt bottom input against depth: MEFT1 on the bundled MiniLM, 6 float32 layers: 9.4e-2).
``wide_streams=True`` keeps the two streams and their sums one precision wider than the layers (float64
for a float32 model, float32 for bfloat16 / float16) while F and G run in the layer's dtype: about ten
times less error there (7.8e-3), for about a fifth more peak memory (``benchmarks/memory_methods.py``).
Deeper float32 models should make only their bottom layers reversible (``reversible_layers``).
Supported layers: post-norm encoder layers (BERT family) and pre-norm decoder layers (Llama family).
MEFT changes how layers connect, so it cannot be merged into the weights.
"""

from __future__ import annotations

import inspect

import torch
from torch import nn

from peftkit.core.config import TargetedConfig, config_dataclass
from peftkit.core.errors import ConfigError
from peftkit.core.layer import AdapterLayer, output_width
from peftkit.core.mechanics.sharding import gathered, is_sharded
from peftkit.core.registry import Method, register_method
from peftkit.core.targets import ALL, layer_index
from peftkit.methods.bottleneck import ACTIVATIONS, Bottleneck
from peftkit.methods.reversible import Coupling, ReversibleSegment, coupled

VARIANTS = {1: Coupling(lam=0.1, beta=1.0, swap=True), 2: Coupling(lam=1.0, beta=0.1, swap=True),
            3: Coupling(lam=0.1, beta=0.1, swap=False)}


@config_dataclass
class MeftConfig(TargetedConfig):
    """MEFT settings. ``target_modules`` defaults to every transformer layer; they must be consecutive."""

    peft_type = "MEFT"
    variant: int = 1
    lam: float | None = None  # λ; None: the variant's
    beta: float | None = None  # β; None: the variant's
    reversible_layers: int | None = None  # the bottom k targeted layers use the inverting backward; None: all
    reduction_factor: int = 16
    bottleneck_size: int | None = None
    non_linearity: str = "relu"
    scaling: float = 1.0
    adapter_dropout: float = 0.0
    wide_streams: bool = False  # keep the streams one precision wider than the layers (see the module docstring)

    def validate(self) -> None:
        super().validate()
        if self.variant not in VARIANTS:
            raise ConfigError(f"variant must be 1, 2 or 3 (MEFT1-3), got {self.variant!r}")
        for name in ("lam", "beta", "scaling"):
            value = getattr(self, name)
            if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0):
                raise ConfigError(f"{name} must be a number ≥ 0, got {value!r}")
        for name in ("reversible_layers", "reduction_factor", "bottleneck_size"):
            value = getattr(self, name)
            smallest = 0 if name == "reversible_layers" else 1
            if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < smallest):
                raise ConfigError(f"{name} must be an integer ≥ {smallest}, got {value!r}")
        if self.non_linearity not in ACTIVATIONS:
            raise ConfigError(f"non_linearity must be one of {', '.join(ACTIVATIONS)}, got {self.non_linearity!r}")
        if not isinstance(self.adapter_dropout, (int, float)) or not 0 <= self.adapter_dropout < 1:
            raise ConfigError(f"adapter_dropout must be in [0, 1), got {self.adapter_dropout!r}")
        coupling = self.coupling()
        if self.reversible_layers != 0 and 0 in (coupling.lam, coupling.beta):
            raise ConfigError(f"λ = {coupling.lam}, β = {coupling.beta}: a zero cannot be inverted; set "
                              f"reversible_layers=0 to train with ordinary backward")

    def coupling(self) -> Coupling:
        default = VARIANTS[self.variant]
        return Coupling(lam=default.lam if self.lam is None else float(self.lam),
                        beta=default.beta if self.beta is None else float(self.beta), swap=default.swap)

    def default_target_modules(self, model_type: str | None) -> str:
        return ALL


class EncoderLayerParts:
    """Post-norm encoder layer (BERT family): LN(x + Attn(x)), then LN(h + FFN(h))."""

    @staticmethod
    def matches(layer: nn.Module) -> bool:
        return all(hasattr(layer, a) for a in ("attention", "intermediate", "output")) and hasattr(
            layer.attention, "self")

    @staticmethod
    def attention(layer, x, arguments: dict, adapter) -> torch.Tensor:
        if arguments.get("encoder_hidden_states") is not None:
            raise ConfigError("MEFT does not support cross-attention layers")
        extra = {k: v for k, v in arguments.items()
                 if k not in ("attention_mask", "encoder_hidden_states", "encoder_attention_mask")}
        attended, _ = layer.attention.self(x, attention_mask=arguments.get("attention_mask"), **extra)
        return layer.attention.output(attended, x if adapter is None else x + adapter(x))

    @staticmethod
    def feed_forward(layer, h, adapter) -> torch.Tensor:
        return layer.output(layer.intermediate(h), h if adapter is None else h + adapter(h))


class DecoderLayerParts:
    """Pre-norm decoder layer (Llama family): x + Attn(norm(x)), then h + MLP(norm(h))."""

    @staticmethod
    def matches(layer: nn.Module) -> bool:
        return all(hasattr(layer, a) for a in ("self_attn", "mlp", "input_layernorm", "post_attention_layernorm"))

    @staticmethod
    def attention(layer, x, arguments: dict, adapter) -> torch.Tensor:
        normed = layer.input_layernorm(x)
        attended, _ = layer.self_attn(hidden_states=normed, **arguments)
        return x + attended if adapter is None else x + attended + adapter(normed)

    @staticmethod
    def feed_forward(layer, h, adapter) -> torch.Tensor:
        normed = layer.post_attention_layernorm(h)
        return h + layer.mlp(normed) if adapter is None else h + layer.mlp(normed) + adapter(normed)


PARTS = (EncoderLayerParts, DecoderLayerParts)


def parts_of(layer: nn.Module):
    return next((parts for parts in PARTS if parts.matches(layer)), None)


def layer_arguments(layer: nn.Module, args: tuple, kwargs: dict) -> tuple[torch.Tensor, dict]:
    """The hidden states and every other argument of a layer call, by name (``**kwargs`` flattened)."""
    signature = inspect.signature(layer.forward)
    bound = signature.bind(*args, **kwargs).arguments
    variadic = next((n for n, p in signature.parameters.items() if p.kind is p.VAR_KEYWORD), None)
    extra = bound.pop(variadic, {}) if variadic else {}
    hidden_name = next(iter(signature.parameters))
    return bound.pop(hidden_name), {**bound, **extra}


CACHE_ARGUMENTS = ("cache", "past_key_values", "past_key_value")


def without_cache(arguments: dict) -> dict:
    """Training arguments for the reversible backward: it recomputes every layer, so a key/value cache
    would see each token twice. An empty cache is left out; one holding earlier tokens is an error."""
    for key in CACHE_ARGUMENTS:
        cache = arguments.get(key)
        if cache is not None and cache.get_seq_length() > 0:
            raise ConfigError("MEFT cannot train through its reversible layers on top of cached earlier tokens; "
                              "call the model with use_cache=False (or reversible_layers=0)")
    kept = {k: v for k, v in arguments.items() if k not in CACHE_ARGUMENTS}
    return {**kept, "use_cache": False} if "use_cache" in arguments else kept


class MeftStep:
    """One targeted layer as a reversible step for one adapter: F and G of the config's variant."""

    def __init__(self, layer: MeftLayer, name: str, arguments: dict) -> None:
        self.layer, self.name, self.arguments = layer, name, arguments
        self.parts = parts_of(layer.base)
        self.variant = layer.settings[name].variant
        self.dtype = next(layer.base.parameters()).dtype

    def _adapter(self, role: str):
        block, scale = getattr(self.layer, role)[self.name], self.layer.settings[self.name].scaling
        return lambda z: scale * block(z)

    def _pretrained_layer(self, x, adapter=None) -> torch.Tensor:
        base = self.layer.base
        return self.parts.feed_forward(base, self.parts.attention(base, x, self.arguments, None), adapter)

    def weights(self):
        """Sharded with FSDP, the layer's weights are gathered here: its own forward, which would, is not run."""
        return gathered(self.layer.base)

    def F(self, x: torch.Tensor) -> torch.Tensor:
        """F in the layer's dtype, handed back in the streams' (possibly wider) dtype."""
        inner = x.to(self.dtype)
        if self.variant == 1:
            out = self._pretrained_layer(inner, self._adapter("meft_f"))
        elif self.variant == 2:
            out = self._adapter("meft_f")(inner)
        else:
            out = self.parts.attention(self.layer.base, inner, self.arguments, self._adapter("meft_f"))
        return out.to(x.dtype)

    def G(self, y: torch.Tensor) -> torch.Tensor:
        inner = y.to(self.dtype)
        if self.variant == 1:
            out = self._adapter("meft_g")(inner)
        elif self.variant == 2:
            out = self._pretrained_layer(inner)
        else:
            out = self.parts.feed_forward(self.layer.base, inner, self._adapter("meft_g"))
        return out.to(y.dtype)

    def trainable(self) -> list[nn.Parameter]:
        return [p for p in self.layer.parameters() if p.requires_grad]


WIDER = {torch.float32: torch.float64, torch.bfloat16: torch.float32, torch.float16: torch.float32}


def run_streams(segment: list[MeftLayer], name: str, hidden: torch.Tensor, arguments: dict):
    """The two streams after the segment's layers, starting from (hidden, hidden), in the streams' dtype."""
    config = segment[0].settings[name]
    coupling = config.coupling()
    steps = [MeftStep(layer, name, arguments) for layer in segment]
    reversible = len(steps) if config.reversible_layers is None else min(config.reversible_layers, len(steps))
    x1 = x2 = hidden.to(WIDER.get(hidden.dtype, hidden.dtype)) if config.wide_streams else hidden
    params = [p for step in steps[:reversible] for p in step.trainable()]
    if reversible and torch.is_grad_enabled() and (params or hidden.requires_grad):
        for step in steps:
            step.arguments = without_cache(arguments)
        x1, x2 = ReversibleSegment.apply(x1, x2, steps[:reversible], coupling, *params)
        steps = steps[reversible:]
    if steps and torch.is_grad_enabled() and is_sharded(segment[0].base):
        raise ConfigError("MEFT under FSDP trains every targeted layer reversibly (reversible_layers unset): an "
                          "ordinary backward would need the layers' gathered weights kept after their forward")
    for step in steps:
        x1, x2 = coupled(step, coupling, x1, x2)
    return x1, x2


class MeftLayer(AdapterLayer):
    """A transformer layer in a MEFT stack. The lowest targeted layer runs the whole stack; the layers
    above it hand their input on unchanged (their computation happened inside the stack)."""

    adapter_attributes = ("meft_f", "meft_g")

    def __init__(self, base_layer: nn.Module) -> None:
        super().__init__(base_layer)
        self.meft_f = nn.ModuleDict()
        self.meft_g = nn.ModuleDict()
        self.settings: dict[str, MeftConfig] = {}
        self.segments: dict[str, list[MeftLayer]] = {}  # adapter -> the stack's layers, bottom first

    @classmethod
    def can_wrap(cls, module: nn.Module) -> bool:
        return parts_of(module) is not None

    @classmethod
    def expected_shapes(cls, base_layer: nn.Module, config: MeftConfig, module_name: str) -> dict[str, tuple]:
        width = output_width(base_layer)
        size = config.bottleneck_size or max(1, width // config.reduction_factor)
        roles = ("meft_f",) if config.variant == 2 else ("meft_f", "meft_g")
        shapes = {}
        for role in roles:
            shapes.update({f"{role}.down.weight": (size, width), f"{role}.down.bias": (size,),
                           f"{role}.up.weight": (width, size), f"{role}.up.bias": (width,)})
        return shapes

    def add_adapter(self, name: str, config: MeftConfig, module_name: str) -> None:
        shapes = self.expected_shapes(self.base, config, module_name)
        like = next(self.base.parameters())
        for role in ("meft_f", "meft_g"):
            if f"{role}.down.bias" in shapes:
                width = shapes[f"{role}.up.bias"][0]
                getattr(self, role)[name] = Bottleneck((width, width), shapes[f"{role}.down.bias"][0],
                                                       config.non_linearity, config.adapter_dropout, like)
        self.settings[name] = config

    def attach(self, model: nn.Module, module_name: str, config: MeftConfig) -> None:
        """Link every layer holding this adapter into one stack, bottom first; they must be consecutive."""
        name = next(n for n, c in self.settings.items() if c is config)
        members = [(n, m) for n, m in model.named_modules() if isinstance(m, MeftLayer) and m.has_adapter(name)]
        indices = [layer_index(n, config.layers_pattern) for n, _ in members]
        if None in indices or indices != list(range(indices[0], indices[0] + len(indices))):
            raise ConfigError(f"MEFT needs consecutive transformer layers; targeted: {[n for n, _ in members]}")
        segment = [m for _, m in members]
        for _, layer in members:
            layer.segments[name] = segment

    def check_mergeable(self) -> None:
        raise ConfigError("MEFT cannot be merged into the weights: it rewires the layers into two streams")

    def remove_adapter(self, name: str) -> None:
        super().remove_adapter(name)
        self.settings.pop(name, None)
        self.segments.pop(name, None)

    def forward(self, *args, **kwargs):
        if self.composition is not None:
            raise ConfigError("MEFT adapters cannot be composed with other adapters: they rewire the layers")
        return super().forward(*args, **kwargs)

    def apply_adapters(self, names: list[str], *args, **kwargs):
        names = self.own(names)
        if not names:
            return self.call_base(names, *args, **kwargs)
        if len(names) > 1:
            raise ConfigError(f"only one MEFT adapter can be active at a time, got {names}")
        name = names[0]
        hidden, arguments = layer_arguments(self.base, args, kwargs)
        segment = self.segments[name]
        if self is not segment[0]:
            return hidden  # computed by the stack's bottom layer
        x1, x2 = run_streams(segment, name, hidden, arguments)
        return ((x1 + x2) / 2).to(hidden.dtype)


register_method(Method(name="meft", config_cls=MeftConfig, layers={nn.Module: MeftLayer},
                       layers_note=" that is a transformer layer (BERT-style encoder or Llama-style decoder)",
                       peft_reads=False, learning_rate=2e-3, unchanged_at_start=False,
                       description="MEFT: reversible adapters, so activations are recomputed instead of stored"))
