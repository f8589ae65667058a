import pytest
import torch

import peftkit
from peftkit.core.errors import ConfigError
from peftkit.methods.frod import FrodConfig, role
from tests.conftest import tiny_model


def test_each_weight_is_rebuilt_from_the_role_basis_and_the_trained_core():
    config = FrodConfig(task_type="CAUSAL_LM", sparse_rate=0.05, target_modules=["q_proj", "down_proj"])
    model = peftkit.get_peft_model(tiny_model("llama").double(), config)
    layers = dict(model.adapter_layers())
    layer = next(layer for name, layer in layers.items() if name.endswith("layers.1.self_attn.q_proj"))
    basis = layer.shared["default"].frod_V.self_attn_q_proj
    assert basis is layers[next(n for n in layers if n.endswith("layers.0.self_attn.q_proj"))].shared[
        "default"].frod_V.self_attn_q_proj
    u = layer.frod_U["default"].U
    lam = layer.frod_lambda_l["default"].detach()
    assert torch.allclose(u.norm(dim=0), torch.ones(32, dtype=torch.float64), atol=1e-6)
    assert torch.allclose(u @ torch.diag(lam) @ basis.T, layer.weight, atol=1e-5)  # unchanged at the start
    rows, columns = layer.shared["default"].frod_s_indices.self_attn_q_proj
    assert len(rows) == int(32 * 32 * 0.05) and not (rows == columns).any()
    with torch.no_grad():
        layer.frod_lambda_s_values["default"].normal_()
        layer.frod_lambda_l["default"].mul_(1.5)
    core = torch.diag(layer.frod_lambda_l["default"].detach())
    core[rows, columns] = layer.frod_lambda_s_values["default"].detach()
    assert torch.allclose(layer.update("default").detach(), u @ core @ basis.T - layer.weight, atol=1e-6)


def test_roles_follow_peft_s_naming():
    assert role("bert.encoder.layer.0.attention.self.query") == "self_query"
    assert role("bert.encoder.layer.0.attention.output.dense") == "attention_output"
    assert role("transformer.h.0.mlp.c_fc") == "mlp_c_fc"


def test_a_sparse_rate_above_one_is_refused_in_one_line():
    with pytest.raises(ConfigError, match="sparse_rate") as error:
        FrodConfig(sparse_rate=1.5)
    assert "\n" not in str(error.value)
