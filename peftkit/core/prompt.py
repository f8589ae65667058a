"""Prompt-learning methods: virtual tokens added to the input instead of changed modules.

A ``PromptAdapter`` produces either soft prompt vectors that are put in front of the input embeddings
(prompt tuning, P-tuning) or key / value prefixes for every attention layer, handed to the model as a
pre-filled transformers cache (prefix tuning). ``PeftModel`` calls ``prepare`` on the inputs of every
forward pass and ``generate`` call while such an adapter is active.

Checkpoints follow peft: one tensor ``prompt_embeddings`` holding the final virtual tokens (after any
prompt encoder), and the model-shape fields ``token_dim``, ``num_layers``, ``num_attention_heads``,
``num_transformer_submodules`` in the config. A loaded adapter therefore uses those tokens directly;
it keeps training them directly if loaded trainable.
"""

from __future__ import annotations

import warnings
from typing import ClassVar

import torch
from torch import nn

from peftkit.core.config import PeftConfig, config_dataclass
from peftkit.core.errors import ConfigError
from peftkit.core.mechanics.sharding import gather_root

SAVED_KEY = "prompt_embeddings"


def _model_config_value(config, *names):
    for name in names:
        value = getattr(config, name, None)
        if value is not None:
            return value
    return None


@config_dataclass
class PromptLearningConfig(PeftConfig):
    """Fields of every prompt-learning method; the model-shape ones are filled from the model."""

    num_virtual_tokens: int = 20
    token_dim: int | None = None
    num_transformer_submodules: int | None = None
    num_attention_heads: int | None = None
    num_layers: int | None = None

    omit_at_default: ClassVar[tuple[str, ...]] = ()

    @property
    def is_prompt_learning(self) -> bool:
        return True

    def validate(self) -> None:
        super().validate()
        value = self.num_virtual_tokens
        if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
            raise ConfigError(f"num_virtual_tokens must be a positive integer, got {value!r}")
        if self.num_transformer_submodules not in (None, 1):
            raise ConfigError("num_transformer_submodules=2 (virtual tokens on the decoder side too) is not "
                              "supported; peftkit puts them before the encoder's input")

    def resolved(self, model) -> PromptLearningConfig:
        config = super().resolved(model)
        model_config = getattr(model, "config", None)
        text_config = model_config.get_text_config() if hasattr(model_config, "get_text_config") else model_config
        if config.token_dim is None:
            config.token_dim = _model_config_value(text_config, "hidden_size", "d_model", "n_embd")
        if config.num_layers is None:
            config.num_layers = _model_config_value(text_config, "num_hidden_layers", "num_layers", "n_layer")
        if config.num_attention_heads is None:
            config.num_attention_heads = _model_config_value(text_config, "num_attention_heads", "num_heads", "n_head")
        config.num_transformer_submodules = config.num_transformer_submodules or 1
        if None in (config.token_dim, config.num_layers, config.num_attention_heads):
            raise ConfigError("cannot read token_dim / num_layers / num_attention_heads from the model's config; "
                              "set them in the prompt-learning config")
        return config


class PromptAdapter(nn.Module):
    """Base of prompt-learning adapters; ``virtual_tokens()`` gives the (tokens × width) table in use."""

    # Whether the model's forward takes ``task_ids`` for it (multitask prompt tuning); they reach ``prepare`` in kwargs
    takes_task_ids: ClassVar[bool] = False

    def __init__(self, config: PromptLearningConfig) -> None:
        super().__init__()
        self.config = config
        self.loaded: nn.Parameter | None = None

    @staticmethod
    def tensor_options(model: nn.Module) -> dict:
        """Device and dtype of the model's input embeddings, for new tensors."""
        like = model.get_input_embeddings().weight
        return {"device": like.device, "dtype": like.dtype}

    @classmethod
    def expected_shapes(cls, config: PromptLearningConfig) -> dict[str, tuple]:
        return {SAVED_KEY: (config.num_virtual_tokens, cls.token_width(config))}

    @classmethod
    def token_width(cls, config: PromptLearningConfig) -> int:
        return config.token_dim

    def encode(self) -> torch.Tensor:
        """The virtual tokens from the trainable parameters (through an encoder where the method has one)."""
        raise NotImplementedError

    def virtual_tokens(self) -> torch.Tensor:
        return self.loaded if self.loaded is not None else self.encode()

    def batch_prompts(self, batch: int, task_ids: torch.Tensor | None = None) -> torch.Tensor:
        """The (batch × tokens × width) prompts; ``task_ids`` pick each row's task where ``takes_task_ids``."""
        return self.virtual_tokens().unsqueeze(0).expand(batch, -1, -1)

    def saved_tensors(self) -> dict[str, torch.Tensor]:
        return {SAVED_KEY: self.virtual_tokens()}

    def load_saved(self, tensors: dict[str, torch.Tensor]) -> None:
        """Use the saved tokens directly (the encoder that made them is not in peft's format)."""
        like = next(self.parameters())
        self.loaded = nn.Parameter(tensors[SAVED_KEY].to(device=like.device, dtype=like.dtype))
        for name, child in list(self.named_children()):
            delattr(self, name)

    def prepare(self, model: nn.Module, kwargs: dict) -> dict:
        raise NotImplementedError

    def run(self, call, model: nn.Module, kwargs: dict):
        """``call`` (the base model's forward) on ``kwargs`` made ready by ``prepare``; a method that changes the
        labels or the loss (CPT) overrides it."""
        return call(**self.prepare(model, kwargs))


def _batch_size(kwargs: dict) -> int:
    for key in ("input_ids", "inputs_embeds"):
        if kwargs.get(key) is not None:
            return kwargs[key].shape[0]
    raise ConfigError("prompt-learning adapters need input_ids or inputs_embeds")


def extend_mask(kwargs: dict, key: str, count: int, batch: int, fill: int) -> None:
    """Put ``count`` columns of ``fill`` in front of ``kwargs[key]`` when it is given."""
    mask = kwargs.get(key)
    if mask is not None:
        front = torch.full((batch, count), fill, dtype=mask.dtype, device=mask.device)
        kwargs[key] = torch.cat([front, mask], dim=1)


class SoftPromptAdapter(PromptAdapter):
    """Virtual tokens put in front of the input embeddings (prompt tuning and P-tuning)."""

    def prepare(self, model: nn.Module, kwargs: dict) -> dict:
        kwargs = dict(kwargs)
        batch = _batch_size(kwargs)
        count = self.config.num_virtual_tokens
        embeds = kwargs.pop("inputs_embeds", None)
        if embeds is None:
            gather_root(model)  # sharded with FSDP: the embeddings may belong to the root's own parameters
            embeds = model.get_input_embeddings()(kwargs.pop("input_ids"))
        else:
            kwargs.pop("input_ids", None)
        prompts = self.batch_prompts(batch, kwargs.pop("task_ids", None)).to(embeds.dtype)
        kwargs["inputs_embeds"] = torch.cat([prompts, embeds], dim=1)
        extend_mask(kwargs, "attention_mask", count, batch, 1)
        extend_mask(kwargs, "token_type_ids", count, batch, 0)
        if kwargs.pop("position_ids", None) is not None:
            warnings.warn("position_ids are ignored with virtual tokens in front of the input", stacklevel=3)
        labels = kwargs.get("labels")
        is_encoder_decoder = getattr(getattr(model, "config", None), "is_encoder_decoder", False)
        if labels is not None and labels.dim() == 2 and not is_encoder_decoder:
            extend_mask(kwargs, "labels", count, batch, -100)  # per-token labels: nothing to predict there
        return kwargs
