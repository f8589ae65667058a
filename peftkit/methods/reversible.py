"""Reversible two-stream layers whose backward pass rebuilds activations instead of storing them.

One reversible layer maps two streams (x₁, x₂) to

    y₁ = λ·x₁ + F(x₂),        y₂ = β·x₂ + G(y₁)

and is inverted exactly by

    x₂ = (y₂ − G(y₁)) / β,    x₁ = (y₁ − F(x₂)) / λ.

With ``swap`` the layer hands (y₂, y₁) on to the next one. ``ReversibleSegment`` runs a stack of such
layers keeping only the last layer's outputs. Its backward walks the stack downwards: each layer's
inputs are rebuilt by the inverse, F and G are recomputed from them under the random-number state they
first ran with (so dropout draws the same masks), and the gradients go through that one recomputed
layer. Activation memory is therefore that of one layer, whatever the depth.

Gomez et al., 2017, "The Reversible Residual Network"; Liao, Tan & Monz, 2023, "Make Pre-trained Model
Reversible: From Parameter to Memory Efficient Fine-Tuning" (MEFT).
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Protocol

import torch


@dataclass(frozen=True)
class Coupling:
    lam: float  # λ, the weight of x₁ in y₁
    beta: float  # β, the weight of x₂ in y₂
    swap: bool  # hand (y₂, y₁) to the next layer


class Step(Protocol):
    """One reversible layer: its two functions, the trainable tensors they use, and a context in which its
    weights are at hand (gathered, for a layer sharded with FSDP)."""

    def F(self, x: torch.Tensor) -> torch.Tensor: ...

    def G(self, y: torch.Tensor) -> torch.Tensor: ...

    def trainable(self) -> list[torch.nn.Parameter]: ...

    def weights(self) -> contextlib.AbstractContextManager: ...


class RandomState:
    """The CPU (and, for a CUDA tensor, its device's) random state at one moment, to replay from."""

    def __init__(self, device: torch.device) -> None:
        self.cpu = torch.get_rng_state()
        self.device = device if device.type == "cuda" else None
        self.cuda = torch.cuda.get_rng_state(device) if self.device is not None else None

    @contextlib.contextmanager
    def replayed(self):
        devices = [self.device] if self.device is not None else []
        with torch.random.fork_rng(devices=devices, device_type="cuda"):
            torch.set_rng_state(self.cpu)
            if self.device is not None:
                torch.cuda.set_rng_state(self.cuda, self.device)
            yield


def coupled(step: Step, coupling: Coupling, x1: torch.Tensor, x2: torch.Tensor,
            states: list[RandomState] | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """One layer forward; ``states`` (when given) receives the random state before F and before G."""
    with step.weights():
        if states is not None:
            states.append(RandomState(x2.device))
        y1 = coupling.lam * x1 + step.F(x2)
        if states is not None:
            states.append(RandomState(y1.device))
        y2 = coupling.beta * x2 + step.G(y1)
    return (y2, y1) if coupling.swap else (y1, y2)


def _grads(output: torch.Tensor, wrt: torch.Tensor, params: list, grad_output: torch.Tensor):
    grads = torch.autograd.grad(output, [wrt, *params], grad_output, allow_unused=True)
    return grads[0] if grads[0] is not None else torch.zeros_like(wrt), grads[1:]


def inverted(step: Step, coupling: Coupling, states: list[RandomState], outputs, output_grads,
             param_grads: dict[int, torch.Tensor]):
    """One layer backward: its inputs rebuilt from ``outputs`` and the gradients for them; parameter
    gradients are added into ``param_grads`` (keyed by ``id``)."""
    (o1, o2), (d1, d2) = outputs, output_grads
    y1, y2, dy1, dy2 = (o2, o1, d2, d1) if coupling.swap else (o1, o2, d1, d2)
    params = step.trainable()
    state_f, state_g = states
    with step.weights(), torch.enable_grad():  # the weights at hand through both recomputations and gradients
        y1_leaf = y1.detach().requires_grad_()
        with state_g.replayed():
            g = step.G(y1_leaf)
        dy1_through_g, g_param_grads = _grads(g, y1_leaf, params, dy2)
        dy1 = dy1 + dy1_through_g
        x2_leaf = ((y2 - g.detach()) / coupling.beta).detach().requires_grad_()
        with state_f.replayed():
            f = step.F(x2_leaf)
        dx2_through_f, f_param_grads = _grads(f, x2_leaf, params, dy1)
    x1 = (y1 - f.detach()) / coupling.lam
    for param, *grads in zip(params, g_param_grads, f_param_grads, strict=True):
        for grad in grads:
            if grad is not None:
                key = id(param)
                param_grads[key] = grad if key not in param_grads else param_grads[key] + grad
    return (x1, x2_leaf.detach()), (coupling.lam * dy1, coupling.beta * dy2 + dx2_through_f)


class ReversibleSegment(torch.autograd.Function):
    """``apply(x1, x2, steps, coupling, *params)`` → the streams after ``steps``; saves only those.

    ``params`` are every trainable tensor the steps use (autograd routes their gradients through here).
    """

    @staticmethod
    def forward(ctx, x1, x2, steps: list[Step], coupling: Coupling, *params):
        states = []
        for step in steps:
            layer_states: list[RandomState] = []
            x1, x2 = coupled(step, coupling, x1, x2, layer_states)
            states.append(layer_states)
        ctx.steps, ctx.coupling, ctx.states, ctx.params = steps, coupling, states, params
        ctx.save_for_backward(x1, x2)
        return x1, x2

    @staticmethod
    def backward(ctx, d1, d2):
        outputs = ctx.saved_tensors
        grads = tuple(torch.zeros_like(o) if d is None else d for o, d in zip(outputs, (d1, d2), strict=True))
        param_grads: dict[int, torch.Tensor] = {}
        for step, states in zip(reversed(ctx.steps), reversed(ctx.states), strict=True):
            outputs, grads = inverted(step, ctx.coupling, states, outputs, grads, param_grads)
        return (*grads, None, None, *(param_grads.get(id(p)) for p in ctx.params))
