"""Meta re-weighting of pseudo-labelled examples by one virtual gradient step (as in LiST).

Ren et al., 2018, "Learning to Reweight Examples for Robust Deep Learning"; used by Wang et al., 2022
(LiST) for self-training. For a batch of pseudo-labelled examples with losses ℓᵢ(θ) and weights εᵢ = 0:

    θ'(ε) = θ − α ∇θ Σᵢ εᵢ ℓᵢ(θ)                 (one virtual SGD step)
    wᵢ = max(−∂ L_labelled(θ'(ε)) / ∂εᵢ |_{ε=0}, 0)  (= α · max(∇θ L_labelled(θ) · ∇θ ℓᵢ(θ), 0))
    wᵢ ← wᵢ / Σⱼ wⱼ                              (all zero: all zero, the batch is skipped)

An example whose gradient agrees with the labelled set's gets weight; one that would raise the labelled
loss gets none. Only the trainable parameters take the virtual step.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn
from torch.func import functional_call


def meta_weights(model: nn.Module, pseudo_losses: Callable[[nn.Module], torch.Tensor],
                 labelled_loss: Callable[[nn.Module], torch.Tensor], step_size: float = 1.0) -> torch.Tensor:
    """Normalised non-negative weights, one per pseudo-labelled example.

    ``pseudo_losses(m)`` returns the per-example losses (a vector) of the pseudo-labelled batch under
    module ``m``; ``labelled_loss(m)`` the mean loss of a labelled batch. ``m`` is ``model`` or a view of it
    with the virtually stepped parameters.
    """
    params = {name: p for name, p in model.named_parameters() if p.requires_grad}
    losses = pseudo_losses(model)
    epsilon = torch.zeros(losses.shape[0], device=losses.device, requires_grad=True)
    grads = torch.autograd.grad((epsilon * losses).sum(), list(params.values()), create_graph=True)
    stepped = {name: p - step_size * g for (name, p), g in zip(params.items(), grads, strict=True)}
    virtual = _Stepped(model, stepped)
    (epsilon_grad,) = torch.autograd.grad(labelled_loss(virtual), epsilon)
    weights = torch.clamp(-epsilon_grad.detach(), min=0)
    total = weights.sum()
    return weights / total if total > 0 else weights


class _Stepped(nn.Module):
    """``model`` called with some of its parameters replaced (``torch.func.functional_call``)."""

    def __init__(self, model: nn.Module, parameters: dict[str, torch.Tensor]) -> None:
        super().__init__()
        self.inner, self.replaced = model, parameters

    def forward(self, *args, **kwargs):
        return functional_call(self.inner, self.replaced, args, kwargs, strict=False)
