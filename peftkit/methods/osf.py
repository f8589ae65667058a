"""OSF: train the low singular directions of a weight, keeping its top ones, with gradients kept orthogonal to them.

Nayak et al., 2025, "Sculpting Subspaces: Constrained Full Fine-Tuning in LLMs for Continual Learning". For a frozen W
(out × in) with SVD W = U S Vᵀ (taken in float32), the top k = ``effective_rank`` directions stay frozen and the rest
(U_low: out × (m − k), S_low: m − k, V_lowᵀ: (m − k) × in, m = min(out, in)) train, starting at their values in W:

    ΔW = U_low diag(S_low) V_lowᵀ − U₀ diag(S₀) V₀ᵀ,    h = W x + b + ΔW x

(U₀, S₀, V₀: the low part at creation, taken from W again when loading), so the model starts unchanged. The gradients
of U_low and V_lowᵀ are projected off the frozen top directions U_high, V_high, as in peft. k is per module: unset,
half of m; a float in (0, 1], that fraction of m; ``rank_pattern`` (regular expressions searched in the module name)
overrides it. Saved tensors: ``osf_svd_params.U_low``, ``.S_low``, ``.V_low``; field names and defaults are peft's.
"""

from __future__ import annotations

import re

import torch
import torch.nn.functional as F
from torch import nn

from peftkit.core.config import TargetedConfig, config_dataclass
from peftkit.core.errors import ConfigError
from peftkit.core.module_names import ALL_LINEAR
from peftkit.core.registry import Method, register_method
from peftkit.methods.weight_delta import WeightDeltaLayer

_PROJECTIONS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "down_proj", "up_proj"]
# peft's default targets for OSF (a model type it does not list gets every linear layer)
OSF_DEFAULT_TARGETS = {
    **{kind: _PROJECTIONS for kind in ("llama", "llama4", "mistral", "mixtral", "gemma", "gemma2", "gemma3_text",
                                       "qwen2", "qwen3", "phi")},
    "gpt2": ["c_attn", "c_proj"], "gpt_bigcode": ["c_attn", "c_proj"],
    "bloom": ["query_key_value", "dense_4h_to_h"], "gpt_neox": ["query_key_value", "dense_4h_to_h"],
    "falcon": ["query_key_value", "dense_4h_to_h"],
    "opt": ["q_proj", "k_proj", "v_proj", "out_proj", "fc1", "fc2"],
    "gptj": ["q_proj", "k_proj", "v_proj", "out_proj", "fc_in", "fc_out"],
}


def _is_rank(value) -> bool:
    return value is None or (isinstance(value, (int, float)) and not isinstance(value, bool) and value > 0)


@config_dataclass
class OSFConfig(TargetedConfig):
    """OSF settings, with peft's field names and defaults."""

    peft_type = "OSF"
    default_targets = OSF_DEFAULT_TARGETS
    effective_rank: int | float | None = None
    rank_pattern: dict[str, int | float] | None = None
    init_weights: bool = True
    target_svd_config: dict[str, int] | None = None  # accepted and unused, as in peft

    field_aliases = {"rank": "effective_rank", "r": "effective_rank"}

    def validate(self) -> None:
        super().validate()
        if not _is_rank(self.effective_rank):
            raise ConfigError(f"effective_rank must be a positive number of directions or a fraction in (0, 1], "
                              f"got {self.effective_rank!r}")
        for pattern, value in (self.rank_pattern or {}).items():
            if not _is_rank(value) or value is None:
                raise ConfigError(f"rank_pattern['{pattern}'] must be a positive number or fraction, got {value!r}")

    def default_target_modules(self, model_type: str | None) -> list[str] | str:
        return super().default_target_modules(model_type) or ALL_LINEAR

    def rank_for(self, module_name: str, smaller: int) -> int:
        """k for a module whose weight's smaller side is ``smaller`` (peft's rule)."""
        value = self.effective_rank
        for pattern, pattern_value in (self.rank_pattern or {}).items():
            if re.search(pattern, module_name):
                value = pattern_value
                break
        if value is None:
            return smaller // 2
        rank = int(smaller * value) if isinstance(value, float) and value <= 1 else int(value)
        return max(min(smaller, rank), 0)


