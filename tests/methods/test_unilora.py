"""UniLoRA's positions and scales against peft's, its update against its formula, and its config checks."""

from __future__ import annotations

import pytest
import torch

import peftkit
from peftkit.core.errors import ConfigError
from peftkit.methods.unilora import UniLoraConfig
from tests.conftest import tiny_model

TARGETS = ["q_proj", "v_proj", "gate_proj", "down_proj"]


def test_positions_and_scales_are_peft_s_and_the_update_reads_theta_there():
    import peft

    settings = dict(r=3, theta_d_length=100, proj_seed=5, target_modules=TARGETS)
    model = peftkit.get_peft_model(tiny_model("llama"), UniLoraConfig(**settings))
    theirs = peft.get_peft_model(tiny_model("llama"), peft.UniLoraConfig(**settings))
    shared = model.shared_tensors["default"]
    # 2 × (q 192 + v 144 + gate 240 + down 240) = 1632 entries of A and B for 100 values: each used 16 or 17 times
    counts = torch.bincount(torch.cat([b.flatten() for n, b in shared.named_buffers() if "positions" in n]))
    assert sorted(counts.tolist()) == [16] * 68 + [17] * 32
    for name in ("layers.0.self_attn.v_proj", "layers.1.mlp.down_proj"):
        peft_layer = theirs.base_model.model.model.get_submodule(name)
        slot = shared.slot[f"model.{name}"]
        for part in ("A", "B"):
            assert torch.equal(getattr(shared, f"positions_{part}_{slot}"),
                               getattr(peft_layer, f"unilora_indices_{part}")["default"])
            assert torch.equal(getattr(shared, f"scales_{part}_{slot}"),
                               getattr(peft_layer, f"unilora_scales_{part}")["default"])
    layer, slot = model.base_model.model.model.layers[1].mlp.down_proj, shared.slot["model.layers.1.mlp.down_proj"]
    theta = shared.unilora_theta_d
    a, b = (theta[p] / counts[p].sqrt() for p in (getattr(shared, f"positions_A_{slot}"),
                                                    getattr(shared, f"positions_B_{slot}")))
    assert torch.allclose(layer.delta_weight("default"), b @ a, atol=1e-6)
    x = torch.randn(3, 48)
    assert torch.allclose(layer(x), layer.base_layer(x) + x @ (b @ a).T, atol=1e-6)


def test_a_theta_length_of_zero_is_refused_naming_the_field():
    with pytest.raises(ConfigError, match="^theta_d_length must be a positive integer, got 0$"):
        UniLoraConfig(theta_d_length=0)
