"""Every method on the bundled all-MiniLM-L6-v2 and SST-2, against full fine-tuning and LoRA.

Each method trains one epoch over the 6,920 SST-2 training sentences (batch 32, its default learning
rate from ``peftkit.recipes.classification``) in a fresh subprocess, so that the process's peak memory
(VmHWM) belongs to that method alone, and is scored on the 872-sentence dev set. Printed: trainable
parameters (count, % of the model), dev accuracy, median time per training step and peak memory,
the last two also as ratios to full fine-tuning and to LoRA from the same run. The rows measured are
merged into ``results/methods_sst2.json``, each with the time and the command it was measured with (a full
or LoRA row a later run replaces is kept while rows of its run remain, as their reference). With several ``--seeds``
each method runs once per seed: accuracy is the mean (± sd over seeds, every run's kept), time per step
the median over all runs' steps and peak memory the largest.

``lora+deft`` is LoRA with DEFT's density loss (w = 1, ε = 1e-7); its feed-forward activation density
before and after training is printed too.

Usage: python benchmarks/methods_sst2.py [--methods full,lora,lora+deft,bottleneck,...] [--epochs 1] [--seeds 42]
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

from provenance import provenance

os.environ.setdefault("HF_HUB_OFFLINE", "1")

METHODS = ["full", "lora", "lora+deft", "qlora", "meft", "bottleneck", "ia3", "bitfit", "ln_tuning", "prompt_tuning",
           "p_tuning", "prefix_tuning", "vl_pet", "adalora", "increlora", "apet"]
DEFT = "+deft"  # a method with DEFT's density loss (w = 1) added
RESULTS = Path(__file__).parent / "results" / "methods_sst2.json"


def worker(method: str, epochs: float, seed: int) -> dict:
    import torch

    from peftkit.recipes.classification import train_classifier
    from peftkit.recipes.training import TrainOptions

    torch.set_num_threads(2)
    base_method, density_loss = (method[: -len(DEFT)], 1.0) if method.endswith(DEFT) else (method, 0.0)
    with tempfile.TemporaryDirectory() as output:
        result = train_classifier(TrainOptions(method=base_method, epochs=epochs, output=output, seed=seed,
                                               density_loss=density_loss))
    return {"method": method, "seed": seed, "trainable": result.trainable_parameters, "total": result.total_parameters,
            "accuracy": result.accuracy, "step_seconds": statistics.median(result.step_seconds),
            "peak_mib": result.peak_memory_mib, "train_seconds": result.train_seconds, "density": result.density,
            "steps": result.step_seconds}


def over_seeds(runs: list[dict]) -> dict:
    """One row from a method's runs: mean accuracy (and sd, each run's), median step, largest peak."""
    row = {key: value for key, value in runs[0].items() if key not in ("steps", "seed")}
    accuracies = [run["accuracy"] for run in runs]
    row.update(accuracy=statistics.mean(accuracies),
               step_seconds=statistics.median([step for run in runs for step in run["steps"]]),
               peak_mib=max(run["peak_mib"] for run in runs),
               train_seconds=statistics.median([run["train_seconds"] for run in runs]))
    if len(runs) > 1:
        row.update(seeds=[run["seed"] for run in runs], accuracies=accuracies,
                   accuracy_sd=statistics.stdev(accuracies))
    return row


def accuracy(row: dict) -> str:
    return f"{row['accuracy']:.4f}" + (f" ± {row['accuracy_sd']:.4f}" if "accuracy_sd" in row else "")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--methods", default=",".join(METHODS))
    parser.add_argument("--epochs", type=float, default=1.0)
    parser.add_argument("--seeds", default="42")
    parser.add_argument("--worker")
    args = parser.parse_args()
    seeds = [int(seed) for seed in args.seeds.split(",")]
    if args.worker:
        print(json.dumps(worker(args.worker, args.epochs, seeds[0])))
        return

    rows = {}
    for method in args.methods.split(","):
        runs = []
        for seed in seeds:
            done = subprocess.run([sys.executable, __file__, "--worker", method, "--epochs", str(args.epochs),
                                   "--seeds", str(seed)], capture_output=True, text=True)
            if done.returncode != 0:
                print(f"{method} (seed {seed}): failed: {done.stderr.strip().splitlines()[-1]}", file=sys.stderr)
                continue
            runs.append(json.loads(done.stdout.strip().splitlines()[-1]))
            print(f"{method} (seed {seed}): accuracy {runs[-1]['accuracy']:.4f}", file=sys.stderr)
        if runs:
            rows[method] = over_seeds(runs)

    full, lora = rows.get("full"), rows.get("lora")
    print(f"SST-2 dev accuracy after {args.epochs:g} epoch(s), all-MiniLM-L6-v2, batch 32, 2 threads, "
          f"seeds {args.seeds}")
    print("| method | trainable | % | dev acc | s/step | × full | × LoRA | peak MiB | × full | × LoRA |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for method, row in rows.items():
        def ratio(reference, key, row=row):
            return f"{row[key] / reference[key]:.2f}" if reference else "-"
        print(f"| {method} | {row['trainable']:,} | {100 * row['trainable'] / row['total']:.3f} | "
              f"{accuracy(row)} | {row['step_seconds']:.3f} | {ratio(full, 'step_seconds')} | "
              f"{ratio(lora, 'step_seconds')} | {row['peak_mib']:,.0f} | {ratio(full, 'peak_mib')} | "
              f"{ratio(lora, 'peak_mib')} |")
    for method, row in rows.items():
        if row["density"]:
            before, after = row["density"]
            print(f"{method}: feed-forward activation density (|a| > 3.2e-4, dev tokens) {before:.4f} before, "
                  f"{after:.4f} after ({100 * (after - before) / before:+.1f} %)")
    RESULTS.parent.mkdir(exist_ok=True)
    saved = json.loads(RESULTS.read_text()) if RESULTS.is_file() else {}
    measured, run = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), provenance()
    earlier = saved.get("rows", {})
    all_rows = {**earlier, **{m: {**row, "measured": measured, "command": run["command"]} for m, row in rows.items()}}
    # a replaced full or LoRA row stays while rows of its run remain: their ratios are to it
    live = {row["measured"] for row in all_rows.values()}
    references = [row for row in [*saved.get("same_run_references", []),
                                  *(earlier[m] for m in ("full", "lora") if m in rows and m in earlier)]
                  if row["measured"] in live]
    RESULTS.write_text(json.dumps({"epochs": args.epochs, "machine": run["machine"], "rows": all_rows,
                                   "same_run_references": references, "python": platform.python_version()},
                                  indent=2))
    print(f"raw measurements: {RESULTS}")


if __name__ == "__main__":
    main()
