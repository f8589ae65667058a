import pytest
import torch
from torch import nn

import peftkit
from peftkit.core.errors import ConfigError
from peftkit.methods.supertuning import SupertuningConfig, SupertuningLinear
from tests.conftest import randomize_trainable, tiny_batch, tiny_model


def test_the_largest_entries_train_and_the_lora_adds_alpha_over_r_times_b_a():
    torch.manual_seed(0)
    base = nn.Linear(10, 10).double()
    layer = SupertuningLinear(base)
    layer.add_adapter("a", SupertuningConfig(sparsity=0.95, r=2, init_weights=False), "q")
    w = base.weight.detach()
    order = sorted(range(100), key=lambda i: -abs(float(w.flatten()[i])))[:5]
    assert sorted(layer.supertuning_indices["a"].tolist()) == sorted(order)
    expected = torch.zeros(100, dtype=torch.float64)
    for position, value in zip(layer.supertuning_indices["a"].tolist(), layer.supertuning_values["a"].detach()):
        expected[position] = value
    a, b = layer.supertuning_lora_A["a"].weight.detach(), layer.supertuning_lora_B["a"].weight.detach()
    expected = expected.reshape(10, 10) + 4 / 2 * b @ a  # lora_alpha defaults to 2r
    assert torch.allclose(layer.update("a").detach(), expected, atol=1e-6)


def test_supra_without_saved_indices_round_trips_through_peft(tmp_path):
    import peft

    config = SupertuningConfig(task_type="CAUSAL_LM", sparsity=0.9, r=2, save_precomputed_indices=False,
                               target_modules=["q_proj", "down_proj"])
    model = peftkit.get_peft_model(tiny_model("llama").double(), config)
    randomize_trainable(model)
    with torch.no_grad():
        expected = model(**tiny_batch()).logits
    model.save_pretrained(tmp_path / "ours")
    theirs = peft.PeftModel.from_pretrained(tiny_model("llama").double(), tmp_path / "ours").eval()
    with torch.no_grad():
        assert torch.allclose(theirs(**tiny_batch()).logits, expected, atol=1e-5)
    theirs.save_pretrained(tmp_path / "theirs")
    back = peftkit.PeftModel.from_pretrained(tiny_model("llama").double(), tmp_path / "theirs")
    with torch.no_grad():
        assert torch.allclose(back(**tiny_batch()).logits, expected, atol=1e-5)


def test_a_sparsity_of_one_is_refused_in_one_line():
    with pytest.raises(ConfigError, match="sparsity") as error:
        SupertuningConfig(sparsity=1.0)
    assert "\n" not in str(error.value)
