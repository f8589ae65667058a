"""APET: a deterministic random choice within the budget, about half from each pool, the same gradients
as training the chosen backbone tensors themselves, element masks that meet the budget exactly."""

import pytest
import torch

import peftkit
from peftkit import ApetConfig, ConfigError, LoraConfig, PeftModel
from peftkit.methods.apet import part_size
from tests.conftest import logits, tiny_batch, tiny_model


def selection(budget, **options):
    return peftkit.plan(tiny_model("bert"), ApetConfig(budget=budget, **options))


def test_the_choice_is_deterministic_from_budget_and_seed():
    assert selection(6000, seed=3).config.selection == selection(6000, seed=3).config.selection
    assert selection(6000, seed=3).config.selection != selection(6000, seed=4).config.selection
    assert selection(6000, seed=3).config.selection != selection(6001, seed=3).config.selection


@pytest.mark.parametrize("budget", [3000, 8000, 14000])
def test_budget_is_respected_and_split_between_the_pools(budget):
    model = tiny_model("bert")
    planned = peftkit.plan(model, ApetConfig(budget=budget, seed=1))
    assert budget - 64 <= planned.new_parameters <= budget  # the smallest candidate (a bias) is 32 wide
    modules = dict(model.named_modules())
    inserted = sum(part_size(modules[name], part, planned.config)
                   for name, parts in planned.config.selection.items() for part in parts if part in ("lora", "adapter"))
    assert 0.3 * budget <= inserted <= 0.5 * budget


def test_element_mask_meets_the_budget_exactly_and_trains_only_those_elements():
    model = peftkit.get_peft_model(tiny_model("bert"), ApetConfig(budget=5000, element_mask=True, seed=1))
    assert model.get_nb_trainable_parameters()[0] == 5000
    selection = model.peft_config["default"].selection
    masked = [(n, layer) for n, layer in model.adapter_layers() if any("@" in p for p in selection[n])]
    assert len(masked) == 1
    name, layer = masked[0]
    before = layer.weight.detach().clone()
    delta = layer.apet_delta["default"]["weight"]
    with torch.no_grad():
        delta.fill_(0.5)
    effective, _ = layer._parameters_with_deltas(["default"])
    changed = (effective - before).ne(0)
    assert int(changed.sum()) == delta.numel()


def test_starts_at_the_base_model_and_backbone_deltas_get_the_weights_own_gradients():
    batch = tiny_batch()
    base = logits(tiny_model("bert"), batch)
    model = peftkit.get_peft_model(tiny_model("bert"), ApetConfig(budget=8000, seed=2))
    assert torch.allclose(logits(model, batch), base, atol=1e-6)
    whole = [(n, p) for n, parts in model.peft_config["default"].selection.items() for p in parts if p == "weight"]
    assert whole, "this choice should hold a whole backbone weight"
    name, _ = whole[0]
    model.get_base_model()(**batch).logits.pow(2).sum().backward()
    delta_grad = model.get_base_model().get_submodule(name).apet_delta["default"]["weight"].grad

    plain = tiny_model("bert")
    plain.requires_grad_(False)
    weight = plain.get_submodule(name).weight
    weight.requires_grad_(True)
    plain(**batch).logits.pow(2).sum().backward()
    assert torch.allclose(delta_grad, weight.grad, rtol=1e-5, atol=1e-7)


def test_match_takes_another_methods_count_and_a_saved_choice_loads_as_trained(tmp_path):
    lora_count = peftkit.plan(tiny_model("bert"), LoraConfig()).new_parameters
    model = peftkit.get_peft_model(tiny_model("bert"), ApetConfig(budget="match:lora", element_mask=True))
    assert model.get_nb_trainable_parameters()[0] == lora_count
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for parameter in model.parameters():
            if parameter.requires_grad:
                parameter.add_(0.1 * torch.randn(parameter.shape, generator=generator))
    expected = logits(model)
    model.save_pretrained(tmp_path / "apet")
    loaded = PeftModel.from_pretrained(tiny_model("bert"), tmp_path / "apet")
    assert torch.allclose(logits(loaded), expected, atol=1e-6)


def test_bad_budgets_name_the_problem():
    with pytest.raises(ConfigError, match="budget must be a positive integer or 'match:<method>'"):
        ApetConfig(budget=0)
    with pytest.raises(ConfigError, match="smaller than the smallest candidate"):
        peftkit.plan(tiny_model("bert"), ApetConfig(budget=3))
    with pytest.raises(ConfigError, match="unknown method 'nothing'"):
        peftkit.plan(tiny_model("bert"), ApetConfig(budget="match:nothing"))
