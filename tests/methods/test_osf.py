import pytest
import torch
from torch import nn

from peftkit.core.errors import ConfigError
from peftkit.methods.osf import OSFConfig, OSFLinear


@pytest.mark.parametrize("shape", [(8, 5), (5, 8)])
def test_the_update_swaps_the_low_singular_part_and_gradients_avoid_the_top_directions(shape):
    torch.manual_seed(0)
    base = nn.Linear(shape[1], shape[0]).double()
    layer = OSFLinear(base)
    layer.add_adapter("a", OSFConfig(effective_rank=2, init_weights=False), "q")
    u, s, vt = torch.linalg.svd(base.weight.detach().float(), full_matrices=False)
    u, s, vt = u.double(), s.double(), vt.double()
    params = layer.osf_svd_params["a"]
    assert params["S_low"].shape == (3,)
    new_low = params["U_low"].detach() @ torch.diag(params["S_low"].detach()) @ params["V_low"].detach()
    expected = new_low - u[:, 2:] @ torch.diag(s[2:]) @ vt[2:]
    assert torch.allclose(layer.update("a").detach(), expected, atol=1e-6)
    layer.active_adapters = ["a"]
    layer(torch.randn(4, shape[1], dtype=torch.float64)).pow(2).sum().backward()
    u_grad, v_grad = params["U_low"].grad, params["V_low"].grad  # float32 singular vectors: 1e-7 from orthonormal
    assert (u[:, :2].T @ u_grad).norm() < 1e-6 * u_grad.norm() and u_grad.norm() > 0
    assert (v_grad @ vt[:2].T).norm() < 1e-6 * v_grad.norm() and v_grad.norm() > 0


def test_the_kept_rank_is_half_the_smaller_side_unless_set_or_patterned():
    assert OSFConfig().rank_for("a.q_proj", 10) == 5
    assert OSFConfig(effective_rank=0.3).rank_for("a.q_proj", 10) == 3
    assert OSFConfig(effective_rank=4, rank_pattern={"q_": 7}).rank_for("a.q_proj", 10) == 7


def test_a_negative_effective_rank_is_refused_in_one_line():
    with pytest.raises(ConfigError, match="effective_rank") as error:
        OSFConfig(effective_rank=-1)
    assert "\n" not in str(error.value)
