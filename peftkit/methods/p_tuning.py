"""P-tuning: virtual tokens made by a small trained encoder, put in front of the input embeddings.

P-tuning (Liu et al., 2021, "GPT Understands, Too"): the input e(x₁ … xₙ) becomes [P; e(x₁ … xₙ)] with
P = f(E), where E ∈ R^{v × d} is trained through a prompt encoder f — an MLP d → h → h → d with ReLU, or a
bidirectional LSTM followed by an MLP 2h → 2h → d (``encoder_reparameterization_type``). peft's name for its
config is ``PromptEncoderConfig`` (peft type ``P_TUNING``), kept here so peft's code runs unchanged.

The attention mask gets v ones in front, token-type ids v zeros, per-token labels v ignored positions;
an encoder-decoder gets the tokens in front of the encoder's input.
"""

from __future__ import annotations

import torch
from torch import nn

from peftkit.core.config import config_dataclass
from peftkit.core.errors import ConfigError
from peftkit.core.prompt import PromptLearningConfig, SoftPromptAdapter
from peftkit.core.registry import Method, register_method

ENCODER_TYPES = ("MLP", "LSTM")


@config_dataclass
class PromptEncoderConfig(PromptLearningConfig):
    """P-tuning settings, with peft's field names."""

    peft_type = "P_TUNING"
    encoder_reparameterization_type: str = "MLP"
    encoder_hidden_size: int | None = None
    encoder_num_layers: int = 2
    encoder_dropout: float = 0.0

    def validate(self) -> None:
        super().validate()
        if self.encoder_reparameterization_type not in ENCODER_TYPES:
            raise ConfigError(f"encoder_reparameterization_type must be MLP or LSTM, "
                              f"got {self.encoder_reparameterization_type!r}")
        if not 0 <= self.encoder_dropout < 1:
            raise ConfigError(f"encoder_dropout must be in [0, 1), got {self.encoder_dropout!r}")

    def resolved(self, model) -> PromptEncoderConfig:
        config = super().resolved(model)
        config.encoder_hidden_size = config.encoder_hidden_size or config.token_dim
        return config


class PromptEncoder(SoftPromptAdapter):
    def __init__(self, config: PromptEncoderConfig, model: nn.Module) -> None:
        super().__init__(config)
        options = self.tensor_options(model)
        width, hidden = config.token_dim, config.encoder_hidden_size
        self.embedding = nn.Embedding(config.num_virtual_tokens, width, **options)
        if config.encoder_reparameterization_type == "LSTM":
            self.lstm = nn.LSTM(width, hidden, num_layers=config.encoder_num_layers, dropout=config.encoder_dropout,
                                bidirectional=True, batch_first=True, **options)
            self.mlp = nn.Sequential(nn.Linear(2 * hidden, 2 * hidden, **options), nn.ReLU(),
                                     nn.Linear(2 * hidden, width, **options))
        else:
            self.lstm = None
            self.mlp = nn.Sequential(nn.Linear(width, hidden, **options), nn.ReLU(),
                                     nn.Linear(hidden, hidden, **options), nn.ReLU(),
                                     nn.Linear(hidden, width, **options))

    def encode(self) -> torch.Tensor:
        tokens = self.embedding.weight
        if self.lstm is not None:
            tokens = self.lstm(tokens.unsqueeze(0))[0].squeeze(0)
        return self.mlp(tokens)


register_method(Method(name="p_tuning", aliases=("ptuning",), config_cls=PromptEncoderConfig, layers={},
                       prompt_cls=PromptEncoder,
                       learning_rate=3e-3, unchanged_at_start=False,
                       description="P-tuning: virtual tokens made by a small trained encoder"))
