"""LoRA and its variants rsLoRA, DoRA and PiSSA on Linear, transformers Conv1D and Embedding modules.

LoRA (Hu et al., 2021, "LoRA: Low-Rank Adaptation of Large Language Models"). For a frozen weight
W (out × in) and bias b:

    h = W x + b + s · B A dropout(x),     A: r × in,  B: out × r,  s = α / r

* rsLoRA (Kalajdzievski, 2023, "A Rank Stabilization Scaling Factor for Fine-Tuning with LoRA"):
  s = α / √r.
* init ``True`` (default): A Kaiming-uniform, B = 0, so the adapted model starts exactly at the
  pretrained one; ``"gaussian"``: A ~ N(0, 1/r²), B = 0; ``False``: both random (tests only);
  ``"pissa"`` (Meng et al., 2024, "PiSSA: Principal Singular Values and Singular Vectors Adaptation"):
  W = U S Vᵀ, B = U_r √(S_r/s), A = √(S_r/s) V_rᵀ, and the base keeps the residual W − s B A
  (``"pissa_niter_k"``: randomized SVD with k subspace iterations); ``"olora"`` (Büyükakyüz, 2024, "OLoRA:
  Orthonormal Low-Rank Adaptation of Large Language Models"): W = Q R, B = Q_r, A = R_r, the base keeps W − s B A.
* DoRA (Liu et al., 2024, "DoRA: Weight-Decomposed Low-Rank Adaptation"): a variant object
  (``dora.py``) that an adapter made with ``use_dora=True`` carries; it rescales the output units by m / n.
* ``lora_bias=True``: B has a bias c (zero at the start), h = W x + b + s · (B A dropout(x) + c); merging adds
  s · c to the base bias, so a base layer without one cannot merge (Linear and Conv1D only, as in peft).
* Embedding (num × dim): A: r × num, B: dim × r, h = E[x] + s · A[:, x]ᵀ Bᵀ, with A = 0, B ~ N(0, 1).

Conv1D (GPT-2) stores its weight as in × out; the orientation is read from the module type, so
``fan_in_fan_out`` is kept only for peft's config format.

Training runs through one of two autograd functions. Without dropout, ``FusedLowRank`` computes the base
output and the update in one buffer and saves x (shared by q, k and v) and the r-wide activation. With
dropout, ``DroppedLowRank`` saves x, a one-byte mask and the r-wide activation, where a plain
``B(A(dropout(x)))`` also keeps a dropped copy of x for every adapted module; its mask comes from 16-bit
random numbers (``core.lean_ops.dropped_positions``). Under lean training both keep, for an x that is a
norm's or activation's output, that module's input instead and recompute x in backward. An NF4 base
weight (QLoRA) is dequantised for ∂x only in backward. DoRA, a trained base weight, another method's
layer in between, or autocast take the plain path.
"""

from __future__ import annotations

import copy
import math
import re
import warnings
from dataclasses import field

import torch
import torch.nn.functional as F
from torch import nn
from transformers.pytorch_utils import Conv1D

from peftkit.core.config import TargetedConfig, config_dataclass
from peftkit.core.errors import ConfigError
from peftkit.core.layer import AdapterLayer
from peftkit.core.mechanics.lean import kept_form, rebuilt
from peftkit.core.mechanics.lean_ops import dropped_positions
from peftkit.core.mechanics.quantization import dequantized
from peftkit.core.mixed_batch import put, take
from peftkit.methods.config_rules import pattern_value, require_positive, require_probability
from peftkit.methods.lora.corda import CordaConfig, check_corda, check_corda_layer, corda_factors
from peftkit.methods.lora.dora import DoraVariant, variant_for
from peftkit.methods.lora.eva import EvaConfig, check_eva
from peftkit.methods.lora.factors import init_factors
from peftkit.methods.lora.loftq import LoftQConfig, check_loftq, check_loftq_layer, loftq_factors
from peftkit.methods.lora.mixed import stacked_update
from peftkit.methods.lora.parameters import targeted_parameters
from peftkit.methods.lora.replication import check_layer_map, replicate_layers
from peftkit.methods.trainable_tokens import TrainableTokensConfig, token_rows

