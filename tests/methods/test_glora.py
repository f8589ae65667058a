import pytest
import torch
from torch import nn

from peftkit.core.errors import ConfigError
from peftkit.methods.glora import GloraConfig, GloraLinear


def test_the_weight_and_bias_follow_the_five_paths_and_two_merged_adapters_undo_exactly():
    torch.manual_seed(0)
    base = nn.Linear(6, 4).double()
    layer = GloraLinear(base)
    layer.add_adapter("a", GloraConfig(r=2, config_C="vector", config_D_E="vector", init_weights=False), "q")
    layer.add_adapter("b", GloraConfig(r=3, config_A_B="constant", init_weights=False), "q")
    a = {p: dict(getattr(layer, f"glora_{p}")["a"]) for p in "ABCDE"}
    w, b = base.weight.detach().clone(), base.bias.detach().clone()
    new_w = w + w * (a["A"]["Xd"] @ a["A"]["Xu"]) + a["B"]["Xd"] @ a["B"]["Xu"]
    new_b = b + b * a["D"]["X"] + a["E"]["X"] + (w @ a["C"]["X"])[:, 0]
    x = torch.randn(3, 6, dtype=torch.float64)
    layer.active_adapters = ["a"]
    assert torch.allclose(layer(x), x @ new_w.detach().T + new_b.detach(), atol=1e-6)
    layer.active_adapters = ["a", "b"]
    expected = layer(x).detach()
    layer.merge(["a", "b"])
    assert torch.allclose(base(x), expected, atol=1e-5)
    layer.unmerge()
    assert torch.allclose(base.weight, w, atol=1e-5) and torch.allclose(base.bias, b, atol=1e-5)


def test_a_layer_without_bias_saves_frozen_zeros_for_c_d_e():
    layer = GloraLinear(nn.Linear(6, 4, bias=False))
    layer.add_adapter("a", GloraConfig(r=2), "q")
    state = layer.adapter_state_dict("a")
    assert state["glora_C.zeros"].shape == (6, 1) and state["glora_D.zeros"].shape == (4,)
    assert [t.shape for t in layer.frozen_tensors("a")] == [(6, 1), (4,), (4,)]
    assert GloraLinear.planned_trainable(layer.base, GloraConfig(r=2), "q") == 2 * (4 * 2 + 2 * 6)


def test_an_unknown_path_form_is_refused_in_one_line():
    with pytest.raises(ConfigError, match="config_D_E") as error:
        GloraConfig(config_D_E="lora")
    assert "\n" not in str(error.value)
