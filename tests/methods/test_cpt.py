"""CPT: the projected prompt, the masked gradient, the weighted loss against peft's, bad values."""

import math

import peft
import pytest
import torch

import peftkit
from peftkit import ConfigError
from peftkit.methods.cpt import CPTConfig
from tests.conftest import randomize_trainable, tiny_batch
from tests.methods.test_contract import base_model

TYPES = [1, 2, 2, 3, 4, 5, 6, 7, 8]
IDS = [5, 6, 7, 8, 9, 10, 11, 12, 13]


def cpt_model(dtype=torch.float32, **options):
    config = CPTConfig(cpt_token_ids=IDS, cpt_tokens_type_mask=TYPES, task_type="CAUSAL_LM", **options)
    return peftkit.get_peft_model(base_model("gpt2", dtype), config)


def test_the_prompt_is_the_examples_embeddings_plus_a_change_kept_within_each_token_s_ball():
    model = cpt_model(opt_projection_epsilon=0.2, opt_projection_format_epsilon=0.05)
    randomize_trainable(model, scale=1.0)
    encoder = model.prompt_encoder["default"]
    raw = encoder.delta.detach().clone()
    tokens = encoder.virtual_tokens().detach()
    scale = math.sqrt(32 / 2048)
    radius = torch.tensor([0.05 if t % 2 == 1 else 0.2 if t % 4 == 2 else 1e-10 for t in TYPES]) * scale
    by_hand = raw * (radius / raw.norm(dim=1).clamp(min=radius)).unsqueeze(1)
    words = base_model("gpt2").get_input_embeddings().weight[IDS]
    assert torch.allclose(tokens, words + by_hand, atol=1e-6)
    assert torch.allclose((tokens - words).norm(dim=1), radius, atol=1e-6)


def test_label_tokens_get_no_gradient():
    model = cpt_model()
    randomize_trainable(model)
    model(**tiny_batch()).logits.pow(2).mean().backward()
    grad = model.prompt_encoder["default"].delta.grad
    labelled = torch.tensor([t % 4 == 0 for t in TYPES])
    assert grad[labelled].abs().max() == 0 and (grad[~labelled].abs().sum(dim=1) > 0).all()


@pytest.mark.parametrize("weighting", ["none", "decay"])
def test_the_loss_over_labelled_tokens_equals_peft_s(weighting, tmp_path):
    model = cpt_model(torch.float64, opt_weighted_loss_type=weighting, opt_loss_decay_factor=0.5)
    randomize_trainable(model)
    batch = tiny_batch()
    labels = batch["input_ids"].clone()
    input_types = torch.tensor([[1, 2, 3, 4, 5, 6, 7, 8], [0, 1, 2, 4, 4, 5, 7, 8]])[:, : labels.shape[1]]
    input_types = torch.nn.functional.pad(input_types, (0, labels.shape[1] - input_types.shape[1]), value=4)
    ours = model(**batch, labels=labels, input_type_mask=input_types.clone())
    model.save_pretrained(tmp_path)
    theirs = peft.PeftModel.from_pretrained(base_model("gpt2", torch.float64), tmp_path).eval()
    expected = theirs(**batch, labels=labels, input_type_mask=input_types.clone())
    assert torch.allclose(ours.logits, expected.logits, atol=1e-6)
    assert abs(ours.loss.item() - expected.loss.item()) < 1e-6 and ours.loss.item() > 0


def test_bad_values_name_the_field():
    with pytest.raises(ConfigError, match="task_type"):
        CPTConfig(task_type="SEQ_CLS")
    with pytest.raises(ConfigError, match="opt_weighted_loss_type"):
        CPTConfig(task_type="CAUSAL_LM", opt_weighted_loss_type="exponential")
    with pytest.raises(ConfigError, match="same length"):
        CPTConfig(task_type="CAUSAL_LM", cpt_token_ids=[1, 2], cpt_tokens_type_mask=[1])
