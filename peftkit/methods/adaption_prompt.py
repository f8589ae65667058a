"""Adaption prompt (LLaMA-Adapter): gated prompt tokens that the top attention layers also attend to.

Zhang et al., 2023, "LLaMA-Adapter: Efficient Fine-tuning of Language Models with Zero-init Attention". In each of
the top ``adapter_layers`` attention modules, with the layer's own projections and query states Q (rotary
positions applied, for Llama):

    h = Attn(x) + W_o · g · softmax(Q (W_k P)ᵀ / √d_h) (W_v P),   P ∈ R^{L × d},  g ∈ R

per head (the key / value heads repeated over their query groups), where P are L = ``adapter_len`` learned prompt
tokens (N(0, 1)) and g the gate, starting at zero so the model starts unchanged. GPT-2 (fused ``c_attn``) adds the
prompt's output without the output projection, as peft does. Llama, Mistral and GPT-2 models, as in peft.

Saved tensors, as peft's: ``<attention>.adaption_prompt`` (P, 1 × L × d) and ``<attention>.adaption_gate`` (g).
``target_modules`` is peft's one name suffix of the attention modules (default ``self_attn``, GPT-2's ``attn``).
"""

from __future__ import annotations

import math

import torch
from torch import nn

from peftkit.core.config import PeftConfig, TargetedConfig, config_dataclass
from peftkit.core.errors import ConfigError
from peftkit.core.layer import AdapterLayer
from peftkit.core.mixed_batch import MixedBatch, put, take
from peftkit.core.registry import Method, register_method

ATTENTION = {"llama": "self_attn", "mistral": "self_attn", "gpt2": "attn"}


@config_dataclass
class AdaptionPromptConfig(TargetedConfig):
    """Adaption-prompt settings, with peft's field names: ``target_modules`` is one name suffix."""

    peft_type = "ADAPTION_PROMPT"
    adapter_len: int | None = None
    adapter_layers: int | None = None

    omit_at_default = ("exclude_modules", "layers_to_transform", "layers_pattern")

    def validate(self) -> None:
        super().validate()
        for name in ("adapter_len", "adapter_layers"):
            value = getattr(self, name)
            if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value <= 0):
                raise ConfigError(f"{name} must be a positive integer, got {value!r}")

    def resolved(self, model) -> AdaptionPromptConfig:
        config = PeftConfig.resolved(self, model)
        model_type = getattr(getattr(model, "config", None), "model_type", None)
        if model_type not in ATTENTION:
            raise ConfigError(f"adaption prompts need a {', '.join(ATTENTION)} model, not '{model_type}'")
        for name in ("adapter_len", "adapter_layers"):
            if getattr(config, name) is None:
                raise ConfigError(f"{name} is not set (adaption prompts have no default for it)")
        suffix = _suffix(config.target_modules) or ATTENTION[model_type]
        names = [name for name, _ in model.named_modules() if name.endswith("." + suffix)]
        if len(names) < config.adapter_layers:
            raise ConfigError(f"adapter_layers={config.adapter_layers}, but the model has {len(names)} modules "
                              f"named '*.{suffix}'")
        config.target_modules = names[-config.adapter_layers:]
        return config

    def to_dict(self) -> dict:
        values = super().to_dict()
        values["target_modules"] = _suffix(self.target_modules)  # written as peft's one suffix
        return values


def _suffix(targets: list[str] | str | None) -> str | None:
    """peft's suffix for the resolved list of attention modules (or the suffix itself)."""
    if isinstance(targets, list):
        return targets[0].rsplit(".", 1)[-1] if targets else None
    return targets


def _rotate_half(x: torch.Tensor) -> torch.Tensor:
    first, second = x.chunk(2, dim=-1)
    return torch.cat([-second, first], dim=-1)


