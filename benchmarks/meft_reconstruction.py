"""How far MEFT's rebuilt activations drift in float32, against the number of reversible layers.

The reversible backward rebuilds each layer's inputs from its outputs, dividing by λ and β; rounding
errors therefore grow by about 1/min(λ, β) per layer. For each variant and depth d, the bundled
all-MiniLM-L6-v2 (d ≤ 6 of its real layers) or a random-weight model of the same shape (d > 6) runs d
layers forward on real SST-2 sentences, then inverts them back down; printed is
max |rebuilt h₀ − h₀| / max |h₀| for float32 layers with float32 streams, float32 layers with float64
streams (``wide_streams``, the default) and, for comparison, everything in float64. Adapters get N(0, 0.02)
weights so that they act.

Usage: python benchmarks/meft_reconstruction.py
"""

from __future__ import annotations

import json
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch
from transformers import AutoModel, AutoTokenizer, BertModel  # noqa: I001

import peftkit  # first: it quiets torchao's import-time logging, which transformers triggers
from peftkit import MeftConfig
from peftkit.core.pretrained import bundled_model_dir
from peftkit.methods.meft import WIDER, MeftLayer, MeftStep
from peftkit.methods.reversible import coupled, inverted
from peftkit.tasks.classification import bundled_sst2
from peftkit.tasks.data import read_rows

DEPTHS = [1, 2, 4, 6, 12, 24]


def sentences(tokenizer, count=8, length=32) -> torch.Tensor:
    rows = read_rows(bundled_sst2("dev"))
    ids = [tokenizer(r["text"])["input_ids"] for r in rows]
    return torch.tensor([i[:length] for i in ids if len(i) >= length][:count])


def backbone(depth: int) -> BertModel:
    pretrained = AutoModel.from_pretrained(bundled_model_dir())
    if depth <= pretrained.config.num_hidden_layers:
        return pretrained
    torch.manual_seed(0)
    config = pretrained.config
    config.num_hidden_layers = depth
    model = BertModel(config)
    model.embeddings.load_state_dict(pretrained.embeddings.state_dict())
    return model


def relative_error(depth: int, variant: int, dtype: torch.dtype, wide: bool, input_ids: torch.Tensor) -> float:
    model = peftkit.get_peft_model(backbone(depth).to(dtype).eval(),
                                   MeftConfig(variant=variant, layers_to_transform=list(range(depth))))
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for parameter in model.parameters():
            if parameter.requires_grad:
                parameter.copy_(0.02 * torch.randn(parameter.shape, generator=generator))
        layers = [m for _, m in model.adapter_layers() if isinstance(m, MeftLayer)]
        coupling = layers[0].settings["default"].coupling()
        steps = [MeftStep(layer, "default", {"attention_mask": None}) for layer in layers[0].segments["default"]]
        start = model.base_model.embeddings(input_ids)
        if wide:
            start = start.to(WIDER[dtype])
        streams, states = (start, start), []
        for step in steps:
            states.append([])
            streams = coupled(step, coupling, *streams, states[-1])
        grads = tuple(torch.zeros_like(s) for s in streams)
        for step, layer_states in zip(reversed(steps), reversed(states), strict=True):
            streams, grads = inverted(step, coupling, layer_states, streams, grads, {})
    return max((s - start).abs().max().item() for s in streams) / start.abs().max().item()



def main() -> None:
    torch.set_num_threads(2)
    input_ids = sentences(AutoTokenizer.from_pretrained(bundled_model_dir()))
    results = {}
    print("MEFT: max |rebuilt h0 - h0| / max |h0| after inverting d layers (all-MiniLM-L6-v2 shape, "
          f"{tuple(input_ids.shape)} real SST-2 tokens; d > 6: random layers)")
    print("| variant | precision | " + " | ".join(f"d={d}" for d in DEPTHS) + " |")
    print("|---|---|" + "---|" * len(DEPTHS))
    for variant in (1, 2, 3):
        for dtype, wide, label in ((torch.float32, False, "float32"), (torch.float32, True, "float32, float64 streams"),
                                   (torch.float64, False, "float64")):
            row = [relative_error(d, variant, dtype, wide, input_ids) for d in DEPTHS]
            results[f"MEFT{variant} {label}"] = dict(zip(DEPTHS, row, strict=True))
            print(f"| MEFT{variant} | {label} | " + " | ".join(f"{e:.1e}" for e in row) + " |")
    print(json.dumps(results))


if __name__ == "__main__":
    main()
