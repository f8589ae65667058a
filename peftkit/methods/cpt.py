"""CPT, context-aware prompt tuning: in-context examples as the prompt, refined within a small ball per token.

Blau et al., 2024, "Context-aware Prompt Tuning: Advancing In-Context Learning with Adversarial Methods". The
prompt is a few labelled examples, token ids c₁ … c_v (``cpt_token_ids``) with a type per token
(``cpt_tokens_type_mask``: 1 input template, 2 input, 3 output template, 4 label; +4 for each further example).
The virtual tokens are

    P = E₀ + Π(Δ),   E₀ = e(c₁ … c_v) frozen,   Π(Δ)ᵢ = Δᵢ · εᵢ / max(‖Δᵢ‖, εᵢ),

with Δ ∈ R^{v × d} starting at zero, projected after every step into the ball of radius εᵢ: ε·√(d/2048) for
input tokens (``opt_projection_epsilon``), the format ε for template tokens (``opt_projection_format_epsilon``),
1e-10 for labels, whose rows of Δ also get no gradient. With labels, the loss is the cross-entropy on every label
token, the prompt's included (type ≡ 0 mod 4), the later examples weighted by ``opt_loss_decay_factor``ᵏ when
``opt_weighted_loss_type='decay'``; the forward takes peft's ``input_type_mask`` (default: all 4, every labelled
token counts). Causal language models only, as in peft.

Saved as peft does: ``prompt_embeddings`` = P, which a loaded adapter takes as E₀ with Δ back at zero.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from peftkit.core.config import config_dataclass
from peftkit.core.errors import ConfigError
from peftkit.core.mechanics.sharding import whole
from peftkit.core.prompt import SAVED_KEY, PromptLearningConfig, SoftPromptAdapter
from peftkit.core.registry import Method, register_method

LOSS_TYPES = ("none", "decay")
FLOOR = 1e-10  # the radius of label tokens: they keep their embedding


@config_dataclass
class CPTConfig(PromptLearningConfig):
    """CPT settings, with peft's field names; ``num_virtual_tokens`` follows ``cpt_token_ids``."""

    peft_type = "CPT"
    cpt_token_ids: list[int] | None = None
    cpt_mask: list[int] | None = None
    cpt_tokens_type_mask: list[int] | None = None
    opt_weighted_loss_type: str | None = "none"
    opt_loss_decay_factor: float | None = 1.0
    opt_projection_epsilon: float | None = 0.1
    opt_projection_format_epsilon: float | None = 0.1
    tokenizer_name_or_path: str | None = None

    def __post_init__(self) -> None:
        if self.cpt_token_ids is None:
            self.cpt_token_ids = [0]
        count = len(self.cpt_token_ids) if isinstance(self.cpt_token_ids, list) else 0
        self.cpt_mask = [1] * count if self.cpt_mask is None else self.cpt_mask
        self.cpt_tokens_type_mask = [1] * count if self.cpt_tokens_type_mask is None else self.cpt_tokens_type_mask
        self.num_virtual_tokens = count
        super().__post_init__()

    def validate(self) -> None:
        super().validate()
        if str(self.task_type) != "CAUSAL_LM":
            raise ConfigError(f"CPT is for causal language models: task_type must be CAUSAL_LM, got {self.task_type!r}")
        if not (len(self.cpt_token_ids) == len(self.cpt_mask) == len(self.cpt_tokens_type_mask)):
            raise ConfigError("cpt_token_ids, cpt_mask and cpt_tokens_type_mask must have the same length")
        if any(t < 0 for t in self.cpt_tokens_type_mask):
            raise ConfigError(f"cpt_tokens_type_mask holds token types ≥ 0, got {self.cpt_tokens_type_mask!r}")
        if self.opt_weighted_loss_type not in LOSS_TYPES:
            raise ConfigError(f"opt_weighted_loss_type must be 'none' or 'decay', got {self.opt_weighted_loss_type!r}")
        for name in ("opt_projection_epsilon", "opt_projection_format_epsilon", "opt_loss_decay_factor"):
            if not getattr(self, name) > 0:
                raise ConfigError(f"{name} must be positive, got {getattr(self, name)!r}")


