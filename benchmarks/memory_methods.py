"""Training-step memory and time of MEFT, QLoRA and LoRA against full fine-tuning, in one run.

For each setup a fresh subprocess builds the model, runs ``--warmup`` training steps (AdamW), then
measures over ``--steps`` more: the bytes saved for backward by one step (activations; parameters
excluded), the growth of the process's peak resident memory over the training steps from its memory before the first
one (activations, gradients, optimizer state; large blocks returned to the OS when freed, see
``peftkit.utils.memory.FIXED_MMAP_THRESHOLD``), and the median step time. Also printed: the stored size of the quantised
linear weights for QLoRA. Ratios are to full fine-tuning, to LoRA on the plain path (``lora-plain``:
``lean_training=False``, what peft's LoRA keeps) and to peftkit's default lean LoRA, all in the same run.

Models: the bundled all-MiniLM-L6-v2 (sequence classification, batch 32 × 128 real SST-2 tokens by
default) and SmolLM2-135M-Instruct (causal LM, ``--lm``; batch 4 × 128).

Usage: python benchmarks/memory_methods.py [--lm] [--setups full,lora-plain,lora,qlora,meft1,meft2,meft3] [--steps 5]
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

from peftkit.utils.memory import FIXED_MMAP_THRESHOLD  # noqa: E402

SETUPS = ["full", "lora-plain", "lora", "qlora", "meft1", "meft2", "meft3"]
RESULTS = Path(__file__).parent / "results"


def build(setup: str, lm: bool, batch: int, length: int):
    import torch
    from transformers import AutoTokenizer

    import peftkit
    from peftkit.core.pretrained import bundled_model_dir, load_causal_lm, load_sequence_classifier, smollm2_dir
    from peftkit.core.registry import method_by_name
    from peftkit.tasks.classification import bundled_sst2
    from peftkit.tasks.data import read_rows

    if lm:
        tokenizer, model = load_causal_lm(smollm2_dir())
        task_type = "CAUSAL_LM"
    else:
        tokenizer, model = load_sequence_classifier(bundled_model_dir(), ["negative", "positive"])
        tokenizer = AutoTokenizer.from_pretrained(bundled_model_dir())
        task_type = "SEQ_CLS"
    rows = read_rows(bundled_sst2("train"))
    text = " ".join(r["text"] for r in rows[:2000])
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    input_ids = torch.tensor(ids[: batch * length]).view(batch, length)
    inputs = {"input_ids": input_ids, "attention_mask": torch.ones_like(input_ids)}
    positive = [r["label"] == "positive" for r in rows[:batch]]
    inputs["labels"] = input_ids.clone() if lm else torch.tensor(positive).long()
    report = None
    if setup == "qlora":
        report = peftkit.quantize_nf4(model)
    if setup in ("lora", "lora-plain", "qlora"):
        config = peftkit.LoraConfig(task_type=task_type, **method_by_name("lora").train_defaults)
        model = peftkit.get_peft_model(model, config, lean_training=setup != "lora-plain")
    elif setup.startswith("meft"):
        model = peftkit.get_peft_model(model, peftkit.MeftConfig(task_type=task_type, variant=int(setup[-1])))
    model.train()
    return model, inputs, report


def saved_activation_bytes(model, inputs) -> int:
    from peftkit.utils.memory import SavedForBackward

    with SavedForBackward(skip=model.parameters()) as saved:
        loss = model(**inputs).loss
    loss.backward()
    model.zero_grad(set_to_none=True)
    return saved.bytes


def worker(setup: str, lm: bool, batch: int, length: int, warmup: int, steps: int) -> dict:
    import torch

    from peftkit.utils.memory import peak_rss_mib, reset_peak_rss, rss_mib

    torch.set_num_threads(2)
    torch.manual_seed(0)
    model, inputs, report = build(setup, lm, batch, length)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-5)
    before = rss_mib()  # nothing trained yet: the peak's growth is activations, gradients and optimizer state
    reset_peak_rss()
    times = []
    for step in range(warmup + steps):
        started = time.perf_counter()
        model(**inputs).loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if step >= warmup:
            times.append(time.perf_counter() - started)
    peak_growth = peak_rss_mib() - before
    saved = saved_activation_bytes(model, inputs)
    return {"setup": setup, "saved_mib": saved / 2**20, "peak_growth_mib": peak_growth,
            "step_seconds": statistics.median(times),
            "trainable": sum(p.numel() for p in model.parameters() if p.requires_grad),
            "linear_weight_ratio": report.ratio if report else None}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--setups", default=",".join(SETUPS))
    parser.add_argument("--lm", action="store_true", help="SmolLM2-135M-Instruct instead of MiniLM")
    parser.add_argument("--batch", type=int)
    parser.add_argument("--length", type=int, default=128)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--worker")
    args = parser.parse_args()
    batch = args.batch or (4 if args.lm else 32)
    if args.worker:
        print(json.dumps(worker(args.worker, args.lm, batch, args.length, args.warmup, args.steps)))
        return
    rows = {}
    for setup in args.setups.split(","):
        command = [sys.executable, __file__, "--worker", setup, "--batch", str(batch), "--length", str(args.length),
                   "--warmup", str(args.warmup), "--steps", str(args.steps)] + (["--lm"] if args.lm else [])
        done = subprocess.run(command, capture_output=True, text=True, env={**os.environ, **FIXED_MMAP_THRESHOLD})
        if done.returncode != 0:
            print(f"{setup}: failed: {done.stderr.strip().splitlines()[-1]}", file=sys.stderr)
            continue
        rows[setup] = json.loads(done.stdout.strip().splitlines()[-1])
    name = "SmolLM2-135M-Instruct" if args.lm else "all-MiniLM-L6-v2"
    print(f"{name}, batch {batch} x {args.length}, float32, 2 threads; median of {args.steps} steps")
    references = {"full": rows.get("full"), "plain LoRA": rows.get("lora-plain"), "LoRA": rows.get("lora")}
    measures = [("saved_mib", "saved for backward MiB", ".1f"), ("peak_growth_mib", "peak growth MiB", ".0f"),
                ("step_seconds", "s/step", ".3f")]
    header = ["setup", "trainable"]
    for _, label, _ in measures:
        header += [label] + [f"x {name}" for name in references]
    print("| " + " | ".join(header + ["NF4 / fp32 linear weights"]) + " |")
    print("|" + "---|" * (len(header) + 1))
    for setup, row in rows.items():
        cells = [setup, f"{row['trainable']:,}"]
        for key, _, form in measures:
            cells.append(format(row[key], form))
            cells += [f"{row[key] / ref[key]:.2f}" if ref else "-" for ref in references.values()]
        cells.append(f"{row['linear_weight_ratio']:.3f}" if row["linear_weight_ratio"] else "-")
        print("| " + " | ".join(cells) + " |")
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / f"memory_methods{'_lm' if args.lm else ''}.json").write_text(
        json.dumps({**provenance(), "setups": rows}, indent=2))


if __name__ == "__main__":
    main()
