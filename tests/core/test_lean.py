"""Lean training (core.lean, core.lean_ops, LoRA's fused path): the plain path's outputs and gradients,
less kept for backward."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import peftkit
from peftkit import LoraConfig
from peftkit.core.mechanics.lean import (
    LEAN_ATTENTION,
    LeanDropout,
    LeanGatedMLP,
    disable_lean_training,
    enable_lean_training,
)
from peftkit.core.mechanics.lean_ops import DroppedAttention, GatedProduct, MaskedDropout, dropped_positions
from peftkit.methods.lora import FusedLowRank
from peftkit.utils.memory import SavedForBackward
from tests.conftest import randomize_trainable, tiny_batch, tiny_lora, tiny_model, train_losses


def step(model, batch):
    model.zero_grad(set_to_none=True)
    with SavedForBackward(skip=model.parameters()) as saved:
        out = model(**batch).logits
    out.pow(2).mean().backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}
    return out.detach(), grads, saved.bytes


@pytest.mark.parametrize("kind, kept_at_most", [("bert", 0.8), ("gpt2", 0.85), ("llama", 0.8)])
def test_lean_lora_model_equals_the_plain_one_and_keeps_less(kind, kept_at_most):
    batch = tiny_batch(batch=4, length=32)
    results = {}
    for lean in (False, True):
        results[lean] = step(tiny_lora(kind, lean_training=lean), batch)
    (plain_out, plain_grads, plain_saved), (lean_out, lean_grads, lean_saved) = results[False], results[True]
    assert (lean_out - plain_out).abs().max() <= 1e-5 * plain_out.abs().max()
    assert plain_grads.keys() == lean_grads.keys() and len(plain_grads) > 0
    for name, grad in plain_grads.items():
        assert (lean_grads[name] - grad).norm() <= 1e-5 * grad.norm() + 1e-9, name
    assert lean_saved <= kept_at_most * plain_saved


def test_fused_lora_equals_autograd_in_float64_with_and_without_a_recomputed_input():
    torch.manual_seed(0)
    norm = nn.LayerNorm(6, dtype=torch.float64)
    x = torch.randn(3, 4, 6, dtype=torch.float64, requires_grad=True)
    weight, bias = torch.randn(5, 6, dtype=torch.float64), torch.randn(5, dtype=torch.float64)
    a = torch.randn(2, 6, dtype=torch.float64, requires_grad=True)
    b = torch.randn(5, 2, dtype=torch.float64, requires_grad=True)
    grad = torch.randn(3, 4, 5, dtype=torch.float64)
    reference = F.linear(norm(x), weight, bias) + 0.5 * (norm(x) @ a.T) @ b.T
    expected = torch.autograd.grad(reference, (x, a, b), grad)
    for recompute in (False, True):
        if recompute:
            enable_lean_training(norm)
        with SavedForBackward(skip=[weight, a, b, *norm.parameters()]) as saved:
            out = FusedLowRank.apply(norm(x), weight, bias, a, b, 0.5)
        got = torch.autograd.grad(out, (x, a, b), grad)
        assert (out - reference).abs().max() <= 1e-12
        for mine, want in zip(got, expected, strict=True):
            assert (mine - want).abs().max() <= 1e-12
        # with the recipe, the norm's output is not kept: only x (the norm keeps it too), x Aᵀ and the stats
        kept_activations = 3 * 4 * 6 + 3 * 4 * 2 + 2 * 3 * 4
        assert saved.bytes <= (kept_activations if recompute else kept_activations + 3 * 4 * 6) * 8


def test_masked_dropout_gradients_and_one_byte_mask():
    x = torch.randn(4, 7, dtype=torch.float64, requires_grad=True)

    def seeded(t):
        torch.manual_seed(3)
        return MaskedDropout.apply(t, 0.3)

    assert torch.autograd.gradcheck(seeded, (x,))
    torch.manual_seed(3)
    dropped, keep_scale = dropped_positions(x, 0.3)
    assert torch.equal(seeded(x), x.masked_fill(dropped, 0) * keep_scale)
    big = torch.randn(1000, 100, requires_grad=True)
    with SavedForBackward() as saved:
        MaskedDropout.apply(big, 0.1)
    assert saved.bytes == big.numel()  # one byte per element (CPU F.dropout keeps four)


@pytest.mark.parametrize("mask_kind", ["bool", "additive", "none"])
def test_dropped_attention_equals_attention_through_the_same_mask(mask_kind):
    torch.manual_seed(0)
    q, k, v = (torch.randn(2, 3, 5, 4, dtype=torch.float64, requires_grad=True) for _ in range(3))
    keep = torch.ones(2, 1, 1, 5, dtype=torch.bool)
    keep[0, ..., -2:] = False
    mask = {"bool": keep, "additive": torch.zeros(2, 1, 1, 5, dtype=torch.float64).masked_fill(~keep, -1e9),
            "none": None}[mask_kind]

    def seeded(q, k, v):
        torch.manual_seed(5)
        return DroppedAttention.apply(q, k, v, mask, 0.4, 0.25)

    out = seeded(q, k, v)
    scores = q @ k.transpose(-1, -2) * 0.4
    if mask_kind != "none":
        scores = scores.masked_fill(~keep, float("-inf"))
    probs = scores.softmax(-1)
    torch.manual_seed(5)
    dropped, keep_scale = dropped_positions(probs, 0.25)
    reference = (probs.masked_fill(dropped, 0) * keep_scale) @ v
    assert (out - reference).abs().max() <= 1e-12
    assert torch.autograd.gradcheck(seeded, (q, k, v))


def test_dropped_attention_keeps_about_half_of_what_pytorch_attention_keeps():
    q, k, v = (torch.randn(2, 4, 64, 16, requires_grad=True) for _ in range(3))
    with SavedForBackward() as lean:
        DroppedAttention.apply(q, k, v, None, 0.25, 0.1)
    with SavedForBackward() as plain:
        F.scaled_dot_product_attention(q, k, v, dropout_p=0.1)
    assert lean.bytes <= 0.6 * plain.bytes


def test_enable_and_disable_round_trip_and_merge_leaves_a_plain_model():
    model = tiny_model("bert")
    dropouts = sum(type(m) is nn.Dropout for m in model.modules())
    enable_lean_training(model)
    enable_lean_training(model)  # idempotent
    assert sum(type(m) is LeanDropout for m in model.modules()) == dropouts
    assert model.config._attn_implementation == LEAN_ATTENTION
    # 2 norms + GELU per layer; the embeddings' norm and the pooler's tanh
    assert sum(len(m._forward_hooks) for m in model.modules()) == 3 * 2 + 2
    disable_lean_training(model)
    assert sum(type(m) is nn.Dropout for m in model.modules()) == dropouts
    assert model.config._attn_implementation == "sdpa"
    assert sum(len(m._forward_hooks) for m in model.modules()) == 0
    peft_model = peftkit.get_peft_model(model, LoraConfig(r=2))
    plain = peft_model.merge_and_unload()
    assert plain.config._attn_implementation == "sdpa" and not any(isinstance(m, LeanDropout) for m in plain.modules())


def test_lean_training_with_dropout_trains_and_matches_the_plain_loss_level():
    """With dropout on, the masks differ from the plain path's, but the loss after training is alike."""
    batch = {**tiny_batch(batch=8, length=16), "labels": torch.tensor([0, 1, 2, 0, 1, 2, 0, 1])}
    losses = {}
    for lean in (False, True):
        model = peftkit.get_peft_model(tiny_model("bert"), LoraConfig(r=4, target_modules="all-linear",
                                                                      task_type="SEQ_CLS"), lean_training=lean)
        torch.manual_seed(0)
        train_losses(model, batch, steps=40, lr=1e-2)
        model.eval()
        with torch.no_grad():
            losses[lean] = model(**batch).loss.item()
    assert losses[False] < 0.05 and losses[True] < 0.05  # from about ln 3 = 1.1


