"""LoRA training step: peftkit against Hugging Face peft, same model, same batch, one run.

Models: the bundled all-MiniLM-L6-v2 with a classification head (batch: 32 SST-2 sentences padded to
128 tokens; the head trained whole), or with ``--lm`` SmolLM2-135M-Instruct as a causal LM (batch 8 × 128,
next-token loss on the same sentences). LoRA r=8, alpha=16 on every linear layer, lora_dropout 0 (or
--dropout); the models' own dropout as configured (MiniLM: 0.1 on hidden states and attention). peftkit
runs with its default lean training (``peftkit.core.mechanics.lean``). Reported, each as a peftkit / peft ratio:

* step time (forward, backward, AdamW step): median over interleaved rounds in this process;
* peak memory: growth of the peak RSS (VmHWM, reset after set-up) over the training steps, in a
  fresh subprocess per implementation (alternating, several times; glibc's mmap threshold fixed, see
  ``peftkit.utils.memory.FIXED_MMAP_THRESHOLD``), median;
* activation memory: bytes autograd saves for backward in one forward pass (exact, deterministic).

Usage: python benchmarks/lora_vs_peft.py [--lm] [--dropout 0] [--rounds 12] [--steps 3] [--memory-runs 3]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

from provenance import provenance

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402
from transformers import logging  # noqa: E402

from peftkit.utils.memory import (  # noqa: E402
    FIXED_MMAP_THRESHOLD,
    SavedForBackward,
    peak_rss_mib,
    reset_peak_rss,
    rss_mib,
)

logging.set_verbosity_error()
logging.disable_progress_bar()

LENGTH = 128
BATCH = {"minilm": 32, "smollm2": 8}
SETTINGS = {"r": 8, "lora_alpha": 16, "target_modules": "all-linear"}
TASK_TYPE = {"minilm": "SEQ_CLS", "smollm2": "CAUSAL_LM"}
RESULTS = Path(__file__).parent / "results"


def build(implementation: str, dropout: float, model_name: str):
    from peftkit.core.pretrained import bundled_model_dir, load_causal_lm, load_sequence_classifier, smollm2_dir
    from peftkit.tasks.classification import bundled_sst2
    from peftkit.tasks.data import read_rows

    torch.manual_seed(0)
    if model_name == "smollm2":
        tokenizer, model = load_causal_lm(smollm2_dir())
    else:
        tokenizer, model = load_sequence_classifier(bundled_model_dir(), ["negative", "positive"])
    settings = {**SETTINGS, "task_type": TASK_TYPE[model_name], "lora_dropout": dropout}
    if implementation == "peft":
        import peft

        model = peft.get_peft_model(model, peft.LoraConfig(**settings))
    else:
        import peftkit

        model = peftkit.get_peft_model(model, peftkit.LoraConfig(**settings))
    rows = read_rows(bundled_sst2("train"))[: BATCH[model_name]]
    batch = dict(tokenizer([r["text"] for r in rows], padding="max_length", truncation=True, max_length=LENGTH,
                           return_tensors="pt"))
    if model_name == "smollm2":
        batch["labels"] = batch["input_ids"].masked_fill(batch["attention_mask"] == 0, -100)
    else:
        batch["labels"] = torch.tensor([int(r["label"] == "positive") for r in rows])
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    model.train()
    return model, batch, optimizer


def step(model, batch, optimizer) -> None:
    model(**batch).loss.backward()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)


def saved_for_backward_bytes(model, batch) -> int:
    with SavedForBackward() as saved:
        loss = model(**batch).loss
    loss.backward()
    model.zero_grad(set_to_none=True)
    return saved.bytes


def memory_worker(implementation: str, steps: int, dropout: float, model_name: str) -> dict:
    """Run in a fresh process: peak RSS growth over the training steps."""
    torch.set_num_threads(2)
    model, batch, optimizer = build(implementation, dropout, model_name)
    before = rss_mib()
    reset_peak_rss()
    for _ in range(steps):
        step(model, batch, optimizer)
    return {"peak_growth_mib": peak_rss_mib() - before}


def median_ratio(ours: list[float], theirs: list[float]) -> float:
    return statistics.median(ours) / statistics.median(theirs)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--lm", action="store_true", help="SmolLM2-135M-Instruct instead of MiniLM")
    parser.add_argument("--rounds", type=int, default=12)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--memory-runs", type=int, default=3)
    parser.add_argument("--dropout", type=float, default=0.0, help="lora_dropout (peft's default, 0)")
    parser.add_argument("--worker", choices=["peft", "peftkit"])
    args = parser.parse_args()
    model_name = "smollm2" if args.lm else "minilm"
    if args.worker:
        print(json.dumps(memory_worker(args.worker, args.steps, args.dropout, model_name)))
        return

    torch.set_num_threads(2)
    implementations = ["peft", "peftkit"]
    setups = {name: build(name, args.dropout, model_name) for name in implementations}
    for name in implementations:  # warm-up
        step(*setups[name])
    times: dict[str, list[float]] = {name: [] for name in implementations}
    for round_number in range(args.rounds):
        for name in implementations[:: 1 if round_number % 2 == 0 else -1]:  # alternate who goes first
            for _ in range(args.steps):
                started = time.perf_counter()
                step(*setups[name])
                times[name].append(time.perf_counter() - started)
    saved = {name: saved_for_backward_bytes(*setups[name][:2]) for name in implementations}
    trainable = {name: sum(p.numel() for p in setups[name][0].parameters() if p.requires_grad)
                 for name in implementations}
    del setups

    memory: dict[str, list[float]] = {name: [] for name in implementations}
    for _ in range(args.memory_runs):
        for name in implementations:
            output = subprocess.run([sys.executable, __file__, "--worker", name, "--steps", str(args.steps),
                                     "--dropout", str(args.dropout)] + (["--lm"] if args.lm else []),
                                    capture_output=True, text=True, check=True,
                                    env={**os.environ, **FIXED_MMAP_THRESHOLD})
            memory[name].append(json.loads(output.stdout.strip().splitlines()[-1])["peak_growth_mib"])

    rows = [
        ("step time (s, median)", statistics.median(times["peftkit"]), statistics.median(times["peft"])),
        ("peak memory growth (MiB, median)", statistics.median(memory["peftkit"]), statistics.median(memory["peft"])),
        ("saved for backward (MiB)", saved["peftkit"] / 2**20, saved["peft"] / 2**20),
        ("trainable parameters", trainable["peftkit"], trainable["peft"]),
    ]
    label = "SmolLM2-135M-Instruct" if args.lm else "MiniLM-L6 + head"
    print(f"LoRA r=8 all-linear, lora_dropout {args.dropout}, {label}, batch {BATCH[model_name]}x{LENGTH}, "
          f"{torch.get_num_threads()} threads, {args.rounds}x{args.steps} timed steps each")
    print(f"{'measure':<34} {'peftkit':>12} {'peft':>12} {'peftkit/peft':>13}")
    for measure, ours, theirs in rows:
        print(f"{measure:<34} {ours:>12.4g} {theirs:>12.4g} {ours / theirs:>13.3f}")
    RESULTS.mkdir(exist_ok=True)
    path = RESULTS / f"lora_vs_peft_{model_name}_dropout{args.dropout:g}.json"
    path.write_text(json.dumps({
        **provenance(), "model": label, "settings": {**SETTINGS, "lora_dropout": args.dropout},
        "batch": [BATCH[model_name], LENGTH],
        "step_seconds": times, "peak_growth_mib": memory,
        "saved_for_backward_bytes": saved, "trainable_parameters": trainable,
        "environment": {"torch": torch.__version__, "python": platform.python_version(),
                        "threads": torch.get_num_threads(), "machine": platform.machine()},
    }, indent=2))
    print(f"raw measurements: {path}")


if __name__ == "__main__":
    main()