# Module names LoRA targets when a config leaves target_modules unset (peft's choices).
LORA_DEFAULT_TARGETS = {
    "bert": ["query", "value"],
    "roberta": ["query", "value"],
    "xlm-roberta": ["query", "value"],
    "electra": ["query", "value"],
    "distilbert": ["q_lin", "v_lin"],
    "deberta-v2": ["query_proj", "value_proj"],
    "gpt2": ["c_attn"],
    "gpt_neox": ["query_key_value"],
    "bloom": ["query_key_value"],
    "llama": ["q_proj", "v_proj"],
    "mistral": ["q_proj", "v_proj"],
    "qwen2": ["q_proj", "v_proj"],
    "gemma": ["q_proj", "v_proj"],
    "phi": ["q_proj", "v_proj"],
    "opt": ["q_proj", "v_proj"],
    "bart": ["q_proj", "v_proj"],
    "t5": ["q", "v"],
}

_PISSA = re.compile(r"pissa(?:_niter_(\d+))?")


@config_dataclass
class LoraConfig(TargetedConfig):
    """LoRA settings, with peft's field names and defaults."""

    peft_type = "LORA"
    default_targets = LORA_DEFAULT_TARGETS
    r: int = 8
    lora_alpha: float = 8
    lora_dropout: float = 0.0
    fan_in_fan_out: bool = False
    bias: str = "none"
    use_rslora: bool = False
    use_dora: bool = False
    init_lora_weights: bool | str = True
    lora_bias: bool = False
    target_parameters: list[str] | None = None
    rank_pattern: dict[str, int] = field(default_factory=dict)
    alpha_pattern: dict[str, float] = field(default_factory=dict)
    trainable_token_indices: list[int] | dict[str, list[int]] | None = None  # rows of the embedding that train too
    layer_replication: list[list[int]] | None = None  # [start, end) layer ranges stacked, weights shared
    loftq_config: LoftQConfig | dict[str, int] = field(default_factory=dict)  # init 'loftq': bits 4, iterations
    eva_config: EvaConfig | dict | None = None  # init 'eva': rho, tau, use_label_mask, ... (eva.py)
    corda_config: CordaConfig | dict | None = None  # init 'corda': corda_method 'ipm' / 'kpm', ... (corda.py)

    field_aliases = {"rank": "r", "alpha": "lora_alpha", "dropout": "lora_dropout", "targets": "target_modules"}
    # Fields peft 0.21 writes whose default is not simply empty; at these values they change nothing.
    foreign_defaults = {
        "megatron_core": "megatron.core",
        "qalora_group_size": 16,
        "runtime_config": {"ephemeral_gpu_offload": False},
    }

    def validate(self) -> None:
        super().validate()
        require_positive("r", self.r, integer=True)
        require_positive("lora_alpha", self.lora_alpha)
        require_probability("lora_dropout", self.lora_dropout)
        if self.bias not in ("none", "all", "lora_only"):
            raise ConfigError(f"bias must be 'none', 'all' or 'lora_only', got {self.bias!r}")
        init = self.init_lora_weights
        if not (isinstance(init, bool) or init in ("gaussian", "olora", "loftq", "eva", "corda")
                or (isinstance(init, str) and _PISSA.fullmatch(init))):
            raise ConfigError(f"init_lora_weights must be True, False, 'gaussian', 'pissa', 'pissa_niter_<k>', "
                              f"'olora', 'loftq', 'eva' or 'corda', got {init!r}")
        if init == "corda":
            self.corda_config = check_corda(self.corda_config)
        elif self.corda_config is not None:
            warnings.warn("corda_config is ignored unless init_lora_weights='corda' (as in peft)", stacklevel=3)
            self.corda_config = None
        if init == "eva":
            self.eva_config = check_eva(self.eva_config)
        elif self.eva_config is not None:
            warnings.warn("eva_config is ignored unless init_lora_weights='eva' (as in peft)", stacklevel=3)
            self.eva_config = None
        if init == "loftq":
            self.loftq_config = check_loftq(self.loftq_config)
        elif self.loftq_config:
            warnings.warn("loftq_config is ignored unless init_lora_weights='loftq' (as in peft)", stacklevel=3)
            self.loftq_config = {}
        if self.lora_bias and self.use_dora:
            raise ConfigError("lora_bias=True cannot be combined with use_dora=True (as in peft)")
        if self.lora_bias and not isinstance(init, bool):
            raise ConfigError(f"lora_bias=True needs init_lora_weights True or False, got {init!r} (as in peft)")
        for pattern, value in self.rank_pattern.items():
            require_positive(f"rank_pattern['{pattern}']", value, integer=True)
        for pattern, value in self.alpha_pattern.items():
            require_positive(f"alpha_pattern['{pattern}']", value)
        if self.trainable_token_indices is not None:
            token_rows(self.trainable_token_indices, None, "trainable_token_indices")
        if self.layer_replication is not None:
            check_layer_map(self.layer_replication)

    @property
    def init_from_weight(self) -> bool:
        """Whether A and B start from the base weight, which keeps the residual (PiSSA, OLoRA)."""
        init = self.init_lora_weights
        return isinstance(init, str) and (init in ("olora", "loftq", "corda") or _PISSA.fullmatch(init) is not None)

    def rank_for(self, module_name: str) -> int:
        return pattern_value(self.rank_pattern, module_name, self.r)

    def alpha_for(self, module_name: str) -> float:
        return pattern_value(self.alpha_pattern, module_name, self.lora_alpha)

    def resolved(self, model) -> LoraConfig:
        """With ``target_parameters``, the modules holding them are adapted too (``parameters.py``); with only
        parameters targeted, ``target_modules`` is empty, as peft saves it."""
        if not self.target_parameters:
            return super().resolved(model)
        config = copy.deepcopy(self)
        if config.target_modules is None:
            config.target_modules = []
        config = super(LoraConfig, config).resolved(model)
        holders = tuple(name for name, module in model.named_modules()
                        if targeted_parameters(module, name, config.target_parameters))
        if not holders:
            raise ConfigError(f"target_parameters={config.target_parameters!r} names no parameter of this model "
                              f"(give '<module name or suffix>.<parameter>', e.g. 'mlp.experts.gate_up_proj')")
        config.also_adapted = holders
        return config

    def to_file_dict(self) -> dict:
        """A LoftQ or CorDA adapter is saved as a plain one (``init_lora_weights`` true), as peft's LoftQ guide saves
        it: its weights are in the file, and a reader must not initialise it again."""
        values = super().to_file_dict()
        if self.init_lora_weights == "loftq":
            values.update(init_lora_weights=True, loftq_config={})
        if self.init_lora_weights == "corda":
            values.update(init_lora_weights=True, corda_config=None)
        return values

    def reshape_model(self, model):
        """peft's ``layer_replication``: the layer stack repeated as the map says, weights shared
        (``replication.py``)."""
        return replicate_layers(model, self.layer_replication) if self.layer_replication else None

    def companions(self, model) -> list[TrainableTokensConfig]:
        """peft's ``trainable_token_indices``: these embedding rows train beside LoRA (``trainable_tokens.py``)."""
        if self.trainable_token_indices is None:
            return []
        return token_rows(self.trainable_token_indices, model, "trainable_token_indices")

    def scaling_for(self, module_name: str) -> float:
        r, alpha = self.rank_for(module_name), self.alpha_for(module_name)
        return alpha / math.sqrt(r) if self.use_rslora else alpha / r