class AdaptionPromptLayer(AdapterLayer):
    adapter_attributes = ("adaption_prompt", "adaption_gate")
    mergeable = False

    def __init__(self, base_layer: nn.Module) -> None:
        super().__init__(base_layer)
        self.adaption_prompt = nn.ParameterDict()
        self.adaption_gate = nn.ParameterDict()

    @staticmethod
    def _fused(module: nn.Module) -> bool:
        return hasattr(module, "c_attn")

    @classmethod
    def can_wrap(cls, module: nn.Module) -> bool:
        return cls._fused(module) or all(hasattr(module, p) for p in ("q_proj", "k_proj", "v_proj", "o_proj"))

    @classmethod
    def expected_shapes(cls, base_layer: nn.Module, config: AdaptionPromptConfig, module_name: str) -> dict:
        width = base_layer.c_attn.weight.shape[0] if cls._fused(base_layer) else base_layer.q_proj.in_features
        return {"adaption_prompt": (1, config.adapter_len, width), "adaption_gate": (1,)}

    def add_adapter(self, name: str, config: AdaptionPromptConfig, module_name: str) -> None:
        like = self.base.c_attn.weight if self._fused(self.base) else self.base.q_proj.weight
        options = {"device": like.device, "dtype": like.dtype if like.is_floating_point() else torch.float32}
        shapes = self.expected_shapes(self.base, config, module_name)
        self.adaption_prompt[name] = nn.Parameter(torch.randn(shapes["adaption_prompt"], **options))
        self.adaption_gate[name] = nn.Parameter(torch.zeros(1, **options))

    def _queries_keys_values(self, name: str, hidden: torch.Tensor, kwargs: dict):
        attn, prompt = self.base, self.adaption_prompt[name]
        heads, head_dim = attn.config.num_attention_heads, attn.head_dim
        batch, length, width = hidden.shape
        if self._fused(attn):
            query = attn.c_attn(hidden)[..., :width]
            key, value = attn.c_attn(prompt)[..., width:].split(width, dim=-1)
        else:
            query, key, value = attn.q_proj(hidden), attn.k_proj(prompt), attn.v_proj(prompt)
        query = query.view(batch, length, heads, head_dim).transpose(1, 2)
        if not self._fused(attn):
            cos, sin = kwargs["position_embeddings"]
            query = query * cos.unsqueeze(1) + _rotate_half(query) * sin.unsqueeze(1)
        kv_heads = key.shape[-1] // head_dim
        key, value = (t.view(1, -1, kv_heads, head_dim).transpose(1, 2) for t in (key, value))
        return query, key.repeat_interleave(heads // kv_heads, 1), value.repeat_interleave(heads // kv_heads, 1)

    def prompt_output(self, name: str, hidden: torch.Tensor, kwargs: dict) -> torch.Tensor:
        query, key, value = self._queries_keys_values(name, hidden, kwargs)
        scores = query @ key.transpose(2, 3).to(query.dtype) / math.sqrt(query.shape[-1])
        weights = self.adaption_gate[name] * torch.softmax(scores, dim=-1, dtype=torch.float32).to(query.dtype)
        output = (weights @ value).transpose(1, 2).reshape(hidden.shape[0], hidden.shape[1], -1)
        return output if self._fused(self.base) else self.base.o_proj(output)

    def apply_adapters(self, names: list[str], *args, **kwargs):
        outputs = self.call_base(names, *args, **kwargs)
        own = self.own(names)
        if not own:
            return outputs
        hidden = self.module_input(args, kwargs)
        attended = outputs[0]
        for name in own:
            attended = attended + self.prompt_output(name, hidden, kwargs).to(attended.dtype)
        return (attended, *outputs[1:])

    def forward(self, *args, **kwargs):
        if isinstance(self.composition, MixedBatch) and not self.adapters_disabled:
            return self.apply_rows(self.composition, *args, **kwargs)
        return super().forward(*args, **kwargs)

    def apply_rows(self, mixed: MixedBatch, *args, **kwargs):
        """Each row with its own adapter: the attention once for the batch, then each group's prompt output (the
        attention's cache and inputs arrive by keyword, so the generic row split does not fit)."""
        outputs = self.base_layer(*args, **kwargs)
        hidden = self.module_input(args, kwargs)
        attended = outputs[0].clone()
        for name, rows in mixed.groups:
            if not self.own([name]):
                continue
            own = {}
            if "position_embeddings" in kwargs:
                own["position_embeddings"] = tuple(mixed._rows_of(t, rows) for t in kwargs["position_embeddings"])
            put(attended, rows, self.prompt_output(name, take(hidden, rows), own).to(attended.dtype), add=True)
        return (attended, *outputs[1:])


register_method(Method(name="adaption_prompt", config_cls=AdaptionPromptConfig, layers={nn.Module: AdaptionPromptLayer},
                       layers_note=" (Llama / Mistral self_attn or GPT-2 attn)",
                       learning_rate=9e-3, train_defaults={"adapter_len": 4, "adapter_layers": 1},
                       description="LLaMA-Adapter: gated prompt tokens in the top attention layers"))
