"""Training-time operations that keep less for backward than their plain PyTorch forms, with the same maths.

* ``dropped_positions``: dropout's mask from 16-bit random numbers, about four times cheaper on a CPU
  than ``bernoulli_``.
* ``MaskedDropout``: y = x ⊙ m / (1 − p), keeping the one-byte mask m, where CPU ``F.dropout`` keeps a
  float32 copy of the mask (four bytes per element) and spends most of its time in ``bernoulli_``.
* ``DroppedAttention``: o = dropout(softmax(q kᵀ · scale + mask)) v, keeping q, k, v, the probabilities P
  and a one-byte dropout mask. PyTorch's math attention (the one it uses when attention dropout is on)
  also keeps the dropped probabilities and a float32 mask, two more tensors as large as P. Backward:

      D = P ⊙ m / (1 − p)            (rebuilt from P and m)
      ∂v = Dᵀ ∂o,   ∂D = ∂o vᵀ,   ∂P = ∂D ⊙ m / (1 − p)
      ∂S = P ⊙ (∂P − Σⱼ ∂P ⊙ P),   ∂q = ∂S k · scale,   ∂k = ∂Sᵀ q · scale
"""

from __future__ import annotations

import torch


def dropped_positions(x: torch.Tensor, p: float) -> tuple[torch.Tensor, float]:
    """Which entries of x dropout zeroes, and the scale 1/(1 − p') for the rest.

    Each position is dropped with probability p' = round(p·2¹⁶)/2¹⁶ (|p' − p| < 8e-6), decided by a
    16-bit random number; one 64-bit draw of torch's generator gives four.
    """
    threshold = round(p * 65536)
    count = x.numel()
    bits = torch.randint(-(2**63), 2**63 - 1, ((count + 3) // 4,), dtype=torch.int64, device=x.device)
    draws = bits.view(torch.int16)[:count].view(x.shape)  # uniform on [-32768, 32767]
    return draws < threshold - 32768, 65536 / (65536 - threshold)


class MaskedDropout(torch.autograd.Function):
    """Dropout that keeps a one-byte mask for backward."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, p: float) -> torch.Tensor:
        dropped, keep_scale = dropped_positions(x, p)
        ctx.save_for_backward(dropped)
        ctx.keep_scale = keep_scale
        return x.mul(keep_scale).masked_fill_(dropped, 0)  # two passes; masked_fill would copy first

    @staticmethod
    def backward(ctx, grad_out):
        (dropped,) = ctx.saved_tensors
        return grad_out.mul(ctx.keep_scale).masked_fill_(dropped, 0), None


class DroppedAttention(torch.autograd.Function):
    """Scaled dot-product attention with dropout on the probabilities; see the module docstring.

    ``mask`` is None, additive (float) or boolean (True: the key takes part), broadcastable to
    (batch, heads, queries, keys).
    """

    @staticmethod
    def forward(ctx, query, key, value, mask, scale: float, p: float):
        scores = torch.matmul(query * scale, key.transpose(-1, -2))  # scaling the smaller operand
        if mask is not None:
            if mask.dtype == torch.bool:
                scores.masked_fill_(~mask, float("-inf"))
            else:
                scores.add_(mask)
        probs = torch.softmax(scores, dim=-1)
        del scores
        dropped, keep_scale = dropped_positions(probs, p)
        out = torch.matmul(torch.where(dropped, 0.0, probs), value).mul_(keep_scale)
        ctx.save_for_backward(query, key, value, probs, dropped)
        ctx.scale, ctx.keep_scale = scale, keep_scale
        return out

    @staticmethod
    def backward(ctx, grad_out):
        query, key, value, probs, dropped = ctx.saved_tensors
        grad_query = grad_key = grad_value = None
        grad_out = grad_out * ctx.keep_scale  # scalars go on the (batch, heads, T, d) tensors, not the T × T ones
        if ctx.needs_input_grad[2]:
            grad_value = torch.matmul(torch.where(dropped, 0.0, probs).transpose(-1, -2), grad_out)
        if ctx.needs_input_grad[0] or ctx.needs_input_grad[1]:
            grad_probs = torch.matmul(grad_out, value.transpose(-1, -2)).masked_fill_(dropped, 0)
            grad_scores = torch._softmax_backward_data(grad_probs, probs, -1, probs.dtype)
            del grad_probs
            if ctx.needs_input_grad[0]:
                grad_query = torch.matmul(grad_scores, key).mul_(ctx.scale)
            if ctx.needs_input_grad[1]:
                grad_key = torch.matmul(grad_scores.transpose(-1, -2), query).mul_(ctx.scale)
        return grad_query, grad_key, grad_value, None, None, None



def gated_product(activation, gate: torch.Tensor, up: torch.Tensor) -> torch.Tensor:
    """act(g) ⊙ u, the input of a gated MLP's down projection."""
    return activation(gate).mul_(up)


class GatedProduct(torch.autograd.Function):
    """y = act(g) ⊙ u (Llama-style gated MLPs), keeping g and u only; act(g) is recomputed in backward:
    ∂u = ∂y ⊙ act(g),  ∂g = act'(g) ⊙ (∂y ⊙ u)."""

    @staticmethod
    def forward(ctx, gate: torch.Tensor, up: torch.Tensor, activation):
        ctx.activation = activation
        ctx.save_for_backward(gate, up)
        return gated_product(activation, gate, up)

    @staticmethod
    def backward(ctx, grad_out):
        gate, up = ctx.saved_tensors
        with torch.enable_grad():
            gate = gate.detach().requires_grad_()
            activated = ctx.activation(gate)
        (grad_gate,) = torch.autograd.grad(activated, gate, grad_out * up)
        return grad_gate, grad_out * activated.detach(), None