class _LoraLayer(AdapterLayer):
    """What Linear and Embedding LoRA share: scaling, the weight delta and the adapters' variants (DoRA).

    ``transposed`` is True when the base stores its weight as in × out (Conv1D, Embedding);
    ``_product(name)`` returns B A in out × in layout.
    """

    transposed: bool = False

    def __init__(self, base_layer: nn.Module) -> None:
        super().__init__(base_layer)
        self.lora_magnitude_vector = nn.ParameterDict()
        self.scaling: dict[str, float] = {}
        self.variants: dict[str, DoraVariant] = {}

    def _product(self, name: str) -> torch.Tensor:
        raise NotImplementedError

    def _out_in(self, tensor: torch.Tensor) -> torch.Tensor:
        """Switch between the stored layout and out × in (a transpose is its own inverse)."""
        return tensor.T if self.transposed else tensor

    def _new_tensor_options(self) -> dict:
        weight = self.weight
        dtype = weight.dtype if weight.dtype.is_floating_point else torch.float32
        return {"device": weight.device, "dtype": dtype}

    def _start_adapter(self, name: str, config: LoraConfig, module_name: str) -> None:
        """Scaling and variant, set before the adapter's tensors are initialised."""
        self.scaling[name] = config.scaling_for(module_name)
        variant = variant_for(config)
        if variant is not None:
            self.variants[name] = variant

    def reconfigure(self, name: str, config: LoraConfig, module_name: str) -> None:
        """Hot-swapping weights saved with another alpha: the scaling follows the new config."""
        self.scaling[name] = config.scaling_for(module_name)

    def remove_adapter(self, name: str) -> None:
        super().remove_adapter(name)
        self.scaling.pop(name, None)
        self.variants.pop(name, None)

    def delta_weight(self, name: str) -> torch.Tensor:
        return self._out_in(self.scaling[name] * self._product(name))

    def _lora_bias(self, name: str) -> torch.Tensor | None:
        lora_B = getattr(self, "lora_B", {})
        return lora_B[name].bias if name in lora_B else None

    def merged_bias(self, name: str, bias: torch.Tensor) -> torch.Tensor:
        extra = self._lora_bias(name)
        return bias if extra is None else bias + self.scaling[name] * extra.detach().float()

    def unmerged_bias(self, name: str, bias: torch.Tensor) -> torch.Tensor:
        extra = self._lora_bias(name)
        return bias if extra is None else bias - self.scaling[name] * extra.detach().float()

    def merged_weight(self, name: str, weight: torch.Tensor) -> torch.Tensor:
        if self._lora_bias(name) is not None and self.bias is None:
            raise ConfigError(f"adapter '{name}' has lora_bias=True but its base layer has no bias to merge it into")
        if name in self.variants:
            return self.variants[name].merged_weight(self, name, weight)
        return super().merged_weight(name, weight)

    def unmerged_weight(self, name: str, weight: torch.Tensor) -> torch.Tensor:
        if name in self.variants:
            return self.variants[name].unmerged_weight(self, name, weight)
        return super().unmerged_weight(name, weight)


