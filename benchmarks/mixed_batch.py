"""Many LoRA adapters in one batch: peftkit against Hugging Face peft, same model and batch, one run.

A Llama-style config with random weights (hidden 512, 4 layers, 8 heads, feed-forward 1408, vocabulary
32,000), a batch of 32 × 128 random tokens, 8 LoRA adapters (r = 16, every linear projection, random A and B).
Both implementations get the same adapter weights (drawn per parameter name); peft keeps them in float32
under a bfloat16 model (its ``autocast_adapter_dtype``), peftkit in the model's dtype.
Timed (eval mode, no gradients, median over ``--rounds`` interleaved rounds): the plain model (base), the
batch through one unmerged adapter (single), and each row through its own adapter, 4 rows per adapter in
shuffled order (mixed, ``adapter_names=``; peftkit in each of its two forms, gathered and concatenated), for
peftkit and peft. Ratios mixed / single and single / base (of the medians), with the quartiles of the same
ratio taken within each round, to show the noise.
``--device cuda --dtype bfloat16 --tinyllama`` gives the GPU variant (1.1B TinyLlama shape, 32 × 256).

Usage: python benchmarks/mixed_batch.py [--rounds 7] [--threads 2]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import time
import zlib
from pathlib import Path

from provenance import provenance

os.environ.setdefault("HF_HUB_OFFLINE", "1")

SMALL = {"hidden_size": 512, "num_hidden_layers": 4, "num_attention_heads": 8, "num_key_value_heads": 8,
         "intermediate_size": 1408, "vocab_size": 32000}
TINYLLAMA = {"hidden_size": 2048, "intermediate_size": 5632, "num_hidden_layers": 22, "num_attention_heads": 32,
             "num_key_value_heads": 4, "vocab_size": 32000}
ADAPTERS = 8
FORMS = ("gathered", "concatenated")  # peftkit's two mixed-batch forms (peftkit/methods/lora/mixed.py)
RESULTS = Path(__file__).parent / "results"


def build(implementation: str, shape: dict, device: str, dtype):
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    with torch.device(device):  # built where it runs: a 1.1B model initialised on the CPU takes a minute
        base = LlamaForCausalLM(LlamaConfig(**shape, max_position_embeddings=512)).to(dtype).eval()
    if implementation == "base":
        return base
    if implementation == "peft":
        import peft as library
    else:
        import peftkit as library
    settings = {"r": 16, "lora_alpha": 32, "target_modules": "all-linear"}
    model = library.get_peft_model(base, library.LoraConfig(**settings), adapter_name="adapter0")
    for index in range(1, ADAPTERS):
        model.add_adapter(f"adapter{index}", library.LoraConfig(**settings))
    with torch.no_grad():  # the same A and B in both implementations, whatever their dtype and init
        for name, parameter in model.named_parameters():
            if "lora_" in name:
                key = name[name.index("layers."):]
                generator = torch.Generator().manual_seed(zlib.crc32(key.encode()))
                std = 0.01 if "lora_B" in name else parameter.shape[1] ** -0.5
                parameter.copy_(std * torch.randn(parameter.shape, generator=generator))
    model.set_adapter("adapter0")
    return model.eval()


def seconds(model, batch: dict, device: str, **kwargs) -> float:
    import torch

    with torch.no_grad():
        if device == "cuda":
            torch.cuda.synchronize()
        started = time.perf_counter()
        model(**batch, **kwargs)
        if device == "cuda":
            torch.cuda.synchronize()
    return time.perf_counter() - started


def timed(setup: tuple, batch: dict, device: str) -> float:
    """Seconds of one forward of a setup (model, keyword arguments, peftkit's mixed-batch form or None)."""
    from peftkit.methods.lora import mixed as lora_mixed

    model, kwargs, form = setup
    lora_mixed.FORM = form or "auto"
    return seconds(model, batch, device, **kwargs)


def round_ratio_quartiles(top: list[float], bottom: list[float]) -> tuple[float, float]:
    """The first and third quartiles of the ratio within each round: how far the noise moves a ratio."""
    ratios = [a / b for a, b in zip(top, bottom)]
    if len(ratios) < 2:
        return ratios[0], ratios[0]
    quartiles = statistics.quantiles(ratios, n=4)
    return quartiles[0], quartiles[2]


def main() -> None:
    import torch

    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="float32")
    parser.add_argument("--tinyllama", action="store_true")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--length", type=int, default=128)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    dtype = getattr(torch, args.dtype)
    shape = TINYLLAMA if args.tinyllama else SMALL
    models = {name: build(name, shape, args.device, dtype) for name in ("base", "peftkit", "peft")}
    batch = {"input_ids": torch.randint(0, shape["vocab_size"], (args.batch, args.length),
                                        generator=torch.Generator().manual_seed(2)).to(args.device)}
    names = [f"adapter{i % ADAPTERS}" for i in range(args.batch)]
    random.Random(3).shuffle(names)
    mixed = {"adapter_names": names}
    setups = {"base": (models["base"], {}, None), "peftkit single": (models["peftkit"], {}, None),
              **{f"peftkit mixed {form}": (models["peftkit"], mixed, form) for form in FORMS},
              "peft single": (models["peft"], {}, None), "peft mixed": (models["peft"], mixed, None)}
    with torch.no_grad():  # the mixed outputs agree between the two implementations
        ours = models["peftkit"](**batch, adapter_names=names).logits
        theirs = models["peft"](**batch, adapter_names=names).logits
    difference = (ours.float() - theirs.float()).abs().max().item()
    for setup in setups.values():  # warm-up
        timed(setup, batch, args.device)
    times = {name: [] for name in setups}
    for round_index in range(args.rounds):
        order = list(setups) if round_index % 2 == 0 else list(reversed(setups))
        for name in order:
            times[name].append(timed(setups[name], batch, args.device))
    median = {name: statistics.median(values) for name, values in times.items()}
    print(f"{args.batch} x {args.length} tokens, {ADAPTERS} LoRA adapters r=16 on all linear layers, "
          f"{args.device} {args.dtype}, {args.threads} threads; median of {args.rounds} rounds")
    for name, value in median.items():
        print(f"  {name:28s} {value * 1000:9.1f} ms")
    ratios, spreads = {}, {}
    for implementation in ("peftkit", "peft"):
        mixed_runs = [f"peftkit mixed {form}" for form in FORMS] if implementation == "peftkit" else ["peft mixed"]
        pairs = {**{f"{run.removeprefix(implementation + ' ')} / single": (run, f"{implementation} single")
                    for run in mixed_runs},
                 "single / base": (f"{implementation} single", "base")}
        ratios[implementation] = {key: median[top] / median[bottom] for key, (top, bottom) in pairs.items()}
        spreads[implementation] = {key: round_ratio_quartiles(times[top], times[bottom])
                                   for key, (top, bottom) in pairs.items()}
        print(f"  {implementation}: " + ", ".join(
            f"{key} {ratios[implementation][key]:.3f} (rounds' quartiles {low:.3f}-{high:.3f})"
            for key, (low, high) in spreads[implementation].items()))
    print(f"  largest difference of the mixed logits, peftkit vs peft: {difference:.2e}")
    RESULTS.mkdir(exist_ok=True)
    file = RESULTS / f"mixed_batch_{args.device}.json"
    file.write_text(json.dumps({"measured": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
                                **provenance(args.device), "settings": vars(args),
                                "shape": shape, "seconds": times, "median": median, "ratios": ratios,
                                "round_ratio_quartiles": spreads,
                                "max_logit_difference": difference}, indent=2))
    print(f"raw measurements: {file}")


if __name__ == "__main__":
    main()
