"""Trainable tokens: the chosen rows replaced (in a tied output layer too), merged and unmerged exactly."""

from __future__ import annotations

import pytest
import torch

import peftkit
from peftkit.core.errors import ConfigError
from peftkit.methods.trainable_tokens import TrainableTokensConfig
from tests.conftest import tiny_batch, tiny_model

TOKENS = [8, 32, 33]


def trained_gpt2():
    model = peftkit.get_peft_model(tiny_model("gpt2"), TrainableTokensConfig(token_indices=TOKENS))
    layer = model.get_base_model().transformer.wte
    with torch.no_grad():
        layer.trainable_tokens_delta["default"].normal_()
    return model, layer.trainable_tokens_delta["default"].detach()


def test_the_chosen_rows_are_replaced_in_the_embedding_and_in_the_tied_output_layer():
    model, rows = trained_gpt2()
    expected_model = tiny_model("gpt2")
    with torch.no_grad():
        expected_model.transformer.wte.weight[TOKENS] = rows  # tied: lm_head uses the same rows
        assert torch.allclose(model(**tiny_batch()).logits, expected_model(**tiny_batch()).logits, atol=1e-5)
    assert sum(p.numel() for p in model.parameters() if p.requires_grad) == len(TOKENS) * 32


def test_merging_writes_the_rows_and_unmerging_restores_the_originals():
    model, rows = trained_gpt2()
    original = tiny_model("gpt2").transformer.wte.weight.detach().clone()
    model.merge_adapter()
    weight = model.get_base_model().transformer.wte.base_layer.weight
    assert torch.equal(weight[TOKENS], rows)
    model.unmerge_adapter()
    assert torch.equal(weight, original)


def test_an_adapter_peft_made_on_a_tied_model_loads_with_equal_outputs(tmp_path):
    import peft

    theirs = peft.get_peft_model(tiny_model("gpt2"), peft.TrainableTokensConfig(token_indices=TOKENS))
    with torch.no_grad():
        theirs.base_model.model.transformer.wte.trainable_tokens_delta["default"].normal_()
        expected = theirs(**tiny_batch()).logits
    theirs.save_pretrained(tmp_path)
    ours = peftkit.PeftModel.from_pretrained(tiny_model("gpt2"), tmp_path)
    with torch.no_grad():
        assert torch.allclose(ours(**tiny_batch()).logits, expected, atol=1e-5)


@pytest.mark.parametrize("indices, message", [([], "token_indices is empty"), ([5, 5], "twice"),
                                              ([500], "vocabulary has 120"), ([-1], "non-negative")])
def test_bad_token_ids_are_refused_in_one_line(indices, message):
    with pytest.raises(ConfigError, match=message) as error:
        peftkit.get_peft_model(tiny_model("llama"), TrainableTokensConfig(token_indices=indices))
    assert "\n" not in str(error.value)
