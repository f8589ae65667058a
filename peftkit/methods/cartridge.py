"""Cartridges: a trained key-value cache put in front of every attention layer's own.

Eyuboglu et al., 2025, "Cartridges: Lightweight and general-purpose long context representations via
self-study". As prefix tuning without its reparameterisation: layer l attends over [K_l^C; K_l] and [V_l^C; V_l],
with the cache C ∈ R^{v × 2Ld} (v virtual tokens, L layers, width d over the key / value heads) trained directly.
The first ``num_frozen_tokens`` tokens of C stay as they are (an attention sink, the paper's advice); the rest train.
C starts N(0, 1) (the paper's random start; peft's helpers that start it from a text's cache are not here), so
the output changes from the start.

Saved as peft does: ``prompt_embeddings`` = C, frozen tokens first. It reaches the model as prefix tuning's does
(a pre-filled transformers cache).
"""

from __future__ import annotations

import torch
from torch import nn

from peftkit.core.config import config_dataclass
from peftkit.core.errors import ConfigError
from peftkit.core.prompt import SAVED_KEY, PromptAdapter, PromptLearningConfig
from peftkit.core.registry import Method, register_method
from peftkit.methods.prefix_tuning import Prefix, fit_to_cache


@config_dataclass
class CartridgeConfig(PromptLearningConfig):
    """Cartridge settings, with peft's field names and defaults."""

    peft_type = "CARTRIDGE"
    num_frozen_tokens: int = 1

    def validate(self) -> None:
        super().validate()
        value = self.num_frozen_tokens
        if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= self.num_virtual_tokens:
            raise ConfigError(f"num_frozen_tokens must be in [0, num_virtual_tokens={self.num_virtual_tokens}], "
                              f"got {value!r}")

    def resolved(self, model) -> CartridgeConfig:
        return fit_to_cache(super().resolved(model), model, explicit_heads=self.num_attention_heads is not None)


class Cartridge(Prefix):
    def __init__(self, config: CartridgeConfig, model: nn.Module) -> None:
        PromptAdapter.__init__(self, config)
        options = self.tensor_options(model)
        width = self.token_width(config)
        frozen = config.num_frozen_tokens
        self.register_buffer("frozen_embedding", torch.randn(frozen, width, **options))
        self.trainable_embedding = nn.Parameter(torch.randn(config.num_virtual_tokens - frozen, width, **options))

    def encode(self) -> torch.Tensor:
        return torch.cat([self.frozen_embedding, self.trainable_embedding])

    @torch.no_grad()
    def load_saved(self, tensors: dict[str, torch.Tensor]) -> None:
        saved = tensors[SAVED_KEY]
        frozen = self.frozen_embedding.shape[0]
        self.frozen_embedding.copy_(saved[:frozen].to(self.frozen_embedding.dtype))
        self.trainable_embedding.copy_(saved[frozen:].to(self.trainable_embedding.dtype))


register_method(Method(name="cartridge", config_cls=CartridgeConfig, layers={}, prompt_cls=Cartridge,
                       learning_rate=2e-2, unchanged_at_start=False, train_defaults={"num_virtual_tokens": 8},
                       description="Cartridges: a trained key-value cache before every layer's attention"))
