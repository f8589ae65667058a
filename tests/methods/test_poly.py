"""Poly: one layer's routed mix of skills by hand, peft's round trip with task_ids, bad values."""

import peft
import pytest
import torch

import peftkit
from peftkit import ConfigError
from peftkit.methods.poly import PolyConfig
from tests.conftest import randomize_trainable, tiny_batch
from tests.methods.test_contract import TASKS, base_model, batch_for

TASK_IDS = torch.tensor([2, 0])


def test_each_row_adds_its_task_s_mix_of_skills_split_by_split():
    config = PolyConfig(r=2, n_tasks=3, n_skills=3, n_splits=2, target_modules=["query"], task_type="SEQ_CLS")
    model = peftkit.get_peft_model(base_model("bert"), config)
    randomize_trainable(model, scale=1.0)
    layer = model.get_base_model().bert.encoder.layer[0].attention.self.query
    seen = {}
    layer.register_forward_hook(lambda module, args, out: seen.update(x=args[0], out=out))
    with torch.no_grad():
        model(**tiny_batch(), task_ids=TASK_IDS)
        a, b = layer.poly_lora_A["default"], layer.poly_lora_B["default"]  # 2 splits × 3 skills × 16 × 2, × 2 × 16
        logits = layer.poly_router["default"].module_logits
        for row, task in enumerate(TASK_IDS.tolist()):
            chosen = logits[task].view(2, 3).sigmoid()
            w = chosen / chosen.sum(dim=1, keepdim=True)
            a_t = torch.cat([sum(w[q, s] * a[q, s] for s in range(3)) for q in range(2)], dim=0)  # 32 × 2
            b_t = torch.cat([sum(w[q, s] * b[q, s] for s in range(3)) for q in range(2)], dim=1)  # 2 × 32
            x = seen["x"][row]
            expected = layer.base_layer(x) + x @ a_t @ b_t / 2
            assert torch.allclose(seen["out"][row], expected, atol=1e-6)
    assert (seen["out"] - layer.base_layer(seen["x"])).abs().max() > 1e-3


@pytest.mark.parametrize("kind", ["bert", "llama", "t5"])
def test_peft_reads_ours_and_we_read_peft_s_with_task_ids(kind, tmp_path):
    double = torch.float64
    config = PolyConfig(r=2, n_tasks=3, n_skills=2, n_splits=2, task_type=TASKS[kind])
    ours = peftkit.get_peft_model(base_model(kind, double), config)
    randomize_trainable(ours)
    with torch.no_grad():
        expected = ours(**batch_for(kind), task_ids=TASK_IDS).logits
    ours.save_pretrained(tmp_path / "ours")
    theirs = peft.PeftModel.from_pretrained(base_model(kind, double), tmp_path / "ours").eval()
    with torch.no_grad():
        assert torch.allclose(theirs(**batch_for(kind), task_ids=TASK_IDS).logits, expected, atol=1e-5)
    theirs.save_pretrained(tmp_path / "theirs")
    back = peftkit.PeftModel.from_pretrained(base_model(kind, double), tmp_path / "theirs")
    with torch.no_grad():
        assert torch.allclose(back(**batch_for(kind), task_ids=TASK_IDS).logits, expected, atol=1e-5)


def test_bad_values_and_missing_task_ids_are_refused_in_one_line():
    with pytest.raises(ConfigError, match="n_skills"):
        PolyConfig(n_skills=0)
    with pytest.raises(ConfigError, match="n_splits"):
        peftkit.plan(base_model("bert"), PolyConfig(n_splits=5, target_modules=["query"]))
    model = peftkit.get_peft_model(base_model("bert"), PolyConfig(n_tasks=2, task_type="SEQ_CLS"))
    with pytest.raises(ConfigError, match="task_ids"):
        model(**tiny_batch())
    with pytest.raises(ConfigError, match="tasks"):
        model(**tiny_batch(), task_ids=torch.tensor([0, 2]))