class DroppedLowRank(torch.autograd.Function):
    """Δ = s · B A dropout(x), saving x, the dropped positions (one byte each) and A·dropout(x).

    The dropped copy of x (as large as x) is rebuilt from x and the positions in backward instead of
    being kept, and dropout's 1/(1 − p) is applied on the r-wide side. Like ``FusedLowRank``, it keeps a
    recomputable x's source instead of x (``core.lean.kept_form``).
    """

    @staticmethod
    def forward(ctx, x, weight_a, weight_b, scaling: float, p: float):
        dropped, keep_scale = dropped_positions(x, p)
        low = F.linear(x.masked_fill(dropped, 0), weight_a).mul_(keep_scale)
        kept, ctx.rebuild = kept_form(x)
        ctx.save_for_backward(dropped, weight_a, weight_b, low, *kept)
        ctx.scaling, ctx.keep_scale = scaling, keep_scale
        return F.linear(low, weight_b).mul_(scaling)

    @staticmethod
    def backward(ctx, grad_out):
        dropped, weight_a, weight_b, low, *kept = ctx.saved_tensors
        grad_low = (grad_out @ weight_b).mul_(ctx.scaling)
        grad_x = grad_a = grad_b = None
        if ctx.needs_input_grad[2]:
            grad_b = (grad_out.reshape(-1, grad_out.shape[-1]).T @ low.reshape(-1, low.shape[-1])).mul_(ctx.scaling)
        grad_low = grad_low.mul_(ctx.keep_scale)
        if ctx.needs_input_grad[1]:
            kept_x = rebuilt(kept, ctx.rebuild).masked_fill(dropped, 0)
            grad_a = grad_low.reshape(-1, grad_low.shape[-1]).T @ kept_x.reshape(-1, kept_x.shape[-1])
        if ctx.needs_input_grad[0]:
            grad_x = (grad_low @ weight_a).masked_fill_(dropped, 0)
        return grad_x, grad_a, grad_b, None, None


