"""LoRA's EVA initialisation: A from the principal directions of each layer's inputs (checked against an eigen-
decomposition of the collected inputs), the rank budget redistributed by explained variance with alphas rescaled,
the model unchanged at the start, label-masked tokens left out, and peft both ways."""

from __future__ import annotations

import peft
import pytest
import torch

import peftkit
from peftkit.core.errors import ConfigError
from tests.conftest import VOCAB, randomize_trainable, tiny_batch, tiny_model

TARGETS = ["q_proj", "v_proj", "down_proj"]


def batches(count: int = 4, rows: int = 8, length: int = 16, labels: bool = False) -> list[dict]:
    generator = torch.Generator().manual_seed(7)
    found = []
    for _ in range(count):
        ids = torch.randint(1, VOCAB, (rows, length), generator=generator)
        batch = {"input_ids": ids, "attention_mask": torch.ones_like(ids)}
        if labels:
            batch["labels"] = ids.masked_fill(torch.arange(length) < length // 2, -100)
        found.append(batch)
    return found


def input_directions(data: list[dict], path: str, count: int, token_mask=None) -> torch.Tensor:
    """The top eigenvectors (rows) of the covariance of ``path``'s inputs in the plain model."""
    model, seen = tiny_model("llama").double(), []
    handle = model.get_submodule(path).register_forward_pre_hook(lambda module, args: seen.append(args[0]))
    with torch.no_grad():
        for batch in data:
            model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
    handle.remove()
    rows = torch.cat([x.reshape(-1, x.shape[-1]) for x in seen])
    if token_mask is not None:
        rows = rows[torch.cat([m.reshape(-1) for m in token_mask])]
    values, vectors = torch.linalg.eigh(torch.cov(rows.T))
    return vectors.flip(1).T[:count]


def eva_model(rho: float = 1.0, **settings):
    config = peftkit.LoraConfig(r=4, lora_alpha=8, target_modules=TARGETS, init_lora_weights="eva",
                                eva_config=peftkit.EvaConfig(rho=rho, tau=0.999, **settings))
    return peftkit.get_peft_model(tiny_model("llama").double(), config)


def test_a_holds_the_principal_directions_of_each_layer_s_inputs_and_the_model_is_unchanged():
    model, data = eva_model(), batches()
    before = model(**tiny_batch()).logits.detach()
    peftkit.initialize_lora_eva_weights(model, data, show_progress_bar=False)
    assert torch.allclose(model(**tiny_batch()).logits, before, atol=1e-10)
    for path, layer in model.adapter_layers():
        a = layer.lora_A["default"].weight
        cosines = (a * input_directions(data, path, a.shape[0])).sum(1).abs()
        assert a.shape[0] == 4 and cosines.min() > 0.999, path


def test_the_rank_budget_goes_to_the_most_explained_variance_with_alphas_rescaled():
    model = eva_model(rho=2.0)
    peftkit.initialize_lora_eva_weights(model, batches(), show_progress_bar=False)
    config = model.peft_config["default"]
    ranks = {path: layer.lora_A["default"].weight.shape[0] for path, layer in model.adapter_layers()}
    assert sum(ranks.values()) == 4 * 6  # the budget: r for each of the six targeted layers (rank-0 ones dropped)
    assert len(set(ranks.values())) > 1 and max(ranks.values()) <= 8
    for path, rank in ranks.items():
        assert config.rank_for(path) == rank
        assert config.alpha_for(path) / rank == pytest.approx(8 / 4)
        assert model.get_base_model().get_submodule(path).scaling["default"] == pytest.approx(2.0)


def test_label_masked_tokens_are_left_out():
    data = batches(labels=True)
    model = eva_model()
    peftkit.initialize_lora_eva_weights(model, data, show_progress_bar=False)
    path = "model.layers.1.self_attn.q_proj"
    a = model.get_base_model().get_submodule(path).lora_A["default"].weight
    masked = input_directions(data, path, 4, token_mask=[batch["labels"] != -100 for batch in data])
    assert (a * masked).sum(1).abs().min() > 0.999


def test_an_eva_adapter_round_trips_through_peft(tmp_path):
    model = eva_model(rho=2.0)
    peftkit.initialize_lora_eva_weights(model, batches(), show_progress_bar=False)
    randomize_trainable(model)
    expected = model(**tiny_batch()).logits.detach()
    model.save_pretrained(tmp_path / "ours")
    theirs = peft.PeftModel.from_pretrained(tiny_model("llama").double(), tmp_path / "ours").eval()
    assert torch.allclose(theirs(**tiny_batch()).logits, expected, atol=1e-10)
    theirs.save_pretrained(tmp_path / "theirs")
    back = peftkit.PeftModel.from_pretrained(tiny_model("llama").double(), tmp_path / "theirs")
    assert torch.allclose(back(**tiny_batch()).logits, expected, atol=1e-10)


def test_peft_s_own_eva_adapter_loads_with_equal_outputs(tmp_path):
    config = peft.LoraConfig(r=4, lora_alpha=8, target_modules=TARGETS, init_lora_weights="eva",
                             eva_config=peft.EvaConfig(rho=2.0))
    theirs = peft.get_peft_model(tiny_model("llama").double(), config)
    peft.initialize_lora_eva_weights(theirs, batches(), show_progress_bar=False)
    randomize_trainable(theirs)
    theirs.save_pretrained(tmp_path)
    ours = peftkit.PeftModel.from_pretrained(tiny_model("llama").double(), tmp_path)
    assert torch.allclose(ours(**tiny_batch()).logits, theirs(**tiny_batch()).logits, atol=1e-10)


@pytest.mark.parametrize("settings, message", [({"eva_config": {"rho": 0.5}}, "rho must be ≥ 1"),
                                               ({"eva_config": {"tau": 2}}, "tau must be between 0 and 1"),
                                               ({"eva_config": {"sigma": 1}}, "unknown key")])
def test_bad_eva_settings_are_one_line(settings, message):
    with pytest.raises(ConfigError, match=message):
        peftkit.LoraConfig(init_lora_weights="eva", **settings)


def test_initialising_an_adapter_not_made_for_eva_is_refused():
    model = peftkit.get_peft_model(tiny_model("llama"), peftkit.LoraConfig(r=2, target_modules=["q_proj"]))
    with pytest.raises(ConfigError, match="was not made with init_lora_weights='eva'"):
        peftkit.initialize_lora_eva_weights(model, batches(), show_progress_bar=False)
