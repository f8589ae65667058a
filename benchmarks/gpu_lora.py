"""LoRA training throughput and memory on a GPU: peftkit vs peft (its default and its best configuration) vs
full fine-tuning, and peftkit's memory modes.

A TinyLlama-shaped Llama config (1.1B parameters, 22 layers, hidden 2048, random weights) in bfloat16,
batch 4 × 2048 tokens, LoRA r = 16 on all seven linear projections, AdamW. Setups:

* ``full``: full fine-tuning;
* ``peft``: peft's default (its adapters kept in float32 under the bf16 model);
* ``peft-bf16``: peft's best configuration for speed, adapters in bfloat16 (``autocast_adapter_dtype=False``);
* ``peft-bf16-ckpt``: the same with gradient checkpointing (non-reentrant), peft's best for memory;
* ``peftkit``: peftkit's LoRA (bf16 adapters, lean training), fused AdamW;
* ``peftkit-ckpt``: the same with gradient checkpointing (non-reentrant): peftkit's memory mode;
* ``qlora``: peftkit's LoRA on an NF4 base.

Each setup runs in a fresh subprocess (so ``torch.cuda.max_memory_allocated`` is its own): ``--warmup`` steps,
then the median step time over ``--steps``. Printed per setup: tokens/s, peak allocated GiB, the ratios to
peft's default and to peft's best (``peft-bf16``; for the checkpointing setups ``peft-bf16-ckpt``), and PEFT-MFU =
tokens/s × (4P + 3A + 6R) / the measured bf16 matmul peak, where P is the frozen matmul parameters, A the
attention FLOPs per token (per layer 2·T·d for QKᵀ and for PV, T the sequence) and R the adapter parameters (full
fine-tuning: 6P + 3A). Written to ``results/gpu_lora.json``.

``--tiny`` runs a small config on CPU in float32, to check the script without a GPU (nothing written).

Usage: python benchmarks/gpu_lora.py [--setups full,peft,peft-bf16,peft-bf16-ckpt,peftkit,peftkit-ckpt,qlora]
       [--tiny]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

from provenance import provenance

os.environ.setdefault("HF_HUB_OFFLINE", "1")

RESULTS = Path(__file__).parent / "results"
SETUPS = ["full", "peft", "peft-bf16", "peft-bf16-ckpt", "peftkit", "peftkit-ckpt", "qlora"]
PROJECTIONS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
TINYLLAMA = {"hidden_size": 2048, "intermediate_size": 5632, "num_hidden_layers": 22, "num_attention_heads": 32,
             "num_key_value_heads": 4, "vocab_size": 32000, "max_position_embeddings": 2048}
TINY = {"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2, "num_attention_heads": 4,
        "num_key_value_heads": 2, "vocab_size": 256, "max_position_embeddings": 64}


def build(setup: str, tiny: bool):
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    device = "cpu" if tiny else "cuda"
    dtype = torch.float32 if tiny else torch.bfloat16
    torch.manual_seed(0)
    config = LlamaConfig(**(TINY if tiny else TINYLLAMA), attn_implementation="sdpa")
    with torch.device(device):
        model = LlamaForCausalLM(config).to(dtype)
    if setup.endswith("-ckpt"):
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    if setup.startswith("peft-") or setup == "peft":
        from peft import LoraConfig as PeftLoraConfig
        from peft import get_peft_model as peft_get_peft_model

        model = peft_get_peft_model(model, PeftLoraConfig(r=16, lora_alpha=32, target_modules=PROJECTIONS),
                                    autocast_adapter_dtype=setup == "peft")
    elif setup != "full":
        import peftkit

        if setup == "qlora":
            peftkit.quantize_nf4(model)
        model = peftkit.get_peft_model(model, peftkit.LoraConfig(r=16, lora_alpha=32, target_modules=PROJECTIONS))
    return model.train(), device


def reference_for(setup: str) -> str:
    """The peft setup a peftkit setup is held to: peft's best configuration of the same kind."""
    return "peft-bf16-ckpt" if setup.endswith("-ckpt") else "peft-bf16"


def matmul_peak_flops(device: str, dtype) -> float:
    import torch

    size = 512 if device == "cpu" else 8192
    a = torch.randn(size, size, device=device, dtype=dtype)
    b = torch.randn(size, size, device=device, dtype=dtype)
    for _ in range(3):
        a @ b
    if device == "cuda":
        torch.cuda.synchronize()
    started, repeats = time.perf_counter(), 5 if device == "cpu" else 50
    for _ in range(repeats):
        a @ b
    if device == "cuda":
        torch.cuda.synchronize()
    return 2 * size**3 * repeats / (time.perf_counter() - started)


