"""Every method on the bundled all-MiniLM-L6-v2 and SST-2, against full fine-tuning and LoRA, one run.

Each method trains one epoch over the 6,920 SST-2 training sentences (batch 32, its default learning
rate from ``peftkit.recipes.classification``) in a fresh subprocess, so that the process's peak memory
(VmHWM) belongs to that method alone, and is scored on the 872-sentence dev set. Printed: trainable
parameters (count, % of the model), dev accuracy, median time per training step and peak memory,
the last two also as ratios to full fine-tuning and to LoRA from the same run. The rows measured are
merged into ``results/methods_sst2.json`` (each with the time it was measured).

``lora+deft`` is LoRA with DEFT's density loss (w = 1, ε = 1e-7); its feed-forward activation density
before and after training is printed too.

Usage: python benchmarks/methods_sst2.py [--methods full,lora,lora+deft,adapter,...] [--epochs 1]
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
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

METHODS = ["full", "lora", "lora+deft", "qlora", "meft", "adapter", "ia3", "bitfit", "ln", "prompt", "ptuning",
           "prefix", "vl_pet", "adalora", "increlora", "apet"]
DEFT = "+deft"  # a method with DEFT's density loss (w = 1) added
RESULTS = Path(__file__).parent / "results" / "methods_sst2.json"


def worker(method: str, epochs: float) -> dict:
    import torch

    from peftkit.recipes.classification import train_classifier
    from peftkit.recipes.training import TrainOptions

    torch.set_num_threads(2)
    base_method, density_loss = (method[: -len(DEFT)], 1.0) if method.endswith(DEFT) else (method, 0.0)
    with tempfile.TemporaryDirectory() as output:
        result = train_classifier(TrainOptions(method=base_method, epochs=epochs, output=output,
                                               density_loss=density_loss))
    return {"method": method, "trainable": result.trainable_parameters, "total": result.total_parameters,
            "accuracy": result.accuracy, "step_seconds": statistics.median(result.step_seconds),
            "peak_mib": result.peak_memory_mib, "train_seconds": result.train_seconds, "density": result.density}


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
    for method, row in rows.items():
        if row["density"]:
            before, after = row["density"]
            print(f"{method}: feed-forward activation density (|a| > 3.2e-4, dev tokens) {before:.4f} before, "
                  f"{after:.4f} after ({100 * (after - before) / before:+.1f} %)")
    RESULTS.parent.mkdir(exist_ok=True)
    saved = json.loads(RESULTS.read_text()) if RESULTS.is_file() else {}
    measured = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    all_rows = {**saved.get("rows", {}), **{m: {**row, "measured": measured} for m, row in rows.items()}}
    RESULTS.write_text(json.dumps({"epochs": args.epochs, "rows": all_rows, "python": platform.python_version()},
                                  indent=2))
    print(f"raw measurements: {RESULTS}")


if __name__ == "__main__":
    main()
