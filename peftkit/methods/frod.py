"""FRoD: the weight rebuilt in a basis shared by layers of one role, with a trained diagonal and sparse rotation.

FRoD (AAAI 2026, doi 10.1609/aaai.v40i31.39813). The adapted modules are grouped by role (the last two parts of the
name, e.g. ``self_query``); for each role one square basis V (in × in) is built from all its layers' weights
(an SVD of the stacked weights, or a QR with a ridge-regularised mean inverse, ``regularization_alpha``). Each layer
writes its W = U diag(λ₀) Vᵀ (U's columns unit-norm, λ₀ their norms, U frozen), and trains λ and the values s of a
sparse S at off-diagonal positions drawn once (a share ``sparse_rate``, seeded by ``projection_prng_key``):

    W' = U (S + diag λ) Vᵀ,    h = W' x + b   (= W x + b + (W' − W) x)

S starts at zero and λ at λ₀, so the model starts unchanged (to float32 rounding of U, λ₀, as in peft). Saved
tensors: ``frod_lambda_l`` = λ, ``frod_lambda_s_values`` = s per layer, and once per role (``save_projection``)
``base_model.frod_V.<role>`` = V, ``base_model.frod_s_indices.<role>`` and ``base_model.frod_s_size.<role>``; U is
taken again from W and V when loading. Field names and defaults are peft's.
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
from peftkit.methods.lora import LORA_DEFAULT_TARGETS
from peftkit.methods.weight_delta import WeightDeltaLayer, weight_layers


@config_dataclass
class FrodConfig(TargetedConfig):
    """FRoD settings, with peft's field names and defaults."""

    peft_type = "FROD"
    default_targets = {**LORA_DEFAULT_TARGETS, "vit": ["query", "value"]}
    projection_prng_key: int = 0
    save_projection: bool = True
    frod_dropout: float = 0.0
    fan_in_fan_out: bool = False  # peft's flag for Conv1D; the layout is read from the module type
    bias: str = "none"
    init_weights: bool = True
    sparse_rate: float = 0.01
    regularization_alpha: float = 1e-3
    progressbar: bool = True  # accepted; peftkit shows no progress bar
    runtime_offload_base_weight: bool = False  # accepted; the base weight stays where the model is

    def validate(self) -> None:
        super().validate()
        require_probability("frod_dropout", self.frod_dropout)
        require_choice("bias", self.bias, ("none", "all", "frod_only"))
        if isinstance(self.sparse_rate, bool) or not isinstance(self.sparse_rate, (int, float)) \
                or not 0 <= self.sparse_rate <= 1:
            raise ConfigError(f"sparse_rate must be in [0, 1], got {self.sparse_rate!r}")
        require_positive("regularization_alpha", self.regularization_alpha)


def role(module_name: str) -> str:
    """peft's role of a module, from its name: ``…attention.self.query`` → ``self_query``."""
    parts = module_name.split(".")
    if len(parts) == 1:
        return parts[0]
    if parts[-2].isdigit():
        return parts[-1]
    if parts[-2:] == ["output", "dense"] and len(parts) >= 3 and parts[-3] == "attention":
        return "attention_output"
    return f"{parts[-2]}_{parts[-1]}"


def block_index(module_name: str, fallback: int) -> int:
    parts = module_name.split(".")
    if "layers" in parts and parts.index("layers") + 1 < len(parts) and parts[parts.index("layers") + 1].isdigit():
        return int(parts[parts.index("layers") + 1])
    return next((int(p) for p in parts if p.isdigit()), fallback)


def shared_basis(weights: list[torch.Tensor], alpha: float) -> torch.Tensor:
    """V (in × in) for one role's weights (float32), as peft builds it."""
    stacked = torch.cat(weights, dim=0)
    if stacked.shape[0] < stacked.shape[1]:
        return torch.linalg.svd(stacked, full_matrices=True)[2].T
    q, r = torch.linalg.qr(stacked)
    size = r.shape[1]
    mean_inverse = torch.zeros(size, size, dtype=r.dtype)
    start = 0
    for weight in weights:
        block = q[start:start + weight.shape[0]]
        start += weight.shape[0]
        mean_inverse += torch.linalg.inv(block.T @ block + alpha * torch.eye(size, dtype=r.dtype))
    return r.T @ torch.linalg.eigh(mean_inverse / len(weights))[1]


