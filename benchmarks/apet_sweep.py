"""APET on the bundled all-MiniLM-L6-v2 and SST-2: dev accuracy against the budget N, plotted.

For each N, ``peftkit train --method apet -o budget=N -o element_mask=true`` (one epoch, batch 32, APET's
default learning rate) runs in a fresh subprocess; N = "match:lora" is LoRA's default config's count
(r = 8 on query and value). The classification head is trained whole in every run and is not part of N.
Writes ``results/apet_sweep.json`` and, with matplotlib installed (``pip install -e '.[bench]'``),
``results/apet_sweep.png``.

Usage: python benchmarks/apet_sweep.py [--budgets 5000,20000,match:lora,300000] [--seed 0] [--epochs 1]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

from provenance import provenance

os.environ.setdefault("HF_HUB_OFFLINE", "1")

RESULTS = Path(__file__).parent / "results"
BUDGETS = "5000,20000,match:lora,300000"


def worker(budget: str, seed: int, epochs: float) -> dict:
    import torch

    from peftkit.recipes.classification import train_classifier
    from peftkit.recipes.training import TrainOptions

    torch.set_num_threads(2)
    value = int(budget) if budget.isdigit() else budget
    with tempfile.TemporaryDirectory() as output:
        result = train_classifier(TrainOptions(method="apet", epochs=epochs, output=output, seed=seed,
                                               method_options={"budget": value, "element_mask": True, "seed": seed}))
    head = sum(p.numel() for p in _head_parameters(result))
    return {"budget": budget, "trained": result.trainable_parameters - head, "accuracy": result.accuracy,
            "train_seconds": result.train_seconds}


def _head_parameters(result):
    from peftkit.core.pretrained import load_sequence_classifier

    _, model = load_sequence_classifier(result.model_dir, result.labels)
    return model.classifier.parameters()


def plot(rows: list[dict], path: Path) -> bool:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    rows = sorted(rows, key=lambda r: r["trained"])
    figure, axis = plt.subplots(figsize=(5, 3.2))
    axis.plot([r["trained"] for r in rows], [r["accuracy"] for r in rows], marker="o")
    for row in rows:
        if not row["budget"].isdigit():
            axis.annotate(row["budget"], (row["trained"], row["accuracy"]), textcoords="offset points", xytext=(4, -10))
    axis.set_xscale("log")
    axis.set_xlabel("trained parameters N (APET, head excluded)")
    axis.set_ylabel("SST-2 dev accuracy")
    axis.set_title("APET on all-MiniLM-L6-v2, 1 epoch")
    axis.grid(alpha=0.3)
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    return True


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--budgets", default=BUDGETS)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--epochs", type=float, default=1.0)
    parser.add_argument("--worker")
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(worker(args.worker, args.seed, args.epochs)))
        return
    rows = []
    for budget in args.budgets.split(","):
        done = subprocess.run([sys.executable, __file__, "--worker", budget, "--seed", str(args.seed),
                               "--epochs", str(args.epochs)], capture_output=True, text=True)
        if done.returncode != 0:
            print(f"{budget}: failed: {done.stderr.strip().splitlines()[-1]}", file=sys.stderr)
            continue
        rows.append(json.loads(done.stdout.strip().splitlines()[-1]))
        print(f"{budget}: N = {rows[-1]['trained']:,}, dev accuracy {rows[-1]['accuracy']:.4f}", file=sys.stderr)
    print(f"APET, all-MiniLM-L6-v2, SST-2, {args.epochs:g} epoch(s), seed {args.seed}")
    print("| budget | N trained | dev accuracy | training s |")
    print("|---|---|---|---|")
    for row in rows:
        print(f"| {row['budget']} | {row['trained']:,} | {row['accuracy']:.4f} | {row['train_seconds']:.0f} |")
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "apet_sweep.json").write_text(json.dumps({**provenance(), "rows": rows}, indent=2))
    if plot(rows, RESULTS / "apet_sweep.png"):
        print(f"plot: {RESULTS / 'apet_sweep.png'}")


if __name__ == "__main__":
    main()
