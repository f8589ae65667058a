"""LoRA adapter arithmetic: weighted combinations of adapters, against the definitions and against peft."""

from __future__ import annotations

import peft
import pytest
import torch

import peftkit
from peftkit.core.errors import ConfigError
from peftkit.core.task_merging import drop_and_rescale, elected_sign_mask, keep_largest, ties
from peftkit.methods.lora.arithmetic import COMBINATIONS
from tests.conftest import logits, randomize_trainable, tiny_batch, tiny_model


def two_adapters(r_second: int = 4, seed: int = 2):
    """A tiny BERT with LoRA adapters 'a' (query, value) and 'b' (value, dense), non-zero B."""
    model = peftkit.get_peft_model(tiny_model("bert"), peftkit.LoraConfig(r=4, lora_alpha=8,
                                                                           target_modules=["query", "value"]),
                                   adapter_name="a")
    model.add_adapter("b", peftkit.LoraConfig(r=r_second, lora_alpha=4, target_modules=["value", "output.dense"]))
    for name in ("a", "b"):
        model.set_adapter(name)
        randomize_trainable(model, seed=seed + len(name) + ord(name))
    return model.eval()


@torch.no_grad()
def deltas(model, name: str) -> dict[str, torch.Tensor]:
    return {path: layer.delta_weight(name) for path, layer in model.adapter_layers() if name in layer.scaling}


def test_linear_with_weights_one_and_zero_is_the_first_adapter():
    model = two_adapters()
    model.set_adapter("a")
    expected = logits(model, tiny_batch())
    model.add_weighted_adapter(["a", "b"], [1.0, 0.0], "mix", combination_type="linear")
    model.set_adapter("mix")
    assert (logits(model, tiny_batch()) - expected).abs().max() < 1e-5
    assert model.peft_config["mix"].lora_alpha == model.peft_config["mix"].r == 4


def test_negation_and_cat_and_svd_are_exact_sums_of_the_updates():
    model = two_adapters()
    model.add_weighted_adapter(["a"], [-1.0], "not_a", combination_type="linear")
    model.add_weighted_adapter(["a", "b"], [0.7, -0.4], "cat", combination_type="cat")
    model.add_weighted_adapter(["a", "b"], [0.7, -0.4], "svd", combination_type="svd", svd_rank=8)
    a, b = deltas(model, "a"), deltas(model, "b")
    for path, delta in deltas(model, "not_a").items():
        assert torch.allclose(delta, -a[path], atol=1e-6)
    expected = {path: 0.7 * a.get(path, 0) - 0.4 * b.get(path, 0) for path in a.keys() | b.keys()}
    assert model.peft_config["cat"].r == 8
    for name in ("cat", "svd"):  # rank 8 holds the sum of a rank-4 and a rank-4 update exactly
        combined = deltas(model, name)
        assert combined.keys() == expected.keys()
        for path, delta in combined.items():
            assert torch.allclose(delta, expected[path], atol=1e-5), (name, path)


def test_svd_truncates_to_the_best_low_rank_update():
    model = two_adapters()
    model.add_weighted_adapter(["a", "b"], [1.0, 1.0], "low", combination_type="svd", svd_rank=2)
    a, b = deltas(model, "a"), deltas(model, "b")
    for path, delta in deltas(model, "low").items():
        target = a.get(path, 0) + b.get(path, 0)
        singular = torch.linalg.svdvals(target)
        assert torch.linalg.matrix_rank(delta, atol=1e-5) <= 2
        # Eckart–Young: the error of the best rank-2 approximation is the norm of the other singular values
        assert torch.linalg.norm(target - delta) == pytest.approx(singular[2:].norm().item(), rel=1e-4)


@pytest.mark.parametrize("combination", ["linear", "cat", "svd", "ties", "ties_svd", "magnitude_prune",
                                         "magnitude_prune_svd"])