def test_gated_product_gradients_and_what_it_keeps():
    gate, up = (torch.randn(3, 8, dtype=torch.float64, requires_grad=True) for _ in range(2))
    act = nn.SiLU()
    assert torch.equal(GatedProduct.apply(gate, up, act), act(gate) * up)
    assert torch.autograd.gradcheck(lambda g, u: GatedProduct.apply(g, u, act), (gate, up))
    with SavedForBackward() as saved:
        GatedProduct.apply(gate, up, act)
    assert saved.bytes == 2 * gate.numel() * 8  # gate and up; not act(gate), not the product


def test_llama_mlp_class_is_swapped_and_restored():
    model = tiny_model("llama")
    mlp_class = type(model.model.layers[0].mlp)
    enable_lean_training(model)
    assert isinstance(model.model.layers[0].mlp, LeanGatedMLP) and isinstance(model.model.layers[0].mlp, mlp_class)
    disable_lean_training(model)
    assert type(model.model.layers[0].mlp) is mlp_class


@pytest.mark.parametrize("quantized", [False, True])
def test_lora_and_qlora_train_under_bf16_autocast(quantized):
    model = tiny_model("llama")
    if quantized:
        peftkit.quantize_nf4(model)
    model = peftkit.get_peft_model(model, LoraConfig(r=4, target_modules="all-linear"))
    randomize_trainable(model)
    model.train()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = model(**tiny_batch()).logits.float().pow(2).mean()
    loss.backward()
    grads = [p.grad for p in model.parameters() if p.requires_grad]
    assert all(g is not None and torch.isfinite(g).all() for g in grads) and any(g.abs().sum() > 0 for g in grads)
