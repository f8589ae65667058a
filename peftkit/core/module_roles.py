"""The role of each projection in a transformer, read from the module structure, for default targets on a model
family no table names: attention query / key / value / output projections and feed-forward input / output
projections.

A projection is a Linear or GPT-2 Conv1D. Its role comes from its own name and its block: a projection inside a
block whose path names attention (``attn``, ``attention``) anywhere is an attention projection, one inside a
feed-forward block (``mlp``, ``ffn``, ``feed_forward``, ``intermediate``, ``output``, ``DenseReluDense``, ``experts``) a
feed-forward one; within the block the name says which (``q_proj``, ``query``, ``q`` … ``down_proj``, ``fc2``,
``wo`` …). Multi-head latent attention (DeepSeek-V2/V3) computes the query from ``q_b_proj`` (or ``q_proj``) and keys
and values from ``kv_b_proj``; fused projections (``c_attn``, ``query_key_value``, ``qkv_proj``) hold query, key and
value. Checked against the hand-made tables on the families they name (tests).
"""

from __future__ import annotations

import re

from torch import nn
from transformers.pytorch_utils import Conv1D

from peftkit.core.module_names import output_heads, unwrapped

ROLES = ("query", "key", "value", "attention_output", "mlp_input", "mlp_output")
_ATTENTION_BLOCK = re.compile(r"attn|attention", re.IGNORECASE)
_FEED_FORWARD_BLOCK = re.compile(r"mlp|ffn|feed_?forward|intermediate|^output$|densereludense|experts", re.IGNORECASE)
_ATTENTION_NAMES = {
    "query": r"q|query|q_proj|q_lin|q_b_proj|wq|to_q|c_attn|query_key_value|qkv|qkv_proj|wqkv",
    "key": r"k|key|k_proj|k_lin|wk|to_k|kv_b_proj|c_attn|query_key_value|qkv|qkv_proj|wqkv",
    "value": r"v|value|v_proj|v_lin|wv|to_v|kv_b_proj|c_attn|query_key_value|qkv|qkv_proj|wqkv",
    "attention_output": r"o|o_proj|out_proj|out_lin|wo|c_proj|dense|to_out",
}
_FEED_FORWARD_NAMES = {
    "mlp_input": r"up_proj|gate_proj|gate_up_proj|fc1|c_fc|wi|wi_0|wi_1|w1|w3|dense_h_to_4h|dense|lin1",
    "mlp_output": r"down_proj|fc2|c_proj|wo|w2|dense_4h_to_h|dense|lin2",
}


def _block_kind(parents: list[str]) -> str | None:
    """"attention" when the path names attention anywhere (BERT's attention.output.dense), else "feed_forward" when
    it names a feed-forward block, else None."""
    if any(_ATTENTION_BLOCK.search(part) for part in parents):
        return "attention"
    if any(_FEED_FORWARD_BLOCK.search(part) for part in parents):
        return "feed_forward"
    return None


def _feed_forward_role(name: str, parents: list[str]) -> str | None:
    leaf = name.rsplit(".", 1)[-1]
    if leaf == "dense":  # BERT-style: intermediate.dense is the input, output.dense the output
        return "mlp_input" if parents and parents[-1] == "intermediate" else "mlp_output"
    for role, pattern in _FEED_FORWARD_NAMES.items():
        if re.fullmatch(pattern, leaf):
            return role
    return None


def module_roles(model: nn.Module) -> dict[str, list[str]]:
    """Role → the names of the projections that play it, in the model's order (a fused projection under several)."""
    roles: dict[str, list[str]] = {role: [] for role in ROLES}
    heads = output_heads(model)
    seen = set()
    for name, module in model.named_modules():
        name = name.replace(".base_layer", "")  # as the model's own path, inside a block an adapter wraps
        if not isinstance(unwrapped(module), (nn.Linear, Conv1D)) or name in heads or name in seen:
            continue
        seen.add(name)
        parents = name.split(".")[:-1]
        leaf = name.rsplit(".", 1)[-1]
        kind = _block_kind(parents)
        if kind == "attention":
            for role, pattern in _ATTENTION_NAMES.items():
                if re.fullmatch(pattern, leaf):
                    roles[role].append(name)
        elif kind == "feed_forward":
            role = _feed_forward_role(name, parents)
            if role is not None:
                roles[role].append(name)
    return roles


def role_targets(model: nn.Module, wanted: tuple[str, ...]) -> list[str]:
    """The projections playing any of the ``wanted`` roles, each once, in the model's order."""
    roles = module_roles(model)
    return in_model_order(model, [name for role in wanted for name in roles[role]])


def in_model_order(model: nn.Module, names: list[str]) -> list[str]:
    """``names`` (module paths) each once, in the order of ``model.named_modules()``."""
    found = set(names)
    return [name for name, _ in model.named_modules() if name in found]


def sublayers(model: nn.Module) -> dict[str, list[str]]:
    """The sub-layers of each transformer block, as modules with the block's input and output before the residual:
    "attention" (the module holding each attention output projection, e.g. ``self_attn``) and "feed_forward" (the
    outermost feed-forward module above each feed-forward output projection: ``mlp``, or a mixture-of-experts
    block's ``mlp`` around its experts)."""
    roles = module_roles(model)
    attention = [name.rpartition(".")[0] for name in roles["attention_output"]]
    feed_forward = []
    for name in roles["mlp_output"]:
        parts = name.split(".")[:-1]
        while len(parts) > 1 and _FEED_FORWARD_BLOCK.search(parts[-2]):
            parts.pop()
        feed_forward.append(".".join(parts))
    return {"attention": in_model_order(model, attention), "feed_forward": in_model_order(model, feed_forward)}
