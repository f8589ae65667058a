"""Self-evolution learning: rectified smooth labels, the informative-token mask, the two-pass loss."""

from __future__ import annotations

import pytest
import torch
from transformers import BertConfig, BertForMaskedLM

import peftkit
from peftkit.objectives.self_evolution import (
    SelfEvolution,
    ratio_threshold,
    rectified_labels,
    self_evolution_loss,
    token_nll,
)
from tests.conftest import VOCAB, tiny_batch, without_dropout

MASK_ID = 4


def tiny_masked_lm() -> BertForMaskedLM:
    torch.manual_seed(0)
    config = BertConfig(vocab_size=VOCAB, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                        intermediate_size=48, max_position_embeddings=64)
    return without_dropout(BertForMaskedLM(config)).eval()


def mlm_batch() -> dict:
    batch = tiny_batch(3, 12)
    special = torch.zeros_like(batch["input_ids"])
    special[:, 0] = 1  # [CLS]
    special[:, -1] = 1  # [SEP]
    return {**batch, "special_tokens_mask": special}


def test_rectified_labels_sum_to_one_and_mix_the_reference():
    reference = torch.softmax(torch.randn(7, VOCAB), dim=-1)
    targets = torch.randint(0, VOCAB, (7,))
    labels = rectified_labels(targets, reference, alpha=0.1)
    assert (labels.sum(-1) - 1).abs().max() <= 1e-6
    assert (labels - 0.1 * reference).min() >= -1e-7
    assert torch.allclose(labels[torch.arange(7), targets], 0.9 + 0.1 * reference[torch.arange(7), targets])


def test_alpha_zero_is_plain_cross_entropy_and_the_gradient_is_softmax_minus_labels():
    logits = torch.randn(5, VOCAB, requires_grad=True)
    targets = torch.randint(0, VOCAB, (5,))
    reference = torch.softmax(torch.randn(5, VOCAB), dim=-1)
    plain = torch.nn.functional.cross_entropy(logits, targets)
    assert abs(self_evolution_loss(logits, targets, reference, alpha=0.0).item() - plain.item()) <= 1e-6
    self_evolution_loss(logits, targets, reference, alpha=0.1).backward()
    expected = (torch.softmax(logits.detach(), -1) - rectified_labels(targets, reference, 0.1)) / 5
    assert (logits.grad - expected).abs().max() <= 1e-6


def test_masked_positions_are_exactly_those_above_the_threshold():
    model, batch = tiny_masked_lm(), mlm_batch()
    with torch.no_grad():
        nll = token_nll(model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits,
                        batch["input_ids"])
    maskable = batch["attention_mask"].bool() & ~batch["special_tokens_mask"].bool()
    threshold = nll[maskable].median().item()
    positions, reference = SelfEvolution(MASK_ID, threshold=threshold).question(model, batch)
    assert torch.equal(positions, maskable & (nll >= threshold))
    assert 0 < positions.sum() < maskable.sum()
    assert not positions[~maskable].any()  # never a special or padding token
    assert reference.shape == (int(positions.sum()), VOCAB) and (reference.sum(-1) - 1).abs().max() <= 1e-5


def test_the_ratio_masks_each_sequences_top_scores():
    nll = torch.tensor([[9.0, 1.0, 5.0, 3.0, 7.0, 2.0, 0.5, 4.0, 6.0, 8.0, 0.1, 0.2],
                        [0.0, 1.0, 2.0, 3.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0]])
    maskable = torch.ones_like(nll, dtype=torch.bool)
    maskable[0, 0] = False  # 11 maskable: ⌈0.15·11⌉ = 2 masked, the 9.0 left out
    maskable[1, 4:] = False  # 4 maskable: ⌈0.6⌉ = 1 masked
    cut = ratio_threshold(nll, maskable, 0.15)
    assert cut.flatten().tolist() == [7.0, 3.0]
    positions = maskable & (nll >= cut)
    assert positions[0].nonzero().flatten().tolist() == [4, 9] and positions[1].nonzero().flatten().tolist() == [3]


def test_training_with_the_self_evolution_loss_lowers_it():
    model, batch, objective = tiny_masked_lm(), mlm_batch(), SelfEvolution(MASK_ID)
    first_positions, first_reference = objective.question(model, batch)

    def loss_on_the_first_masks() -> float:
        with torch.no_grad():
            logits = model(input_ids=batch["input_ids"].masked_fill(first_positions, MASK_ID),
                           attention_mask=batch["attention_mask"]).logits
        return self_evolution_loss(logits[first_positions], batch["input_ids"][first_positions], first_reference,
                                   0.1).item()

    before = loss_on_the_first_masks()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    model.train()
    losses = []
    for _ in range(30):
        loss, _ = objective.loss(model, batch)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        losses.append(loss.item())
    model.eval()
    assert abs(losses[0] - before) <= 1e-5  # the first step's loss is this one
    assert losses[-1] < 0.8 * losses[0]  # on the tokens it finds hardest at each step
    assert loss_on_the_first_masks() < 0.8 * before


def test_settings_are_checked():
    with pytest.raises(peftkit.ConfigError, match="alpha must be in"):
        SelfEvolution(MASK_ID, alpha=1.5)
    with pytest.raises(peftkit.ConfigError, match="mask_ratio must be in"):
        SelfEvolution(MASK_ID, mask_ratio=0)
