"""Prefix tuning: trainable keys and values in front of every attention layer's own.

Li and Liang, 2021, "Prefix-Tuning: Optimizing Continuous Prompts for Generation". Every layer l
attends over [K_l^P; K_l] and [V_l^P; V_l], with P ∈ R^{v × 2Ld} the prefix (v virtual tokens, L layers,
width d split over the heads). Trained directly, or — during training — through the reparameterisation
P = W₂ tanh(W₁ E + b₁) + b₂ with E ∈ R^{v × d} (``prefix_projection``; the paper's MLP, which makes
optimisation stable); only P is saved, as in peft.

The prefix reaches the model as a pre-filled transformers cache (``DynamicCache``, or for an
encoder-decoder an ``EncoderDecoderCache`` whose decoder self-attention holds it), so it works for
encoders, decoders — also in ``generate`` — and encoder-decoders; the attention mask gets v ones in
front (the decoder's, for an encoder-decoder). Positions of the real tokens start after the prefix. A model with
multi-head latent attention (DeepSeek-V2/V3) caches a compressed latent and a rotary key part per token instead of
keys and values: its prefix holds those (peft's prefix tuning fails on such caches).
"""

from __future__ import annotations

import torch
from torch import nn
from transformers import DynamicCache, EncoderDecoderCache

from peftkit.core.config import config_dataclass
from peftkit.core.errors import ConfigError
from peftkit.core.prompt import PromptAdapter, PromptLearningConfig, _batch_size, extend_mask
from peftkit.core.registry import Method, register_method


@config_dataclass
class PrefixTuningConfig(PromptLearningConfig):
    """Prefix-tuning settings, with peft's field names."""

    peft_type = "PREFIX_TUNING"
    encoder_hidden_size: int | None = None
    prefix_projection: bool = False
    init_weights: str | None = None

    def validate(self) -> None:
        super().validate()
        if self.init_weights not in (None, "zero"):
            raise ConfigError(f"init_weights must be None or 'zero', got {self.init_weights!r}")

    def resolved(self, model) -> PrefixTuningConfig:
        config = fit_to_cache(super().resolved(model), model, explicit_heads=self.num_attention_heads is not None)
        config.encoder_hidden_size = config.encoder_hidden_size or config.token_dim
        return config


def _text_config(model: nn.Module):
    return model.config.get_text_config() if hasattr(model.config, "get_text_config") else model.config


def latent_widths(model: nn.Module) -> tuple[int, int] | None:
    """(latent width, rotary key width) of a multi-head latent attention cache (DeepSeek-V2/V3), else None."""
    text = _text_config(model)
    widths = getattr(text, "kv_lora_rank", None), getattr(text, "qk_rope_head_dim", None)
    return widths if all(isinstance(w, int) and w > 0 for w in widths) else None


def fit_to_cache(config: PromptLearningConfig, model: nn.Module, explicit_heads: bool) -> PromptLearningConfig:
    """Shape per-layer keys / values as the model caches them. Grouped-query attention caches fewer heads: the
    prefix holds that width (as peft). Multi-head latent attention caches one compressed latent (width c) and one
    rotary key part (width ρ) per token: the prefix holds those, as one "head" of width (c + ρ) / 2 per half."""
    latent = latent_widths(model)
    if latent is not None:
        total = sum(latent)
        if total % 2:
            raise ConfigError(f"the model's latent cache is {latent[0]} + {latent[1]} wide, an odd total; a prefix "
                              f"cannot be laid out in it")
        config.num_attention_heads, config.token_dim = 1, total // 2
        return config
    kv_heads = getattr(_text_config(model), "num_key_value_heads", None)
    if not explicit_heads and kv_heads and kv_heads != config.num_attention_heads:
        config.token_dim = config.token_dim // config.num_attention_heads * kv_heads
        config.num_attention_heads = kv_heads
    return config


class Prefix(PromptAdapter):
    def __init__(self, config: PrefixTuningConfig, model: nn.Module) -> None:
        super().__init__(config)
        options = self.tensor_options(model)
        width = self.token_width(config)
        if config.prefix_projection:
            self.embedding = nn.Embedding(config.num_virtual_tokens, config.token_dim, **options)
            self.transform = nn.Sequential(nn.Linear(config.token_dim, config.encoder_hidden_size, **options),
                                           nn.Tanh(), nn.Linear(config.encoder_hidden_size, width, **options))
        else:
            self.embedding = nn.Embedding(config.num_virtual_tokens, width, **options)
            self.transform = None
        if config.init_weights == "zero":
            nn.init.zeros_(self.embedding.weight)

    @classmethod
    def token_width(cls, config: PrefixTuningConfig) -> int:
        return config.num_layers * 2 * config.token_dim

    def encode(self) -> torch.Tensor:
        tokens = self.embedding.weight
        return self.transform(tokens) if self.transform is not None else tokens

    def cache(self, batch: int, dtype: torch.dtype, latent: tuple[int, int] | None = None) -> DynamicCache:
        """The prefix as a pre-filled cache; ``latent``: a multi-head latent attention model's (c, ρ) widths."""
        config = self.config
        heads = config.num_attention_heads
        table = self.virtual_tokens().to(dtype)
        if latent is not None:  # per layer: the latent (1 × c) and the rotary key part (1 × ρ) of each token
            per_layer = table.view(config.num_virtual_tokens, config.num_layers, sum(latent)).permute(1, 0, 2)
            per_layer = per_layer[:, None, None].expand(-1, batch, 1, -1, -1)
            return DynamicCache([(layer[..., :latent[0]], layer[..., latent[0]:]) for layer in per_layer])
        per_layer = table.view(config.num_virtual_tokens, config.num_layers * 2, heads, config.token_dim // heads)
        per_layer = per_layer.permute(1, 2, 0, 3).unsqueeze(1).expand(-1, batch, -1, -1, -1)
        return DynamicCache([(per_layer[2 * i], per_layer[2 * i + 1]) for i in range(config.num_layers)])

    def prepare(self, model: nn.Module, kwargs: dict) -> dict:
        kwargs = dict(kwargs)
        batch = _batch_size(kwargs)
        dtype = model.get_input_embeddings().weight.dtype
        count = self.config.num_virtual_tokens
        if getattr(model.config, "is_encoder_decoder", False):
            kwargs["cache"] = EncoderDecoderCache(self.cache(batch, dtype), DynamicCache())
            extend_mask(kwargs, "decoder_attention_mask", count, batch, 1)
        else:
            kwargs["cache"] = self.cache(batch, dtype, latent_widths(model))
            extend_mask(kwargs, "attention_mask", count, batch, 1)
        return kwargs


register_method(Method(name="prefix_tuning", aliases=("prefix",), config_cls=PrefixTuningConfig, layers={},
                       prompt_cls=Prefix,
                       learning_rate=1e-2, unchanged_at_start=False,
                       description="prefix tuning: trained keys and values before every layer's attention"))