class FusedLowRank(torch.autograd.Function):
    """h = x Wᵀ + b + s · (x Aᵀ) Bᵀ for a frozen W and b, in one function (dropout 0).

    Saves x (shared by q, k and v) and the r-wide x Aᵀ; when x is a tagged recomputable output
    (``core.lean``: a norm or activation), it saves that module's input instead and rebuilds x in
    backward. The update is added into the base output's buffer, with no separate copies.
    """

    @staticmethod
    def forward(ctx, x, weight, bias, weight_a, weight_b, scaling: float):
        low = F.linear(x, weight_a)
        out = F.linear(x, weight, bias)
        out.view(-1, out.shape[-1]).addmm_(low.view(-1, low.shape[-1]), weight_b.T, alpha=scaling)
        kept, ctx.rebuild = kept_form(x)
        ctx.save_for_backward(weight, weight_a, weight_b, low, *kept)
        ctx.scaling = scaling
        return out

    @staticmethod
    def backward(ctx, grad_out):
        weight, weight_a, weight_b, low, *kept = ctx.saved_tensors
        grad_rows = grad_out.reshape(-1, grad_out.shape[-1])
        grad_low = (grad_rows @ weight_b).mul_(ctx.scaling)
        grad_x = grad_a = grad_b = None
        if ctx.needs_input_grad[4]:
            grad_b = (grad_rows.T @ low.reshape(-1, low.shape[-1])).mul_(ctx.scaling)
        if ctx.needs_input_grad[3]:
            x = rebuilt(kept, ctx.rebuild)
            grad_a = grad_low.T @ x.reshape(-1, x.shape[-1])
        if ctx.needs_input_grad[0]:
            grad_x = (grad_rows @ dequantized(weight)).addmm_(grad_low, weight_a)
            grad_x = grad_x.view(*grad_out.shape[:-1], weight.shape[1])
        return grad_x, None, None, grad_a, grad_b, None


def linear_shape(module: nn.Module) -> tuple[int, int]:
    """(in_features, out_features) of a Linear or Conv1D."""
    if isinstance(module, Conv1D):
        return module.weight.shape[0], module.weight.shape[1]
    return module.in_features, module.out_features


