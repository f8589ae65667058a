"""Self-evolution learning: mask what the model finds informative, learn from rectified smooth labels.

Zhong et al., 2022, "Toward Efficient Language Model Pretraining and Downstream Adaptation via
Self-Evolution: A Case Study on SuperGLUE" (Vega v2), and Zhong et al., 2023, "Self-Evolution Learning
for Discriminative Language Model Pretraining". A masked-LM step in two passes:

1. Self-questioning: the model reads the text unmasked; each token x_t gets its negative log-likelihood
   s_t = −log p(x_t | x) and the model's distribution p(· | x) at t is kept (no gradient).
2. The informative tokens — s_t above a threshold — are masked, and the model learns to restore them
   with rectified smooth labels
       ỹ_t = (1 − α) · onehot(x_t) + α · p(· | x)_t,      α = 0.1,
       L = mean over masked t of −Σ_v ỹ_t,v log q_v(t),   q = the model's softmax on the masked text.

Choices the papers leave open: the threshold is either fixed (``threshold``) or, by default, the value
that masks the top ``mask_ratio`` (15 %) of each sequence's maskable tokens (ties at the cut are all
masked); special and padding tokens are never masked; masked tokens become the mask token (no 80/10/10
split, which the informative selection replaces); the first pass runs in eval mode (no dropout).
"""

from __future__ import annotations

import torch

from peftkit.core.errors import ConfigError


def token_nll(logits: torch.Tensor, input_ids: torch.Tensor) -> torch.Tensor:
    """s_t = −log softmax(logits)_t[x_t], batch × length."""
    return -torch.log_softmax(logits.float(), dim=-1).gather(-1, input_ids.unsqueeze(-1)).squeeze(-1)


def ratio_threshold(nll: torch.Tensor, maskable: torch.Tensor, mask_ratio: float) -> torch.Tensor:
    """Per sequence, the score of its ⌈ratio · n⌉-th highest maskable token (n maskable tokens, at least
    one masked when n > 0), batch × 1; nothing is masked in a sequence without maskable tokens."""
    counts = maskable.sum(1)
    wanted = torch.clamp(torch.ceil(counts * mask_ratio), min=1).long()
    ranked = nll.masked_fill(~maskable, float("-inf")).sort(dim=1, descending=True).values
    cut = ranked.gather(1, (wanted - 1).clamp(max=nll.shape[1] - 1).unsqueeze(1))
    return torch.where(counts.unsqueeze(1) > 0, cut, torch.full_like(cut, float("inf")))


def informative_positions(nll: torch.Tensor, maskable: torch.Tensor, threshold: float | torch.Tensor
                          ) -> torch.Tensor:
    """The positions to mask: maskable and s_t ≥ threshold (a number, or one per sequence)."""
    return maskable & (nll >= threshold)


def rectified_labels(targets: torch.Tensor, reference: torch.Tensor, alpha: float) -> torch.Tensor:
    """ỹ = (1 − α)·onehot(targets) + α·reference; ``reference`` holds distributions (rows summing to 1)."""
    onehot = torch.nn.functional.one_hot(targets, reference.shape[-1]).to(reference.dtype)
    return (1 - alpha) * onehot + alpha * reference


def self_evolution_loss(logits: torch.Tensor, targets: torch.Tensor, reference: torch.Tensor,
                        alpha: float) -> torch.Tensor:
    """Mean over the given positions (rows) of −Σ ỹ log softmax(logits)."""
    labels = rectified_labels(targets, reference, alpha)
    return -(labels * torch.log_softmax(logits.float(), dim=-1)).sum(-1).mean()


def check_settings(alpha: float, mask_ratio: float, threshold: float | None) -> None:
    if not 0 <= alpha <= 1:
        raise ConfigError(f"self-evolution: alpha must be in [0, 1], got {alpha!r}")
    if threshold is None and not 0 < mask_ratio <= 1:
        raise ConfigError(f"self-evolution: mask_ratio must be in (0, 1], got {mask_ratio!r}")


class SelfEvolution:
    """Both passes on a masked-LM ``model`` (or a PeftModel around one): ``loss(model, batch)``.

    ``batch`` holds ``input_ids``, ``attention_mask`` and ``special_tokens_mask`` (1 at special tokens),
    as transformers' tokenizers give with ``return_special_tokens_mask=True``.
    """

    def __init__(self, mask_token_id: int, alpha: float = 0.1, mask_ratio: float = 0.15,
                 threshold: float | None = None) -> None:
        check_settings(alpha, mask_ratio, threshold)
        self.mask_token_id, self.alpha, self.mask_ratio, self.threshold = mask_token_id, alpha, mask_ratio, threshold

    def question(self, model, batch: dict) -> tuple[torch.Tensor, torch.Tensor]:
        """(positions to mask, the model's distributions on the unmasked text at those positions, one row
        each): the first pass."""
        was_training = model.training
        model.eval()
        try:
            with torch.no_grad():
                logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        finally:
            model.train(was_training)
        nll = token_nll(logits, batch["input_ids"])
        maskable = batch["attention_mask"].bool() & ~batch["special_tokens_mask"].bool()
        threshold = (self.threshold if self.threshold is not None
                     else ratio_threshold(nll, maskable, self.mask_ratio))
        positions = informative_positions(nll, maskable, threshold)
        return positions, torch.softmax(logits[positions].float(), dim=-1)

    def loss(self, model, batch: dict) -> tuple[torch.Tensor, object]:
        """(L, the second pass's outputs); L is 0 (with a graph) when nothing is masked."""
        positions, reference = self.question(model, batch)
        masked = batch["input_ids"].masked_fill(positions, self.mask_token_id)
        outputs = model(input_ids=masked, attention_mask=batch["attention_mask"])
        if not positions.any():
            return outputs.logits.sum() * 0, outputs
        return self_evolution_loss(outputs.logits[positions], batch["input_ids"][positions], reference,
                                   self.alpha), outputs
