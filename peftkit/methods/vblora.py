"""VB-LoRA: LoRA factors assembled from a trained bank of vectors shared by every layer.

Li, Han and Ji, 2024, "VB-LoRA: Extreme Parameter Efficient Fine-Tuning with Vector Banks". The model keeps one bank
V ∈ ℝ^{N × L} (N vectors of length L). Each layer splits its LoRA factors A (r × in) and B (out × r) into pieces of
length L and trains, per piece, logits z ∈ ℝ^N; a piece is the softmax-weighted sum of its top-k vectors:

    piece(z) = Σ_{i ∈ topk(z)} softmax(z_topk)_i · V_i
    A[j, kL:(k+1)L] = piece(Z_A[j, k]),    B[kL:(k+1)L, j] = piece(Z_B[k, j])
    h = W x + b + B A x

Z_A (r × in/L × N), Z_B (out/L × r × N) start N(0, σ²) and V uniform in ±bound, so the model does not start
unchanged. Saved tensors, as peft names them: ``vblora_logits_A`` = Z_A, ``vblora_logits_B`` = Z_B per layer and
``base_model.vblora_vector_bank`` = V once. Field names and defaults are peft's; peft's ``save_only_topk_weights``
(a file holding only the top-k weights) is not supported.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from peftkit.core.config import TargetedConfig, config_dataclass
from peftkit.core.errors import ConfigError
from peftkit.core.registry import Method, register_method
from peftkit.core.shared import SharedTensors
from peftkit.methods.config_rules import require_choice, require_positive, require_probability
from peftkit.methods.lora import LORA_DEFAULT_TARGETS, linear_shape
from peftkit.methods.weight_delta import WeightDeltaLayer, weight_layers

# peft's defaults for VB-LoRA: every attention and feed-forward projection in T5, OPT, BART and DeBERTa-v2
VBLORA_DEFAULT_TARGETS = {
    **LORA_DEFAULT_TARGETS,
    "deberta-v2": ["query_proj", "key_proj", "value_proj", "dense"],
    "opt": ["q_proj", "k_proj", "v_proj", "out_proj", "fc1", "fc2"],
    "bart": ["q_proj", "k_proj", "v_proj", "out_proj", "fc1", "fc2"],
    "t5": ["q", "k", "v", "o", "wi", "wo"],
}


@config_dataclass
class VBLoRAConfig(TargetedConfig):
    """VB-LoRA settings, with peft's field names and defaults."""

    peft_type = "VBLORA"
    default_targets = VBLORA_DEFAULT_TARGETS
    r: int = 4
    num_vectors: int = 256
    vector_length: int = 256
    topk: int = 2
    vblora_dropout: float = 0.0
    fan_in_fan_out: bool = False  # peft's flag for Conv1D; the layout is read from the module type
    bias: str = "none"
    init_vector_bank_bound: float = 0.02
    init_logits_std: float = 0.1

    field_aliases = {"rank": "r", "dropout": "vblora_dropout", "targets": "target_modules"}

    def validate(self) -> None:
        super().validate()
        for name in ("r", "num_vectors", "vector_length", "topk"):
            require_positive(name, getattr(self, name), integer=True)
        if self.topk > self.num_vectors:
            raise ConfigError(f"topk must be at most num_vectors ({self.num_vectors}), got {self.topk}")
        require_probability("vblora_dropout", self.vblora_dropout)
        require_choice("bias", self.bias, ("none", "all", "vblora_only"))


class VectorBank(SharedTensors):
    """The trained bank V (num_vectors × vector_length)."""

    def __init__(self, config: VBLoRAConfig, modules: dict[str, nn.Module]) -> None:
        super().__init__(config, modules)
        bank = torch.empty(config.num_vectors, config.vector_length, **self.placement(modules))
        bound = config.init_vector_bank_bound
        self.vblora_vector_bank = nn.Parameter(nn.init.uniform_(bank, -bound, bound))


def pieces(logits: torch.Tensor, bank: torch.Tensor, topk: int) -> torch.Tensor:
    """For logits (… × N): the softmax-weighted sum of the top-k bank vectors (… × L)."""
    top, indices = logits.topk(topk, dim=-1)
    return (F.softmax(top, dim=-1).unsqueeze(-1) * bank[indices]).sum(-2)


class VBLoRALinear(WeightDeltaLayer):
    adapter_attributes = ("vblora_logits_A", "vblora_logits_B")

    def __init__(self, base_layer: nn.Module) -> None:
        super().__init__(base_layer)
        self.vblora_logits_A = nn.ParameterDict()
        self.vblora_logits_B = nn.ParameterDict()
        self.settings: dict[str, tuple[int, float]] = {}  # name -> (topk, dropout)

    @classmethod
    def expected_shapes(cls, base_layer: nn.Module, config: VBLoRAConfig, module_name: str) -> dict[str, tuple]:
        in_features, out_features = linear_shape(base_layer)
        length = config.vector_length
        if in_features % length or out_features % length:
            raise ConfigError(f"vector_length {length} must divide the widths of '{module_name}' ({in_features} in, "
                              f"{out_features} out)")
        return {"vblora_logits_A": (config.r, in_features // length, config.num_vectors),
                "vblora_logits_B": (out_features // length, config.r, config.num_vectors)}

    def add_adapter(self, name: str, config: VBLoRAConfig, module_name: str) -> None:
        for attr, shape in self.expected_shapes(self.base, config, module_name).items():
            logits = nn.init.normal_(self.new_tensor(*shape), 0, config.init_logits_std)
            getattr(self, attr)[name] = nn.Parameter(logits)
        self.settings[name] = (config.topk, config.vblora_dropout)

    def factors(self, name: str) -> tuple[torch.Tensor, torch.Tensor]:
        """(A: r × in, B: out × r) assembled from the bank."""
        bank, topk = self.shared[name].vblora_vector_bank, self.settings[name][0]
        logits_a, logits_b = self.vblora_logits_A[name], self.vblora_logits_B[name]
        a = pieces(logits_a, bank, topk).reshape(logits_a.shape[0], -1)
        b = pieces(logits_b, bank, topk).transpose(1, 2).reshape(-1, logits_b.shape[1])
        return a, b

    def update(self, name: str) -> torch.Tensor:
        a, b = self.factors(name)
        return b @ a

    def update_output(self, name: str, x: torch.Tensor) -> torch.Tensor:
        a, b = self.factors(name)
        x = F.dropout(x.to(a.dtype), self.settings[name][1], self.training)
        return F.linear(F.linear(x, a), b)

    def remove_adapter(self, name: str) -> None:
        super().remove_adapter(name)
        self.settings.pop(name, None)


register_method(Method(name="vblora", config_cls=VBLoRAConfig, layers=weight_layers(VBLoRALinear), shared=VectorBank,
                       unchanged_at_start=False, learning_rate=5e-3,
                       train_defaults={"vector_length": 16, "target_modules": "all-linear"},
                       description="VB-LoRA: LoRA factors as top-k mixtures of a trained vector bank shared by all "
                                   "layers"))
