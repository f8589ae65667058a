"""Trainable tokens: train chosen rows of the embedding matrix (new or repurposed tokens), nothing else.

peft's TRAINABLE_TOKENS. For an embedding E (vocabulary × d) and the chosen token ids t₁ … t_k, the adapter holds
D (k × d), initialised to the rows E[t₁ … t_k], and the model uses E with those rows replaced:

    E' = E with E'[tᵢ] = Dᵢ,     h = E'[x]     (an output layer tied to E computes with E' too: logits = E' h)

The rows are replaced rather than added to, so an adapter trained after the vocabulary was resized stays right
when the resized rows are initialised again. Merging writes D into E (the original rows are kept to unmerge).
Modules whose weight is the input embedding's (GPT-2's and T5's tied ``lm_head``, T5's encoder and decoder
``embed_tokens``) follow it: they use the same D, which is saved once per module as peft saves it
(``trainable_tokens_delta``). Field names and defaults are peft's.

The same rows ride along with a LoRA adapter through peft's ``LoraConfig.trainable_token_indices``
(:func:`token_rows`): peft wraps the embedding then, so the rows are saved as ``token_adapter.trainable_tokens_delta``,
once, for the input embedding only (the tied modules save nothing).
"""

from __future__ import annotations

import copy
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from peftkit.core.config import TargetedConfig, config_dataclass
from peftkit.core.errors import ConfigError
from peftkit.core.layer import AdapterLayer, base_of
from peftkit.core.module_names import name_matches
from peftkit.core.registry import Method, register_method


@config_dataclass
class TrainableTokensConfig(TargetedConfig):
    """Trainable-tokens settings, with peft's field names and defaults."""

    peft_type = "TRAINABLE_TOKENS"
    token_indices: list[int] = None
    init_weights: bool = True

    # Where the saved rows sit under their module: "" as the trainable-tokens method saves them; set on the copy
    # another method's adapter brings along (``token_rows``: "token_adapter.", peft's wrapper, tied modules unsaved)
    key_prefix: ClassVar[str] = ""

    def __post_init__(self) -> None:
        if self.token_indices is None:
            self.token_indices = []
        super().__post_init__()

    def validate(self) -> None:
        super().validate()
        indices = self.token_indices
        if not isinstance(indices, list) or not all(isinstance(i, int) and not isinstance(i, bool) and i >= 0
                                                    for i in indices):
            raise ConfigError(f"token_indices must be a list of token ids (non-negative integers), got {indices!r}")
        if len(set(indices)) != len(indices):
            raise ConfigError(f"token_indices lists a token id twice: {indices!r}")

    def resolved(self, model) -> TrainableTokensConfig:
        if not self.token_indices:
            raise ConfigError("token_indices is empty; list the ids of the tokens to train (e.g. new tokens' ids)")
        embedding = model.get_input_embeddings() if hasattr(model, "get_input_embeddings") else None
        config = copy.deepcopy(self)
        embedding_name = next((n for n, m in model.named_modules() if m is embedding), None)
        if config.target_modules is None:  # peft's default: the model's input embedding
            if embedding is None:
                raise ConfigError("target_modules is not set and the model has no input embedding to find")
            config.target_modules = embedding_name
        config = super(TrainableTokensConfig, config).resolved(model)
        weight = base_of(embedding).weight if embedding is not None else None
        vocabulary = weight.shape[0] if weight is not None else None
        if vocabulary is not None and max(config.token_indices) >= vocabulary:
            raise ConfigError(f"token_indices holds id {max(config.token_indices)}, but the vocabulary has "
                              f"{vocabulary} tokens")
        if embedding_name is not None and name_matches(embedding_name, config.target_modules):  # ties follow it
            config.also_adapted = tuple(n for n, m in model.named_modules() if n and m is not embedding
                                        and weight is not None and getattr(base_of(m), "weight", None) is weight)
        return config