class _Buffers(nn.Module):
    def __init__(self, tensors: dict[str, torch.Tensor], persistent: bool) -> None:
        super().__init__()
        for key, tensor in tensors.items():
            self.register_buffer(key, tensor, persistent=persistent)


class FrodProjections(SharedTensors):
    """Per role: the basis V, the sparse positions of S and its size."""

    def __init__(self, config: FrodConfig, modules: dict[str, nn.Module]) -> None:
        super().__init__(config, modules)
        by_block: dict[int, dict[str, torch.Tensor]] = {}
        for fallback, (name, module) in enumerate(modules.items()):
            weight = module.weight if isinstance(module, nn.Linear) else module.weight.T
            by_block.setdefault(block_index(name, fallback), {})[role(name)] = weight
        generator = torch.Generator().manual_seed(config.projection_prng_key)
        bases, positions, sizes = {}, {}, {}
        for category in sorted({c for block in by_block.values() for c in block}):
            weights = [block[category] for _, block in sorted(by_block.items()) if category in block]
            basis = shared_basis([w.detach().float().cpu() for w in weights], config.regularization_alpha)
            size = basis.shape[0]
            rows, columns = torch.meshgrid(torch.arange(size), torch.arange(size), indexing="ij")
            pairs = torch.stack([rows.flatten(), columns.flatten()], dim=1)
            pairs = pairs[pairs[:, 0] != pairs[:, 1]]
            count = min(int(size * size * config.sparse_rate), pairs.shape[0])
            if config.sparse_rate > 0 and pairs.shape[0] > 0:
                count = max(1, count)
            chosen = pairs[torch.randperm(pairs.shape[0], generator=generator)[:count]].t().contiguous() \
                if count else torch.empty(2, 0, dtype=torch.long)
            bases[category] = basis.to(device=weights[0].device, dtype=weights[0].dtype)
            positions[category], sizes[category] = chosen, torch.tensor([size, size])
        self.frod_V = _Buffers(bases, config.save_projection)
        self.frod_s_indices = _Buffers(positions, config.save_projection)
        self.frod_s_size = _Buffers(sizes, config.save_projection)


class _Frozen(nn.Module):
    def __init__(self, u: torch.Tensor) -> None:
        super().__init__()
        self.register_buffer("U", u, persistent=False)