class _Frozen(nn.Module):
    """An adapter's frozen tensors taken from W (buffers, not saved): they follow the model's device."""

    def __init__(self, **tensors: torch.Tensor) -> None:
        super().__init__()
        for key, tensor in tensors.items():
            self.register_buffer(key, tensor, persistent=False)


class OSFLinear(WeightDeltaLayer):
    adapter_attributes = ("osf_svd_params",)

    def __init__(self, base_layer: nn.Module) -> None:
        super().__init__(base_layer)
        self.osf_svd_params = nn.ModuleDict()
        self.osf_frozen = nn.ModuleDict()

    @classmethod
    def expected_shapes(cls, base_layer: nn.Module, config: OSFConfig, module_name: str) -> dict[str, tuple]:
        out_features, in_features = base_layer.weight.shape
        smaller = min(out_features, in_features)
        k = config.rank_for(module_name, smaller)
        if k <= 0:
            raise ConfigError(f"effective_rank for '{module_name}' comes to {k}; it must keep at least one direction")
        low = smaller - k
        return {"osf_svd_params.S_low": (low,), "osf_svd_params.U_low": (out_features, low),
                "osf_svd_params.V_low": (low, in_features)}

    def add_adapter(self, name: str, config: OSFConfig, module_name: str) -> None:
        (low,) = self.expected_shapes(self.base, config, module_name)["osf_svd_params.S_low"]
        weight = self.weight.detach()
        dtype = self.new_tensor(0).dtype
        u, s, vt = (t.to(dtype) for t in torch.linalg.svd(weight.float(), full_matrices=False))
        k = s.shape[0] - low
        initial = {"U_low": u[:, k:].contiguous(), "S_low": s[k:].contiguous(), "V_low": vt[k:].contiguous()}
        frozen = {f"{key}_init": t.clone() for key, t in initial.items()}
        if self.out_features > self.in_features:  # U's top part cannot be recovered from its low part
            frozen["U_high"] = u[:, :k].contiguous()
        if self.in_features > self.out_features:
            frozen["V_high"] = vt[:k].contiguous()
        self.osf_frozen[name] = _Frozen(**frozen)
        trained = {key: torch.randn_like(t) if not config.init_weights else t for key, t in initial.items()}
        self.osf_svd_params[name] = nn.ParameterDict({key: nn.Parameter(t) for key, t in trained.items()})
        self.osf_svd_params[name]["U_low"].register_hook(lambda grad: self.project(name, "U", grad))
        self.osf_svd_params[name]["V_low"].register_hook(lambda grad: self.project(name, "V", grad))

    def project(self, name: str, side: str, grad: torch.Tensor) -> torch.Tensor:
        """The gradient of U_low (side "U") or V_lowᵀ ("V") without its part along the frozen top directions."""
        frozen = self.osf_frozen[name]
        if side == "U":
            if hasattr(frozen, "U_high"):
                return grad - frozen.U_high @ (frozen.U_high.T @ grad)
            return frozen.U_low_init @ (frozen.U_low_init.T @ grad)
        if hasattr(frozen, "V_high"):
            return grad - (grad @ frozen.V_high.T) @ frozen.V_high
        return (grad @ frozen.V_low_init.T) @ frozen.V_low_init

    def factors(self, name: str) -> tuple[torch.Tensor, torch.Tensor]:
        """(L, R) with ΔW = L R: L = [U_low S_low, −U₀ S₀] (out × 2(m − k)), R = [V_lowᵀ; V₀ᵀ]."""
        params, frozen = self.osf_svd_params[name], self.osf_frozen[name]
        left = torch.cat([params["U_low"] * params["S_low"], -(frozen.U_low_init * frozen.S_low_init)], dim=1)
        return left, torch.cat([params["V_low"], frozen.V_low_init], dim=0)

    def update(self, name: str) -> torch.Tensor:
        left, right = self.factors(name)
        return left @ right

    def update_output(self, name: str, x: torch.Tensor) -> torch.Tensor:
        left, right = self.factors(name)
        return F.linear(F.linear(x.to(left.dtype), right), left)

    def remove_adapter(self, name: str) -> None:
        super().remove_adapter(name)
        if name in self.osf_frozen:
            del self.osf_frozen[name]


register_method(Method(name="osf", config_cls=OSFConfig, layers={nn.Linear: OSFLinear}, learning_rate=1e-4,
                       train_defaults={"target_modules": "all-linear"},
                       description="OSF: the low singular directions of W train, orthogonal to the frozen top ones"))