def worker(setup: str, tiny: bool, batch: int, length: int, warmup: int, steps: int) -> dict:
    import torch

    model, device = build(setup, tiny)
    config = model.config
    input_ids = torch.randint(0, config.vocab_size, (batch, length), device=device)
    fused = setup not in ("full", "peft") and not setup.startswith("peft-")  # peftkit's optimizer: fused AdamW
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-5, fused=fused or None)
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    times = []
    for step in range(warmup + steps):
        if device == "cuda":
            torch.cuda.synchronize()
        started = time.perf_counter()
        model(input_ids=input_ids, labels=input_ids).loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if device == "cuda":
            torch.cuda.synchronize()
        if step >= warmup:
            times.append(time.perf_counter() - started)
    layers, hidden = config.num_hidden_layers, config.hidden_size
    frozen = sum(m.weight.numel() for n, m in model.named_modules()
                 if isinstance(m, torch.nn.Linear) and "lora" not in n and m.weight.dim() == 2)
    adapter = sum(p.numel() for p in model.parameters() if p.requires_grad) if setup != "full" else 0
    attention = layers * 2 * 2 * length * hidden  # QKᵀ and PV, forward, per token
    flops_per_token = (6 * frozen + 3 * attention) if setup == "full" else (4 * frozen + 3 * attention + 6 * adapter)
    tokens_per_second = batch * length / statistics.median(times)
    peak = torch.cuda.max_memory_allocated() / 2**30 if device == "cuda" else float("nan")
    dtype = torch.float32 if tiny else torch.bfloat16
    return {"setup": setup, "tokens_per_second": tokens_per_second, "peak_gib": peak,
            "mfu": tokens_per_second * flops_per_token / matmul_peak_flops(device, dtype)}


def ratio(row: dict, reference: dict | None, measure: str) -> str:
    return f"{row[measure] / reference[measure]:.2f}" if reference else "-"


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--setups", default=",".join(SETUPS))
    parser.add_argument("--tiny", action="store_true", help="a small config on CPU, to check the script")
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--length", type=int, default=2048)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--worker")
    args = parser.parse_args()
    length = min(args.length, 64) if args.tiny else args.length
    if args.worker:
        print(json.dumps(worker(args.worker, args.tiny, args.batch, length, args.warmup, args.steps)))
        return
    rows = {}
    for setup in args.setups.split(","):
        command = [sys.executable, __file__, "--worker", setup, "--batch", str(args.batch), "--length", str(length),
                   "--warmup", str(args.warmup), "--steps", str(args.steps)] + (["--tiny"] if args.tiny else [])
        done = subprocess.run(command, capture_output=True, text=True)
        if done.returncode != 0:
            print(f"{setup}: failed: {done.stderr.strip().splitlines()[-1]}", file=sys.stderr)
            continue
        rows[setup] = json.loads(done.stdout.strip().splitlines()[-1])
        print(f"{setup}: {json.dumps(rows[setup])}", flush=True)
    print(f"{'tiny CPU check' if args.tiny else 'TinyLlama-shaped 1.1B, bf16'}, batch {args.batch} x {length}, "
          f"LoRA r=16 on {len(PROJECTIONS)} projections, AdamW; median of {args.steps} steps")
    print("| setup | tokens/s | x peft default | x peft best | peak GiB | x peft default | x peft best | PEFT-MFU |")
    print("|---|---|---|---|---|---|---|---|")
    for setup, row in rows.items():
        ratios = [ratio(row, rows.get(name), measure) for measure in ("tokens_per_second", "peak_gib")
                  for name in ("peft", reference_for(setup))]
        print(f"| {setup} | {row['tokens_per_second']:,.0f} | {ratios[0]} | {ratios[1]} | {row['peak_gib']:.1f} | "
              f"{ratios[2]} | {ratios[3]} | {row['mfu']:.2f} |")
    print(json.dumps(rows))
    if not args.tiny:
        RESULTS.mkdir(exist_ok=True)
        (RESULTS / "gpu_lora.json").write_text(json.dumps({
            **provenance("cuda"), "settings": {"model": "TinyLlama-shaped 1.1B Llama (22 layers, hidden 2048), "
                                                        "random weights", "dtype": "bfloat16",
                                               "batch": [args.batch, length], "lora_r": 16,
                                               "projections": len(PROJECTIONS), "warmup": args.warmup,
                                               "steps": args.steps},
            "setups": rows}, indent=2) + "\n")


if __name__ == "__main__":
    main()
