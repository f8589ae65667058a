"""IncreLoRA: importance score, budget, advance learning, warm-up of new parameter groups, Trainer, files."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn
from transformers import Trainer, TrainingArguments, get_linear_schedule_with_warmup

import peftkit
from peftkit.methods.increlora import RESERVE_E, IncreLoraLinear
from peftkit.recipes.rank_allocation import RankAllocation
from tests.conftest import assert_changed, logits, randomize_trainable, tiny_batch, tiny_model

BATCH = {**tiny_batch(4), "labels": torch.tensor([0, 1, 2, 1])}


def increlora(kind: str = "bert", **settings) -> peftkit.PeftModel:
    options = {"target_modules": "all-linear", "init_warmup": 2, "incre_interval": 2, "top_h": 3, "target_rank": 3,
               "new_param_warmup": 4, **settings}
    return peftkit.get_peft_model(tiny_model(kind), peftkit.IncreLoraConfig(**options))


def train(model, steps: int, scheduler_warmup: int | None = None, lr: float = 1e-2):
    """AdamW on one batch with the allocator; per step (loss, total rank, modules grown, group learning rates)."""
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=lr)
    scheduler = (None if scheduler_warmup is None
                 else get_linear_schedule_with_warmup(optimizer, scheduler_warmup, steps))
    allocator = peftkit.IncreLoraAllocator(model, optimizer, scheduler)
    model.train()
    history = []
    for step in range(steps):
        rates = [group["lr"] for group in optimizer.param_groups]  # the rates this step uses
        loss = model(**BATCH).loss
        loss.backward()
        optimizer.step()
        grown = allocator.step(step)
        if scheduler is not None:
            scheduler.step()
        optimizer.zero_grad()
        history.append((loss.item(), allocator.total_rank(), grown, rates))
    return history, allocator, optimizer


def test_importance_score_equals_hand_computation_on_one_layer():
    torch.manual_seed(0)
    model = peftkit.get_peft_model(nn.Sequential(nn.Linear(6, 5)), peftkit.IncreLoraConfig(target_modules=["0"]))
    layer = model.get_base_model()[0]
    randomize_trainable(model)
    x = torch.randn(3, 4, 6)
    target = torch.randn(3, 4, 5)
    model.train()
    ((model(x) - target) ** 2).sum().backward()

    lora_a, lora_e, lora_b = (t.detach() for t in layer.factors("default"))
    delta = (16 / (1 + 1e-5) * lora_b @ (lora_a * lora_e)).requires_grad_(True)
    base = layer.base
    out = x @ (base.weight + delta).T + base.bias
    ((out - target) ** 2).sum().backward()
    expected = (delta.detach() * delta.grad).abs().sum() / math.sqrt(30)

    assert float(layer.importance["default"]) == pytest.approx(float(expected), rel=1e-5)
    assert float(expected) > 0


def test_total_rank_grows_only_at_allocation_steps_and_never_beyond_the_budget():
    model = increlora()
    modules = sum(isinstance(m, IncreLoraLinear) for m in model.modules())
    history, allocator, _ = train(model, steps=20)
    budget = 3 * modules
    ranks = [modules] + [rank for _, rank, _, _ in history]
    for step, (_, rank, grown, _) in enumerate(history):
        done = step + 1
        at_allocation = done >= 2 and (done - 2) % 2 == 0
        assert rank <= budget
        assert rank - ranks[step] == len(grown)
        if not at_allocation:
            assert grown == []
        else:
            assert len(grown) == min(3, budget - ranks[step])
    assert ranks[-1] == budget  # reached
    assert model.peft_config["default"].rank_pattern == allocator.ranks()


def test_reserve_e_is_frozen_at_1e_5_while_its_a_and_b_get_gradients():
    model = increlora(init_warmup=100)  # no allocation in these steps
    layer = next(m for m in model.modules() if isinstance(m, IncreLoraLinear))
    reserve_a, reserve_b = layer.lora_A["default"][-1], layer.lora_B["default"][-1]
    start_a, start_b = reserve_a.detach().clone(), reserve_b.detach().clone()
    model.train()
    model(**BATCH).loss.backward()
    assert reserve_a.grad.abs().sum() > 0 and reserve_b.grad.abs().sum() > 0
    assert len(layer.lora_E["default"]) == 1 and len(layer.lora_A["default"]) == 2  # the reserve has no e parameter
    model.zero_grad()
    train(model, steps=3)
    _, lora_e, _ = layer.factors("default")
    assert lora_e[-1].item() == torch.tensor(RESERVE_E).item()  # still exactly 1e-5 (float32)
    assert not torch.equal(reserve_a.detach(), start_a) and not torch.equal(reserve_b.detach(), start_b)

    # on allocation the reserve's e becomes a trained parameter starting at 1e-5, and a new reserve appears
    new = layer.grow("default")
    assert new[0] is layer.lora_E["default"][-1] and new[0].item() == pytest.approx(RESERVE_E)
    assert layer.lora_A["default"][1] is reserve_a and len(layer.lora_A["default"]) == 3


def test_new_parameter_groups_warm_up_again_with_and_without_a_scheduler():
    for scheduler_warmup in (None, 3):
        model = increlora(top_h=2, target_rank=2, new_param_warmup=4)
        steps = 12
        history, allocator, optimizer = train(model, steps, scheduler_warmup=scheduler_warmup, lr=1e-2)
        first_group = [rates[0] for _, _, _, rates in history]
        allocation_steps = [step for step, (_, _, grown, _) in enumerate(history) if grown]
        assert len(optimizer.param_groups) == 1 + len(allocation_steps) >= 2
        for group_index, added in enumerate(allocation_steps, start=1):
            for step in range(added + 1, steps):
                expected = first_group[step] * min(1.0, (step - added) / 4)
                assert history[step][3][group_index] == pytest.approx(expected, rel=1e-6, abs=1e-12)


def test_trains_inside_transformers_trainer_with_the_callback(tmp_path):
    model = increlora(init_warmup=3, incre_interval=3)
    start_rank = sum(m.active_rank("default") for m in model.modules() if isinstance(m, IncreLoraLinear))
    rows = [{k: v[i] for k, v in BATCH.items()} for i in range(4)] * 8
    arguments = TrainingArguments(output_dir=str(tmp_path), max_steps=16, per_device_train_batch_size=4,
                                  learning_rate=1e-2, warmup_steps=2, report_to="none", save_strategy="no",
                                  use_cpu=True, logging_steps=100, remove_unused_columns=False)
    callback = RankAllocation()
    trainer = Trainer(model=model, args=arguments, train_dataset=rows, callbacks=[callback])
    before = logits(model, BATCH)
    output = trainer.train()
    ranks = callback.allocator.ranks()
    assert sum(ranks.values()) > start_rank
    assert len(trainer.optimizer.param_groups) > 1
    assert output.training_loss < 1.2  # 3 labels: ln 3 = 1.10 at chance
    assert_changed(logits(model, BATCH), before)


def test_save_and_load_keep_the_grown_components(tmp_path):
    model = increlora()
    train(model, steps=6)
    model.eval()
    expected = logits(model, BATCH)
    model.save_pretrained(tmp_path)
    loaded = peftkit.PeftModel.from_pretrained(tiny_model("bert"), tmp_path)
    assert (logits(loaded, BATCH) - expected).abs().max() <= 1e-6
    assert max(loaded.peft_config["default"].rank_pattern.values()) > 1


def test_merge_equals_unmerged():
    from tests.conftest import assert_merge_round_trip

    model = increlora()
    randomize_trainable(model)
    assert_merge_round_trip(model.eval(), BATCH)


def test_bad_config_is_a_one_line_error():
    with pytest.raises(peftkit.ConfigError, match="init_r .* must not exceed target_rank"):
        peftkit.IncreLoraConfig(init_r=4, target_rank=2)
    with pytest.raises(peftkit.ConfigError, match="top_h must be an integer"):
        peftkit.IncreLoraConfig(top_h=0)


def test_automatic_top_h_fills_the_budget_by_80_percent_of_training_then_scoring_stops():
    model = increlora(top_h=None)
    layers = [m for m in model.modules() if isinstance(m, IncreLoraLinear)]
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    allocator = peftkit.IncreLoraAllocator(model, optimizer, total_steps=20)
    assert allocator.top_h == math.ceil((3 - 1) * len(layers) / ((16 - 2) // 2 + 1))
    model.train()
    for step in range(20):
        model(**BATCH).loss.backward()
        optimizer.step()
        allocator.step(step)
        optimizer.zero_grad()
        if step + 1 == 16:
            assert allocator.total_rank() == allocator.budget
            assert not any(layer.scoring for layer in layers)
    assert all(not layer.importance for layer in layers)  # nothing scored after the budget was full
    with pytest.raises(peftkit.ConfigError, match="total_steps"):
        peftkit.IncreLoraAllocator(increlora(top_h=None), optimizer)