class FrodLinear(WeightDeltaLayer):
    adapter_attributes = ("frod_lambda_l", "frod_lambda_s_values")

    def __init__(self, base_layer: nn.Module) -> None:
        super().__init__(base_layer)
        self.frod_lambda_l = nn.ParameterDict()
        self.frod_lambda_s_values = nn.ParameterDict()
        self.frod_U = nn.ModuleDict()
        self.category: dict[str, str] = {}
        self.dropout: dict[str, float] = {}
        self.weight_before_merge: torch.Tensor | None = None

    @classmethod
    def expected_shapes(cls, base_layer: nn.Module, config: FrodConfig, module_name: str) -> dict[str, tuple]:
        in_features = base_layer.in_features if isinstance(base_layer, nn.Linear) else base_layer.weight.shape[0]
        pairs = in_features * (in_features - 1)
        count = min(int(in_features * in_features * config.sparse_rate), pairs)
        if config.sparse_rate > 0 and pairs > 0:
            count = max(1, count)
        return {"frod_lambda_l": (in_features,), "frod_lambda_s_values": (count,)}

    def base_matrix(self) -> torch.Tensor:
        weight = self.weight
        return weight.T if self.transposed else weight

    def add_adapter(self, name: str, config: FrodConfig, module_name: str) -> None:
        category = self.category[name] = role(module_name)
        self.dropout[name] = config.frod_dropout
        shared = self.shared[name]
        dtype = self.new_tensor(0).dtype
        basis = getattr(shared.frod_V, category).detach().double().cpu()
        weight = self.base_matrix().detach().double().cpu()
        try:
            coefficients = torch.linalg.solve(basis, weight.T).T
        except RuntimeError:
            coefficients = weight @ torch.linalg.pinv(basis, rtol=1e-6).T
        norms = torch.linalg.norm(coefficients, dim=0)
        u = torch.zeros_like(coefficients)
        nonzero = norms > 1e-12
        u[:, nonzero] = coefficients[:, nonzero] / norms[nonzero]
        device = self.weight.device
        self.frod_U[name] = _Frozen(u.float().to(device=device, dtype=dtype))
        count = getattr(shared.frod_s_indices, category).shape[1]
        values = torch.zeros(count, device=device, dtype=dtype)
        diagonal = norms.float().to(device=device, dtype=dtype)
        if not config.init_weights:
            values.normal_(std=0.1)
            diagonal = diagonal + torch.randn_like(diagonal) * 0.1
        self.frod_lambda_s_values[name] = nn.Parameter(values)
        self.frod_lambda_l[name] = nn.Parameter(diagonal)

    def reconfigure(self, name: str, config: FrodConfig, module_name: str) -> None:
        self.dropout[name] = config.frod_dropout

    def core(self, name: str) -> torch.Tensor:
        """S + diag λ (in × in)."""
        shared, category = self.shared[name], self.category[name]
        diagonal = self.frod_lambda_l[name]
        rows, columns = getattr(shared.frod_s_indices, category).to(diagonal.device)
        core = torch.diag(diagonal)
        return core.index_put((rows, columns), self.frod_lambda_s_values[name], accumulate=True)

    def rebuilt(self, name: str) -> torch.Tensor:
        """W' = U (S + diag λ) Vᵀ (out × in)."""
        core = self.core(name)
        basis = getattr(self.shared[name].frod_V, self.category[name]).to(core.dtype)
        return self.frod_U[name].U.to(core.dtype) @ core @ basis.T

    def update(self, name: str) -> torch.Tensor:
        original = self.weight_before_merge if self.weight_before_merge is not None else self.weight
        original = original.T if self.transposed else original
        return self.rebuilt(name) - original.to(self.frod_lambda_l[name].dtype)

    def update_output(self, name: str, x: torch.Tensor) -> torch.Tensor:
        core = self.core(name)
        basis = getattr(self.shared[name].frod_V, self.category[name]).to(core.dtype)
        x = F.dropout(x.to(core.dtype), self.dropout[name], self.training)
        rebuilt = F.linear(F.linear(F.linear(x, basis.T), core), self.frod_U[name].U.to(core.dtype))
        return rebuilt - F.linear(x, self.base_matrix().to(core.dtype))

    def merged_weight(self, name: str, weight: torch.Tensor) -> torch.Tensor:
        if not self.merged_adapters:
            self.weight_before_merge = self.weight.detach().clone()
        return weight + self.delta_weight(name).to(weight.dtype)

    def unmerged_weight(self, name: str, weight: torch.Tensor) -> torch.Tensor:
        if not self.merged_adapters:
            original, self.weight_before_merge = self.weight_before_merge, None
            return original.to(weight.dtype)
        return weight - self.delta_weight(name).to(weight.dtype)

    def remove_adapter(self, name: str) -> None:
        super().remove_adapter(name)
        for store in (self.category, self.dropout):
            store.pop(name, None)
        if name in self.frod_U:
            del self.frod_U[name]


register_method(Method(name="frod", config_cls=FrodConfig, layers=weight_layers(FrodLinear), shared=FrodProjections,
                       learning_rate=1e-3, train_defaults={"sparse_rate": 0.01, "target_modules": "all-linear"},
                       description="FRoD: W rebuilt in a basis shared per role; a diagonal and a sparse S train"))
