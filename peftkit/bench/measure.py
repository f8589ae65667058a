"""Measurements of a trained model that a bench row reports besides its score and training steps.

* activation memory: the bytes autograd saves for backward in one training forward pass (parameters
  excluded; ``SavedForBackward``);
* inference latency: the median time of a forward pass over one evaluation batch (eval mode, no
  gradients), with the adapter as trained (unmerged) and folded into the weights (merged, on a copy).
"""

from __future__ import annotations

import copy
import statistics
import time

import torch

from peftkit.utils.memory import SavedForBackward


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def activation_bytes(model: torch.nn.Module, batch: dict) -> int:
    """Bytes saved for backward by one forward pass with the loss, in training mode; nothing is updated."""
    was_training = model.training
    model.train()
    with torch.enable_grad(), SavedForBackward(skip=model.parameters()) as saved:
        loss = model(**batch).loss
    del loss
    model.train(was_training)
    return saved.bytes


@torch.no_grad()
def forward_seconds(model: torch.nn.Module, batch: dict, repeats: int = 3, warmup: int = 1) -> float:
    """Median seconds of one forward pass in eval mode."""
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    times = []
    for index in range(warmup + repeats):
        synchronize(device)
        started = time.perf_counter()
        model(**batch)
        synchronize(device)
        if index >= warmup:
            times.append(time.perf_counter() - started)
    model.train(was_training)
    return statistics.median(times)


def merged_copy(model: torch.nn.Module) -> torch.nn.Module:
    """A copy of the model with its adapter folded into the weights (raises where it cannot be merged)."""
    return copy.deepcopy(model).merge_and_unload()