class ContextPrompt(SoftPromptAdapter):
    def __init__(self, config: CPTConfig, model: nn.Module) -> None:
        super().__init__(config)
        options = self.tensor_options(model)
        options["dtype"] = torch.promote_types(options["dtype"], torch.float32)  # peft keeps CPT in float32
        ids = torch.tensor(config.cpt_token_ids, device=options["device"])
        self.register_buffer("start", whole(model.get_input_embeddings().weight)[ids].detach().to(**options))
        self.delta = nn.Parameter(torch.zeros(config.num_virtual_tokens, config.token_dim, **options))
        types = torch.tensor(config.cpt_tokens_type_mask)
        self.register_buffer("radius", self._radii(config, types).to(**options), persistent=False)
        trained = ((types % 4) != 0).to(**options).unsqueeze(1)  # labels (and type 0) keep no gradient
        self.delta.register_hook(lambda grad: grad * trained.to(grad))

    @staticmethod
    def _radii(config: CPTConfig, types: torch.Tensor) -> torch.Tensor:
        scale = math.sqrt(config.token_dim / 2048)
        radius = torch.full(types.shape, FLOOR, dtype=torch.float64)
        radius[(types > 0) & (types % 2 == 1)] = config.opt_projection_format_epsilon * scale
        radius[(types > 0) & (types % 4 == 2)] = config.opt_projection_epsilon * scale
        return radius

    def encode(self) -> torch.Tensor:
        with torch.no_grad():  # the projection is a step of its own, outside the gradient (projected descent)
            norms = self.delta.norm(dim=1)
            factor = torch.where(norms > 0, self.radius / norms.clamp(min=self.radius), torch.ones_like(norms))
            self.delta.mul_(factor.unsqueeze(1))
        return self.start + self.delta

    @torch.no_grad()
    def load_saved(self, tensors: dict[str, torch.Tensor]) -> None:
        self.start.copy_(tensors[SAVED_KEY].to(self.start.dtype))
        self.delta.zero_()

    def run(self, call, model: nn.Module, kwargs: dict):
        kwargs = dict(kwargs)
        labels = kwargs.pop("labels", None)
        input_types = kwargs.pop("input_type_mask", None)
        prepared = self.prepare(model, kwargs)
        if labels is None:
            return call(**prepared)
        batch = labels.shape[0]
        if input_types is None:
            input_types = torch.full(labels.shape, 4, dtype=torch.long, device=labels.device)
        prompt_types = torch.tensor(self.config.cpt_tokens_type_mask, device=labels.device).expand(batch, -1)
        input_types = input_types.to(labels.device).long()
        types = torch.cat([prompt_types, torch.where(input_types > 0, input_types + prompt_types.max(), 0)], dim=1)
        prompt_labels = torch.tensor(self.config.cpt_token_ids, device=labels.device).expand(batch, -1)
        full = torch.cat([prompt_labels, labels], dim=1)
        full = torch.where((types > 0) & (types % 4 == 0), full, -100)
        output = call(**prepared, labels=full)
        output.loss = self.loss(output.logits, full, types)
        return output

    def loss(self, logits: torch.Tensor, labels: torch.Tensor, types: torch.Tensor) -> torch.Tensor:
        """Mean cross-entropy over the labelled tokens, example k from the last weighted by decayᵏ."""
        logits, labels, types = logits[:, :-1], labels[:, 1:].to(logits.device), types[:, 1:].to(logits.device)
        each = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), labels.reshape(-1), reduction="none",
                               ignore_index=-100).view(labels.shape)
        weights = torch.ones_like(each)
        if self.config.opt_weighted_loss_type == "decay":
            for row in range(types.shape[0]):
                examples = types[row][(types[row] > 0) & (types[row] % 4 == 0)].unique()
                for k, example in enumerate(examples.flip(0).tolist()):
                    weights[row][types[row] == example] = self.config.opt_loss_decay_factor ** k
        kept = labels != -100
        return (each[kept] * weights[kept]).mean()


register_method(Method(name="cpt", config_cls=CPTConfig, layers={}, prompt_cls=ContextPrompt,
                       learning_rate=1e-3, unchanged_at_start=False,
                       train_defaults={"cpt_token_ids": [5, 6, 7, 8, 9, 10],
                                       "cpt_tokens_type_mask": [1, 2, 2, 3, 4, 4]},
                       description="CPT: labelled in-context examples as the prompt, refined within a small ball"))