def test_same_result_as_peft(combination, tmp_path):
    ours = two_adapters(r_second=4)
    ours.save_pretrained(tmp_path)
    theirs = peft.PeftModel.from_pretrained(tiny_model("bert"), tmp_path / "a", adapter_name="a")
    theirs.load_adapter(tmp_path / "b", adapter_name="b")
    settings = {"combination_type": combination, "density": 0.5, "svd_rank": 6}
    ours.add_weighted_adapter(["a", "b"], [0.6, -0.9], "mix", **settings)
    theirs.add_weighted_adapter(["a", "b"], [0.6, -0.9], "mix", **settings)
    with torch.no_grad():
        expected = {name.removeprefix("base_model.model."): module.get_delta_weight("mix")
                    for name, module in theirs.named_modules()
                    if isinstance(module, peft.tuners.lora.LoraLayer) and "mix" in module.lora_A}
    combined = deltas(ours, "mix")
    assert combined.keys() == expected.keys()
    for path, delta in combined.items():
        assert torch.allclose(delta, expected[path], atol=1e-5), path


def test_dare_keeps_density_of_the_entries_and_is_linear_at_density_one():
    model = two_adapters()
    model.add_weighted_adapter(["a", "b"], [0.5, 0.5], "linear", combination_type="linear")
    model.add_weighted_adapter(["a", "b"], [0.5, 0.5], "dare", combination_type="dare_linear", density=1.0)
    for path, delta in deltas(model, "dare").items():
        assert torch.allclose(delta, deltas(model, "linear")[path], atol=1e-6)
    torch.manual_seed(0)
    tensor = torch.randn(400, 400)
    dropped = drop_and_rescale(tensor, 0.3)
    assert (dropped != 0).float().mean().item() == pytest.approx(0.3, abs=0.01)
    kept = dropped != 0
    assert torch.allclose(dropped[kept], tensor[kept] / 0.3)


def test_ties_by_hand():
    first, second = torch.tensor([3.0, -1.0, 0.5, 2.0]), torch.tensor([-1.0, -2.0, 4.0, 0.1])
    assert keep_largest(first, 0.5).tolist() == [3.0, 0.0, 0.0, 2.0]
    trimmed = torch.stack([keep_largest(first, 0.5), keep_largest(second, 0.5)])  # [3,0,0,2], [0,-2,4,0]
    assert elected_sign_mask(trimmed, "total").tolist() == [[True, False, False, True], [False, True, True, False]]
    # each entry: the weighted mean of the trimmed values that agree with the elected sign
    merged = ties([first, second], torch.tensor([1.0, 0.5]), density=0.5)
    assert merged.tolist() == [3.0, -1.0, 2.0, 2.0]


def test_bad_requests_name_the_problem_and_change_nothing():
    model = two_adapters(r_second=2)
    before = set(model.peft_config)
    with pytest.raises(ConfigError, match="adapter 'c' does not exist"):
        model.add_weighted_adapter(["a", "c"], [1, 1], "mix", combination_type="cat")
    with pytest.raises(ConfigError, match=r"needs adapters of one rank, got \[4, 2\]; use cat or svd"):
        model.add_weighted_adapter(["a", "b"], [1, 1], "mix", combination_type="linear")
    with pytest.raises(ConfigError, match="combination_type must be one of"):
        model.add_weighted_adapter(["a", "b"], [1, 1], "mix", combination_type="average")
    with pytest.raises(ConfigError, match="one weight per adapter"):
        model.add_weighted_adapter(["a", "b"], [1], "mix", combination_type="cat")
    with pytest.raises(ConfigError, match="needs a density"):
        model.add_weighted_adapter(["a", "b"], [1, 1], "mix", combination_type="ties_svd")
    with pytest.raises(ConfigError, match="already exists"):
        model.add_weighted_adapter(["a", "b"], [1, 1], "b", combination_type="cat")
    assert set(model.peft_config) == before
    assert "mix" not in str(model)
    assert len(COMBINATIONS) == 11