class LoraLinear(_LoraLayer):
    """LoRA on ``nn.Linear`` and transformers' ``Conv1D``."""

    adapter_attributes = ("lora_A", "lora_B", "lora_magnitude_vector", "lora_dropout")

    def __init__(self, base_layer: nn.Module) -> None:
        super().__init__(base_layer)
        self.transposed = isinstance(self.base, Conv1D)
        self.in_features, self.out_features = linear_shape(self.base)
        self.lora_A = nn.ModuleDict()
        self.lora_B = nn.ModuleDict()
        self.lora_dropout = nn.ModuleDict()

    @classmethod
    def expected_shapes(cls, base_layer: nn.Module, config: LoraConfig, module_name: str) -> dict[str, tuple]:
        r = config.rank_for(module_name)
        in_features, out_features = linear_shape(base_layer)
        shapes = {"lora_A.weight": (r, in_features), "lora_B.weight": (out_features, r)}
        if config.lora_bias:
            shapes["lora_B.bias"] = (out_features,)
        if config.use_dora:
            shapes.update(DoraVariant.shapes(out_features))
        if config.init_lora_weights == "loftq":
            check_loftq_layer(base_layer, module_name)
        if config.init_lora_weights == "corda":
            check_corda_layer(base_layer, module_name, r)
        return shapes

    def add_adapter(self, name: str, config: LoraConfig, module_name: str) -> None:
        r = config.rank_for(module_name)
        options = self._new_tensor_options()
        self.lora_A[name] = nn.Linear(self.in_features, r, bias=False, **options)
        self.lora_B[name] = nn.Linear(r, self.out_features, bias=config.lora_bias, **options)
        self.lora_dropout[name] = nn.Dropout(config.lora_dropout) if config.lora_dropout > 0 else nn.Identity()
        self._start_adapter(name, config, module_name)
        init = config.init_lora_weights
        if isinstance(init, str) and init.startswith("pissa"):
            self._init_pissa(name, r, _PISSA.fullmatch(init).group(1))
        elif init == "olora":
            self._init_olora(name, r)
        elif init == "loftq":
            self.base.weight = nn.Parameter(loftq_factors(self, name, r, config.loftq_config["loftq_iter"]),
                                            requires_grad=False)  # the NF4 weight LoftQ chose
        elif init == "corda":
            with torch.no_grad():
                self.weight.copy_(self._out_in(corda_factors(self, name)).to(self.weight.dtype))
        else:  # EVA's A comes from data later (initialize_lora_eva_weights); until then the default init
            init_factors(self.lora_A[name], self.lora_B[name], True if init == "eva" else init, r)
        if name in self.variants:
            self.variants[name].init(self, name)

    @torch.no_grad()
    def _init_pissa(self, name: str, r: int, niter: str | None) -> None:
        weight = self.weight
        if not weight.dtype.is_floating_point:
            raise ConfigError("init_lora_weights='pissa' needs a float base weight; quantize after initialising")
        w = self._out_in(weight).float()
        if niter is None:
            u, s, vh = torch.linalg.svd(w, full_matrices=False)
            u, s, vh = u[:, :r], s[:r], vh[:r]
        else:
            u, s, v = torch.svd_lowrank(w, q=r, niter=int(niter))
            vh = v.T
        root = torch.sqrt(s / self.scaling[name])
        self.lora_A[name].weight.copy_(root[:, None] * vh)
        self.lora_B[name].weight.copy_(u * root[None, :])
        residual = w - self.scaling[name] * self._product(name).float()
        weight.copy_(self._out_in(residual).to(weight.dtype))

    @torch.no_grad()
    def _init_olora(self, name: str, r: int) -> None:
        """OLoRA: W = Q R, B = Q[:, :r], A = R[:r]; the base keeps W − s B A."""
        weight = self.weight
        if not weight.dtype.is_floating_point:
            raise ConfigError("init_lora_weights='olora' needs a float base weight; quantize after initialising")
        w = self._out_in(weight).float()
        q, upper = torch.linalg.qr(w)
        self.lora_A[name].weight.copy_(upper[:r])
        self.lora_B[name].weight.copy_(q[:, :r])
        residual = w - self.scaling[name] * self._product(name).float()
        weight.copy_(self._out_in(residual).to(weight.dtype))

    def _product(self, name: str) -> torch.Tensor:
        return self.lora_B[name].weight @ self.lora_A[name].weight

    def _fusable(self, names: list[str], x: torch.Tensor) -> bool:
        """Whether ``FusedLowRank`` computes this forward: one plain LoRA (no DoRA, no dropout) training on
        a frozen Linear / Conv1D (float or NF4) of the input's dtype, with nothing else wrapped in between."""
        if len(names) != 1 or not torch.is_grad_enabled() or isinstance(self.base_layer, AdapterLayer):
            return False
        if torch.is_autocast_enabled(x.device.type):  # autocast picks dtypes per op: the plain path
            return False
        name, weight, bias = names[0], self.weight, self.bias
        lora_a = self.lora_A[name].weight
        return (
            name not in self.variants and isinstance(self.lora_dropout[name], nn.Identity)
            and self.lora_B[name].bias is None
            and lora_a.requires_grad and not weight.requires_grad and (bias is None or not bias.requires_grad)
            and x.dtype == weight.dtype == lora_a.dtype
        )

    def apply_adapters(self, names: list[str], x: torch.Tensor, *args, **kwargs) -> torch.Tensor:
        own = self.own(names)
        if self._fusable(own, x):
            return FusedLowRank.apply(x, self._out_in(self.weight), self.bias, self.lora_A[own[0]].weight,
                                      self.lora_B[own[0]].weight, self.scaling[own[0]])
        result = self.call_base(names, x, *args, **kwargs)
        for name in own:
            lora_A, lora_B, dropout = self.lora_A[name], self.lora_B[name], self.lora_dropout[name]
            lora_x = x.to(lora_A.weight.dtype)
            if name in self.variants:
                result = self.variants[name].linear_output(self, name, x, result)
            elif lora_B.bias is not None:
                result = torch.add(result, lora_B(lora_A(dropout(lora_x))).to(result.dtype), alpha=self.scaling[name])
            elif self.training and isinstance(dropout, nn.Dropout):
                update = DroppedLowRank.apply(lora_x, lora_A.weight, lora_B.weight, self.scaling[name], dropout.p)
                result = update.to(result.dtype).add_(result)  # reuses the fresh update's buffer
            elif not torch.is_grad_enabled() and result.dtype == lora_B.weight.dtype and result.is_contiguous():
                # inference: B·(A x) accumulated into the base output's fresh buffer by one matmul
                down = lora_A(lora_x)
                result.view(-1, result.shape[-1]).addmm_(down.view(-1, down.shape[-1]), lora_B.weight.t(),
                                                         alpha=self.scaling[name])
            elif not torch.is_grad_enabled():
                result = result.add_(lora_B(lora_A(lora_x)).to(result.dtype), alpha=self.scaling[name])
            else:
                result = torch.add(result, lora_B(lora_A(lora_x)).to(result.dtype), alpha=self.scaling[name])
        return result

    def apply_mixed(self, mixed, groups: list, x: torch.Tensor, *args, **kwargs) -> torch.Tensor | None:
        """A mixed batch (``core/mixed_batch.py``): the base output once, then every row's own update —
        in two products over all rows without gradients (``mixed.py``), else group by group. None (run each
        group on its own) when another adapter layer is nested inside or a group has a variant (DoRA)."""
        if isinstance(self.base_layer, AdapterLayer) or any(n in self.variants for n, _ in groups):
            return None
        result = self.base_layer(x, *args, **kwargs)
        biased = any(n is not None and self.lora_B[n].bias is not None for n, _ in groups)
        if not torch.is_grad_enabled() and result.is_contiguous() and not biased:
            updated = stacked_update(self, [n for n, _ in groups], mixed, result, x)
            if updated is not None:
                return updated
        for name, rows in groups:
            if name is None:
                continue
            lora_A, lora_B, dropout = self.lora_A[name], self.lora_B[name], self.lora_dropout[name]
            update = lora_B(lora_A(dropout(take(x, rows).to(lora_A.weight.dtype))))
            put(result, rows, update.mul_(self.scaling[name]).to(result.dtype), add=True)
        return result


