import pytest
import torch

import peftkit
from peftkit.core.errors import ConfigError
from peftkit.methods.lily import LilyConfig
from tests.conftest import randomize_trainable, tiny_model


def test_neighbouring_layers_share_a_all_share_b_and_the_router_mixes_b_over_the_batch():
    config = LilyConfig(task_type="CAUSAL_LM", r=4, stride_A=2, num_B=3, scaling=0.5, target_modules=["q_proj"])
    model = peftkit.get_peft_model(tiny_model("llama"), config)
    randomize_trainable(model)
    layers = [layer for _, layer in model.adapter_layers()]
    assert len(layers) == 2 and layers[0].lily_A["default"] is layers[1].lily_A["default"]
    assert layers[0].lily_B["default"] is layers[1].lily_B["default"]
    assert layers[0].lily_router["default"] is not layers[1].lily_router["default"]
    layer = layers[0]
    a, stacked = layer.lily_A["default"].weight.detach(), layer.lily_B["default"].weight.detach()
    router = layer.lily_router["default"].weight.detach()
    x = torch.randn(2, 5, 32)
    z = x @ a.T
    p = torch.softmax(z @ router.T, dim=-1).reshape(-1, 3).mean(dim=0)
    combined = sum(p[e] * stacked[4 * e:4 * (e + 1)] for e in range(3))
    with torch.no_grad():
        assert torch.allclose(layer(x), layer.base_layer(x) + 0.5 * z @ combined, atol=1e-6)
    trained = sum(p.numel() for p in model.parameters() if p.requires_grad)
    assert trained == 4 * 32 + 3 * 4 * 32 + 2 * 3 * 4


def test_a_single_b_is_refused_in_one_line():
    with pytest.raises(ConfigError, match="num_B") as error:
        LilyConfig(num_B=1)
    assert "\n" not in str(error.value)
