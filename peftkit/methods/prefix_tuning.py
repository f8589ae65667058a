"""Prefix tuning: trainable keys and values in front of every attention layer's own.

Li and Liang, 2021, "Prefix-Tuning: Optimizing Continuous Prompts for Generation". Every layer l
attends over [K_l^P; K_l] and [V_l^P; V_l], with P ∈ R^{v × 2Ld} the prefix (v virtual tokens, L layers,
width d split over the heads). Trained directly, or — during training — through the reparameterisation
P = W₂ tanh(W₁ E + b₁) + b₂ with E ∈ R^{v × d} (``prefix_projection``; the paper's MLP, which makes
optimisation stable); only P is saved, as in peft.

The prefix reaches the model as a pre-filled transformers cache (``DynamicCache``, or for an
encoder-decoder an ``EncoderDecoderCache`` whose decoder self-attention holds it), so it works for
encoders, decoders — also in ``generate`` — and encoder-decoders; the attention mask gets v ones in
front (the decoder's, for an encoder-decoder). Positions of the real tokens start after the prefix.
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
        explicit_heads = self.num_attention_heads is not None
        config = super().resolved(model)
        model_config = model.config.get_text_config() if hasattr(model.config, "get_text_config") else model.config
        kv_heads = getattr(model_config, "num_key_value_heads", None)
        if not explicit_heads and kv_heads and kv_heads != config.num_attention_heads:
            # grouped-query attention caches fewer heads: the prefix holds keys / values of that width (as peft)
            config.token_dim = config.token_dim // config.num_attention_heads * kv_heads
            config.num_attention_heads = kv_heads
        config.encoder_hidden_size = config.encoder_hidden_size or config.token_dim
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

    def cache(self, batch: int, dtype: torch.dtype) -> DynamicCache:
        config = self.config
        heads = config.num_attention_heads
        table = self.virtual_tokens().to(dtype)
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
            kwargs["cache"] = self.cache(batch, dtype)
            extend_mask(kwargs, "attention_mask", count, batch, 1)
        return kwargs


register_method(Method(name="prefix_tuning", aliases=("prefix",), config_cls=PrefixTuningConfig, layers={},
                       prompt_cls=Prefix,
                       learning_rate=1e-2, unchanged_at_start=False,
                       description="prefix tuning: trained keys and values before every layer's attention"))
