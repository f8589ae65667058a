"""Rank allocation (AdaLoRA, IncreLoRA) inside transformers' Trainer.

``RankAllocation`` is a Trainer callback: at the start of training it builds the method's allocator on the
Trainer's optimizer and schedule, and after every optimizer step (before the gradients are cleared and
the schedule steps) it calls ``allocator.step(t)``. ``allocation_parts(model)`` gives the callback and
the orthogonality objective a recipe adds for an adapter of either method.
"""

from __future__ import annotations

from transformers import TrainerCallback

from peftkit.methods.adalora import AdaLoraAllocator, AdaLoraConfig
from peftkit.methods.increlora import IncreLoraAllocator, IncreLoraConfig
from peftkit.objectives.orthogonality import OrthogonalityLoss


def rank_allocator(model, optimizer, scheduler, total_steps: int, adapter_name: str = "default"):
    """The allocator for the adapter's method."""
    config = model.peft_config[adapter_name]
    if isinstance(config, AdaLoraConfig):
        return AdaLoraAllocator(model, adapter_name, total_step=config.total_step or total_steps)
    return IncreLoraAllocator(model, optimizer, scheduler, adapter_name, total_steps=total_steps)


class RankAllocation(TrainerCallback):
    def __init__(self, adapter_name: str = "default") -> None:
        self.adapter_name = adapter_name
        self.allocator = None

    def on_train_begin(self, args, state, control, model=None, optimizer=None, lr_scheduler=None, **kwargs):
        self.allocator = rank_allocator(model, optimizer, lr_scheduler, state.max_steps, self.adapter_name)

    def on_optimizer_step(self, args, state, control, **kwargs):
        self.allocator.step(state.global_step)


def allocation_parts(model) -> tuple[list[TrainerCallback], list[OrthogonalityLoss]]:
    """(callbacks, objectives) for the active adapter when it allocates rank; empty otherwise."""
    name = getattr(model, "active_adapter", None)
    config = getattr(model, "peft_config", {}).get(name)
    if not isinstance(config, (AdaLoraConfig, IncreLoraConfig)):
        return [], []
    objectives = [OrthogonalityLoss(model, name)] if config.orth_reg_weight > 0 else []
    return [RankAllocation(name)], objectives