class LoraEmbedding(_LoraLayer):
    """LoRA on ``nn.Embedding``: a low-rank table added to the embedding."""

    adapter_attributes = ("lora_embedding_A", "lora_embedding_B", "lora_magnitude_vector")
    transposed = True

    def __init__(self, base_layer: nn.Embedding) -> None:
        super().__init__(base_layer)
        self.lora_embedding_A = nn.ParameterDict()
        self.lora_embedding_B = nn.ParameterDict()

    @classmethod
    def expected_shapes(cls, base_layer: nn.Embedding, config: LoraConfig, module_name: str) -> dict[str, tuple]:
        if config.init_from_weight:
            raise ConfigError(f"init_lora_weights='{config.init_lora_weights}' is not defined for Embedding "
                              f"'{module_name}'; exclude it or use the default init")
        if config.lora_bias:
            raise ConfigError(f"lora_bias=True is not defined for Embedding '{module_name}' (as in peft); exclude it")
        r = config.rank_for(module_name)
        shapes = {
            "lora_embedding_A": (r, base_layer.num_embeddings),
            "lora_embedding_B": (base_layer.embedding_dim, r),
        }
        if config.use_dora:
            shapes.update(DoraVariant.shapes(base_layer.embedding_dim))
        return shapes

    def add_adapter(self, name: str, config: LoraConfig, module_name: str) -> None:
        r = config.rank_for(module_name)
        base = self.base
        options = self._new_tensor_options()
        a = torch.empty(r, base.num_embeddings, **options)
        b = torch.empty(base.embedding_dim, r, **options)
        if config.init_lora_weights is False:
            nn.init.normal_(a)
        else:
            nn.init.zeros_(a)
        nn.init.normal_(b)
        self.lora_embedding_A[name] = nn.Parameter(a)
        self.lora_embedding_B[name] = nn.Parameter(b)
        self._start_adapter(name, config, module_name)
        if name in self.variants:
            self.variants[name].init(self, name)

    def _product(self, name: str) -> torch.Tensor:
        return self.lora_embedding_B[name] @ self.lora_embedding_A[name]

    def apply_adapters(self, names: list[str], x: torch.Tensor, *args, **kwargs) -> torch.Tensor:
        result = self.call_base(names, x, *args, **kwargs)
        base = self.base
        embed_scale = getattr(base, "embed_scale", None)  # scaled embeddings (e.g. Gemma) scale the update too
        for name in self.own(names):
            rows = F.embedding(x, self.lora_embedding_A[name].T, padding_idx=base.padding_idx, max_norm=base.max_norm,
                               norm_type=base.norm_type, scale_grad_by_freq=base.scale_grad_by_freq,
                               sparse=base.sparse)
            update = (rows @ self.lora_embedding_B[name].T) * self.scaling[name]
            if embed_scale is not None:
                update = update * embed_scale.to(update.dtype)
            if name in self.variants:
                result = self.variants[name].embedding_output(self, name, result, update)
            else:
                result = result + update
        return result
