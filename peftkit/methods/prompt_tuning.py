"""Prompt tuning: trainable virtual tokens put in front of the input embeddings.

Prompt tuning (Lester, Al-Rfou and Constant, 2021, "The Power of Scale for Parameter-Efficient Prompt Tuning"):
the input e(x₁ … xₙ) becomes [P; e(x₁ … xₙ)] with P ∈ R^{v × d} trained directly. P starts random (N(0, 1),
peft's ``RANDOM``), from the embeddings of random vocabulary tokens (``SAMPLE_VOCAB``), or from the embeddings
of a text repeated to v tokens (``TEXT``).

The attention mask gets v ones in front, token-type ids v zeros, per-token labels v ignored positions;
an encoder-decoder gets the tokens in front of the encoder's input.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from peftkit.core.config import config_dataclass
from peftkit.core.errors import ConfigError
from peftkit.core.mechanics.sharding import whole
from peftkit.core.prompt import PromptLearningConfig, SoftPromptAdapter
from peftkit.core.registry import Method, register_method

PROMPT_INITS = ("RANDOM", "SAMPLE_VOCAB", "TEXT")


@config_dataclass
class PromptTuningConfig(PromptLearningConfig):
    """Prompt-tuning settings, with peft's field names."""

    peft_type = "PROMPT_TUNING"
    prompt_tuning_init: str = "RANDOM"
    prompt_tuning_init_text: str | None = None
    tokenizer_name_or_path: str | None = None
    tokenizer_kwargs: dict | None = None

    def validate(self) -> None:
        super().validate()
        if self.prompt_tuning_init not in PROMPT_INITS:
            raise ConfigError(f"prompt_tuning_init must be one of {', '.join(PROMPT_INITS)}, "
                              f"got {self.prompt_tuning_init!r}")

class SoftPrompt(SoftPromptAdapter):
    def __init__(self, config: PromptTuningConfig, model: nn.Module) -> None:
        super().__init__(config)
        weight = whole(model.get_input_embeddings().weight)  # gathered when sharded (FSDP)
        self.embedding = nn.Embedding(config.num_virtual_tokens, config.token_dim, **self.tensor_options(model))
        with torch.no_grad():
            if config.prompt_tuning_init == "SAMPLE_VOCAB":
                rows = torch.randint(0, weight.shape[0], (config.num_virtual_tokens,), device=weight.device)
                self.embedding.weight.copy_(weight[rows])
            elif config.prompt_tuning_init == "TEXT":
                self.embedding.weight.copy_(weight[self._text_tokens(config).to(weight.device)])

    @staticmethod
    def _text_tokens(config: PromptTuningConfig) -> torch.Tensor:
        from transformers import AutoTokenizer

        if not config.tokenizer_name_or_path:
            raise ConfigError("prompt_tuning_init='TEXT' needs tokenizer_name_or_path (a local tokenizer folder)")
        if not Path(config.tokenizer_name_or_path).is_dir():
            raise ConfigError(f"tokenizer_name_or_path '{config.tokenizer_name_or_path}' is not a local folder")
        if not config.prompt_tuning_init_text:
            raise ConfigError("prompt_tuning_init='TEXT' needs prompt_tuning_init_text")
        tokenizer = AutoTokenizer.from_pretrained(config.tokenizer_name_or_path, **(config.tokenizer_kwargs or {}))
        ids = tokenizer(config.prompt_tuning_init_text, add_special_tokens=False)["input_ids"]
        if not ids:
            raise ConfigError("prompt_tuning_init_text gives no tokens")
        repeats = -(-config.num_virtual_tokens // len(ids))
        return torch.tensor((ids * repeats)[: config.num_virtual_tokens])

    def encode(self) -> torch.Tensor:
        return self.embedding.weight


register_method(Method(name="prompt_tuning", aliases=("prompt",), config_cls=PromptTuningConfig, layers={},
                       prompt_cls=SoftPrompt,
                       learning_rate=3e-2, unchanged_at_start=False,
                       train_defaults={"prompt_tuning_init": "SAMPLE_VOCAB"},
                       description="prompt tuning: trained virtual tokens before the input"))
