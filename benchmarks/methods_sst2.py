"""Every method on the bundled all-MiniLM-L6-v2 and SST-2, against full fine-tuning and LoRA, one run.

Each method trains one epoch over the 6,920 SST-2 training sentences (batch 32, its default learning
rate from ``peftkit.recipes.classification``) in a fresh subprocess, so that the process's peak memory
(VmHWM) belongs to that method alone, and is scored on the 872-sentence dev set. Printed: trainable
parameters (count, % of the model), dev accuracy, median time per training step and peak memory,
the last two also as ratios to full fine-tuning and to LoRA from the same run.

Usage: python benchmarks/methods_sst2.py [--methods full,lora,adapter,...] [--epochs 1]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

METHODS = ["full", "lora", "qlora", "meft", "adapter", "ia3", "bitfit", "ln", "prompt", "ptuning", "prefix"]
RESULTS = Path(__file__).parent / "results" / "methods_sst2.json"


def worker(method: str, epochs: float) -> dict:
    import torch

    from peftkit.recipes.classification import train_classifier
    from peftkit.recipes.training import TrainOptions

    torch.set_num_threads(2)
    with tempfile.TemporaryDirectory() as output:
        result = train_classifier(TrainOptions(method=method, epochs=epochs, output=output))
    return {"method": method, "trainable": result.trainable_parameters, "total": result.total_parameters,
            "accuracy": result.accuracy, "step_seconds": statistics.median(result.step_seconds),
            "peak_mib": result.peak_memory_mib, "train_seconds": result.train_seconds}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--methods", default=",".join(METHODS))
    parser.add_argument("--epochs", type=float, default=1.0)
    parser.add_argument("--worker")
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(worker(args.worker, args.epochs)))
        return

    rows = {}
    for method in args.methods.split(","):
        done = subprocess.run([sys.executable, __file__, "--worker", method, "--epochs", str(args.epochs)],
                              capture_output=True, text=True)
        if done.returncode != 0:
            print(f"{method}: failed: {done.stderr.strip().splitlines()[-1]}", file=sys.stderr)
            continue
        rows[method] = json.loads(done.stdout.strip().splitlines()[-1])
        print(f"{method}: accuracy {rows[method]['accuracy']:.4f}", file=sys.stderr)

    full, lora = rows.get("full"), rows.get("lora")
    print(f"SST-2 dev accuracy after {args.epochs:g} epoch(s), all-MiniLM-L6-v2, batch 32, 2 threads")
    print("| method | trainable | % | dev acc | s/step | × full | × LoRA | peak MiB | × full | × LoRA |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for method, row in rows.items():
        def ratio(reference, key, row=row):
            return f"{row[key] / reference[key]:.2f}" if reference else "-"
        print(f"| {method} | {row['trainable']:,} | {100 * row['trainable'] / row['total']:.3f} | "
              f"{row['accuracy']:.4f} | {row['step_seconds']:.3f} | {ratio(full, 'step_seconds')} | "
              f"{ratio(lora, 'step_seconds')} | {row['peak_mib']:,.0f} | {ratio(full, 'peak_mib')} | "
              f"{ratio(lora, 'peak_mib')} |")
    RESULTS.parent.mkdir(exist_ok=True)
    RESULTS.write_text(json.dumps({"epochs": args.epochs, "rows": rows, "python": platform.python_version()},
                                  indent=2))
    print(f"raw measurements: {RESULTS}")


if __name__ == "__main__":
    main()
