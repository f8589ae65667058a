"""Activation checkpointing (transformers' non-reentrant one) with frozen inputs and adapters: the same
gradients, fewer tensors kept for backward."""

import pytest
import torch

import peftkit
from peftkit import LoraConfig
from peftkit.utils.memory import SavedForBackward
from tests.conftest import randomize_trainable, tiny_batch, tiny_model


def grads_and_saved(model, batch):
    model.zero_grad(set_to_none=True)
    with SavedForBackward() as saved:
        loss = model(**batch).logits.pow(2).mean()
    loss.backward()
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}, saved.bytes


@pytest.mark.parametrize("kind", ["bert", "llama"])
def test_checkpointing_keeps_gradients_and_saves_memory(kind):
    model = peftkit.get_peft_model(tiny_model(kind), LoraConfig(r=4, target_modules="all-linear"))
    randomize_trainable(model)
    model.train()  # tiny configs: attention dropout 0 for llama; bert's hidden dropout is seeded below
    batch = tiny_batch(batch=4, length=32)
    torch.manual_seed(0)
    plain, plain_saved = grads_and_saved(model, batch)
    model.activation_checkpointing_enable()  # transformers' default here: non-reentrant
    torch.manual_seed(0)
    checkpointed, checkpointed_saved = grads_and_saved(model, batch)
    assert checkpointed_saved < 0.7 * plain_saved
    assert plain.keys() == checkpointed.keys() and len(plain) > 0
    for name, grad in plain.items():
        assert torch.allclose(checkpointed[name], grad, rtol=1e-4, atol=1e-6), name