class TrainableTokensLayer(AdapterLayer):
    """The chosen rows of an Embedding (or of a Linear output layer tied to one) replaced by trained rows."""

    adapter_attributes = ("trainable_tokens_delta",)
    merges_tied_weight = True  # the tied modules follow the input embedding, which alone writes the rows

    def __init__(self, base_layer: nn.Module) -> None:
        super().__init__(base_layer)
        self.trainable_tokens_delta = nn.ParameterDict()
        self.token_indices: dict[str, list[int]] = {}
        self.originals: dict[str, torch.Tensor] = {}  # the replaced rows, to unmerge
        self.follows = False  # True: the rows are the input embedding layer's (a tied module)
        self.key_prefix: dict[str, str] = {}  # each adapter's TrainableTokensConfig.key_prefix

    @classmethod
    def expected_shapes(cls, base_layer: nn.Module, config: TrainableTokensConfig, module_name: str) -> dict:
        if config.key_prefix and module_name in config.also_adapted:
            return {}
        return {config.key_prefix + "trainable_tokens_delta": (len(config.token_indices), base_layer.weight.shape[1])}

    @classmethod
    def planned_trainable(cls, base_layer: nn.Module, config: TrainableTokensConfig, module_name: str) -> int | None:
        """A tied module trains nothing of its own: its rows are the input embedding's."""
        return 0 if module_name in config.also_adapted else None

    def add_adapter(self, name: str, config: TrainableTokensConfig, module_name: str) -> None:
        self.token_indices[name] = list(config.token_indices)
        self.key_prefix[name] = config.key_prefix
        if module_name in config.also_adapted:
            self.follows = True
            return
        rows = self.weight.detach()[config.token_indices]
        values = rows.clone() if config.init_weights else torch.randn_like(rows)
        self.trainable_tokens_delta[name] = nn.Parameter(values)
        self.originals[name] = rows.clone()

    def attach(self, model: nn.Module, module_name: str, config: TrainableTokensConfig) -> None:
        if not self.follows:
            return
        leader = model.get_input_embeddings()
        while isinstance(leader, AdapterLayer) and not isinstance(leader, TrainableTokensLayer):
            leader = leader.base_layer
        self.trainable_tokens_delta = leader.trainable_tokens_delta  # the same tensors, as peft ties them
        self.originals = leader.originals

    @property
    def adapter_names(self) -> list[str]:
        return list(self.token_indices)

    def has_adapter(self, name: str) -> bool:
        return name in self.token_indices

    def adapter_state_dict(self, name: str) -> dict[str, torch.Tensor]:
        prefix = self.key_prefix.get(name, "")
        if prefix and self.follows:  # peft's wrapper saves the rows once, with the input embedding
            return {}
        return {prefix + key: tensor for key, tensor in super().adapter_state_dict(name).items()}

    def _index(self, name: str) -> torch.Tensor:
        return torch.tensor(self.token_indices[name], device=self.weight.device)

    def patched_weight(self, names: list[str]) -> torch.Tensor:
        weight = self.weight
        for name in names:
            weight = weight.index_copy(0, self._index(name), self.trainable_tokens_delta[name].to(weight.dtype))
        return weight

    def apply_adapters(self, names: list[str], x: torch.Tensor, *args, **kwargs) -> torch.Tensor:
        mine = self.own(names)
        if not mine:
            return self.call_base(names, x, *args, **kwargs)
        if isinstance(self.base_layer, AdapterLayer):
            raise ConfigError("trainable tokens cannot share a module with another method's adapter")
        base, weight = self.base, self.patched_weight(mine)
        if isinstance(base, nn.Embedding):
            result = F.embedding(x, weight, base.padding_idx, base.max_norm, base.norm_type,
                                 base.scale_grad_by_freq, base.sparse)
            scale = getattr(base, "embed_scale", None)
            return result * scale.to(result.dtype) if isinstance(scale, torch.Tensor) else result
        return F.linear(x, weight, base.bias)

    def merged_weight(self, name: str, weight: torch.Tensor) -> torch.Tensor:
        if self.follows:  # the input embedding's layer writes the shared weight
            return weight
        return weight.index_copy(0, self._index(name), self.trainable_tokens_delta[name].detach().to(weight.dtype))

    def unmerged_weight(self, name: str, weight: torch.Tensor) -> torch.Tensor:
        if self.follows:
            return weight
        return weight.index_copy(0, self._index(name), self.originals[name].to(weight))

    def remove_adapter(self, name: str) -> None:
        if self.follows:  # the rows belong to the input embedding's layer, which removes them
            self.token_indices.pop(name, None)
            self.key_prefix.pop(name, None)
            self.active_adapters = [n for n in self.active_adapters if n != name]
            return
        super().remove_adapter(name)
        self.token_indices.pop(name, None)
        self.key_prefix.pop(name, None)
        self.originals.pop(name, None)


def token_rows(indices: list[int] | dict[str, list[int]], model: nn.Module | None,
               field: str) -> list[TrainableTokensConfig]:
    """The trainable-token rows another method's adapter brings along (peft's ``LoraConfig.trainable_token_indices``):
    ``indices`` lists token ids of the input embedding, or maps embedding module names to ids. Resolved against
    ``model`` (None: the ids are only checked); a ``ConfigError`` names ``field``. Modules tied to the input embedding
    follow its rows (peft's weight tying); naming one besides the embedding, with the same ids, adds nothing."""
    entries = list(indices.items()) if isinstance(indices, dict) else [(None, indices)]
    configs = []
    try:
        for name, ids in entries:
            config = TrainableTokensConfig(token_indices=list(ids), target_modules=None if name is None else [name])
            config.key_prefix = "token_adapter."
            configs.append(config if model is None else config.resolved(model))
    except ConfigError as error:
        raise ConfigError(f"{field}: {error}") from None
    if model is None:
        return configs
    embedding = model.get_input_embeddings()
    leader = next((c for c in configs if any(m is embedding for n, m in model.named_modules()
                                             if name_matches(n, c.target_modules))), None)
    kept = []
    for config in configs:
        tied = leader is not None and config is not leader and any(name_matches(n, config.target_modules)
                                                                   for n in leader.also_adapted)
        if tied and leader.token_indices != config.token_indices:
            raise ConfigError(f"{field}: '{config.target_modules[0]}' shares its weight with the input embedding, "
                              f"whose rows it follows; give both the same ids")
        if not tied:
            kept.append(config)
    return kept


register_method(Method(name="trainable_tokens", config_cls=TrainableTokensConfig,
                       layers={nn.Embedding: TrainableTokensLayer, nn.Linear: TrainableTokensLayer},
                       learning_rate=1e-3,
                       description="Trainable tokens: chosen rows of the embedding matrix train (new tokens), "
                                   "nothing else"))
