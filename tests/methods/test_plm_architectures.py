"""Every registered method on the PLM paper's architecture family: tiny DeepSeek-V3 (multi-head latent attention,
squared-ReLU MLPs; dense, and with routed experts) and Nemotron (squared-ReLU MLP without a gate). A method applies
with the settings ``peftkit train`` uses or refuses in one line; where it applies, forward and backward reach every
trained tensor and save → load gives equal outputs."""

from __future__ import annotations

import pytest
import torch

import peftkit
from peftkit.core.errors import ConfigError
from peftkit.core.targets import plan
from tests.conftest import randomize_trainable, tiny_batch, tiny_model
from tests.methods.test_contract import FORMS, NEEDED

KINDS = ["deepseek_dense", "deepseek", "nemotron"]
METHODS = sorted(FORMS)


def config_for(method: str):
    spec, options = FORMS[method]
    return spec.config_cls(task_type="CAUSAL_LM", **{**spec.train_defaults, **NEEDED.get(method, {}), **options})


def refusal(method: str, kind: str) -> str | None:
    """The one-line reason the method refuses this model, or None where it applies."""
    try:
        plan(tiny_model(kind), config_for(method))
    except ConfigError as error:
        return str(error)
    return None


REFUSALS = {(method, kind): refusal(method, kind) for method in METHODS for kind in KINDS}
PAIRS = [pair for pair, reason in REFUSALS.items() if reason is None]
IDS = [f"{method}-{kind}" for method, kind in PAIRS]


@pytest.mark.parametrize("kind", KINDS)
def test_a_method_that_refuses_an_architecture_says_why_in_one_line(kind):
    reasons = [reason for (_, k), reason in REFUSALS.items() if k == kind and reason is not None]
    assert all("\n" not in reason and len(reason) < 400 for reason in reasons), reasons
    assert len(reasons) < len(METHODS) / 2


@pytest.mark.parametrize("method, kind", PAIRS, ids=IDS)
def test_forward_backward_and_save_load(method, kind, tmp_path):
    model = peftkit.get_peft_model(tiny_model(kind), config_for(method))
    randomize_trainable(model)
    batch = tiny_batch()
    model.train()
    model(**batch, labels=batch["input_ids"]).loss.backward()
    trained = {name: p for name, p in model.named_parameters() if p.requires_grad}
    assert trained and all(p.grad is not None and torch.isfinite(p.grad).all() for p in trained.values())
    assert any(p.grad.abs().sum() > 0 for p in trained.values())
    model.eval()
    with torch.no_grad():
        expected = model(**batch).logits
    model.save_pretrained(tmp_path)
    loaded = peftkit.PeftModel.from_pretrained(tiny_model(kind), tmp_path)
    with torch.no_grad():
        assert torch.allclose(loaded(**batch).logits, expected, atol=1e-5)
