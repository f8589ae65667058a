"""ScaLearn's four variants against AdapterFusion on real data: sources SST-2, SUBJ, MPQA, TREC, RTE; target CB.

Stage 1 trains a bottleneck adapter (Pfeiffer placement, reduction 16) on each source task with the bundled
all-MiniLM-L6-v2 (200 steps of 32, the adapter recipe's defaults) and keeps it in ``--sources-dir`` (reused
when present). Stage 2 trains, on CommitmentBank (250 examples; 20 % held out per seed as the dev set),
each transfer method (``peftkit.recipes.transfer``) plus a fresh bottleneck adapter trained on CB alone,
for ``--epochs`` epochs, over ``--seeds`` seeds (the seed also draws the held-out split). Printed and
written to ``results/scalearn_transfer.json``: the transfer layer's trainable parameters (the head, the
same for all, excluded), mean and spread of dev accuracy.

Usage: [PEFTKIT_DATA=../shared/data] python benchmarks/scalearn_transfer.py [--seeds 1,2,3] [--epochs 10]
       [--sources-dir DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from pathlib import Path

from provenance import provenance

os.environ.setdefault("HF_HUB_OFFLINE", "1")

# the workplace's data sets, next to the repository (or where PEFTKIT_DATA points)
DATA = Path(os.environ.get("PEFTKIT_DATA", Path(__file__).resolve().parents[1].parent / "shared" / "data"))
SOURCES = {"sst2": ("sst2/train.jsonl", "sst2/dev.jsonl"), "subj": ("subj/all.jsonl", None),
           "mpqa": ("mpqa/all.jsonl", None), "trec": ("trec/train.jsonl", None), "rte": ("rte/train.jsonl", None)}
TARGET = "cb/train.jsonl"
METHODS = ["bottleneck", "fuse", "scalearn", "scalearn_uniform", "scalearn++", "scalearn_uniform++"]
RESULTS = Path(__file__).parent / "results" / "scalearn_transfer.json"


def main() -> None:
    import torch
    from transformers import AutoConfig

    from peftkit.recipes.classification import train_classifier
    from peftkit.recipes.training import TrainOptions
    from peftkit.recipes.transfer import train_source, train_transfer

    parser = argparse.ArgumentParser()
    parser.add_argument("--seeds", default="1,2,3")
    parser.add_argument("--epochs", type=float, default=10)
    parser.add_argument("--source-steps", type=int, default=200)
    parser.add_argument("--sources-dir", default=str(Path.home() / ".cache" / "peftkit" / "scalearn_sources"))
    parser.add_argument("--methods", default=",".join(METHODS))
    args = parser.parse_args()
    torch.set_num_threads(2)

    sources_dir = Path(args.sources_dir)
    source_accuracy = {}
    for name, (train, dev) in SOURCES.items():
        folder = sources_dir / name
        if not (folder / "adapter_config.json").is_file():
            started = time.perf_counter()
            source_accuracy[name] = train_source(TrainOptions(
                train=str(DATA / train), eval=str(DATA / dev) if dev else None, max_steps=args.source_steps,
                seed=0), folder)
            print(f"source {name}: dev accuracy {source_accuracy[name]:.4f} ({time.perf_counter() - started:.0f} s)",
                  flush=True)
    sources = {name: sources_dir / name for name in SOURCES}

    rows = []
    for method in args.methods.split(","):
        scores, parameters, seconds = [], None, []
        for seed in map(int, args.seeds.split(",")):
            options = TrainOptions(train=str(DATA / TARGET), eval_fraction=0.2, epochs=args.epochs, batch_size=16,
                                   seed=seed)
            if method == "bottleneck":
                with tempfile.TemporaryDirectory() as output:
                    result = train_classifier(TrainOptions(**{**options.__dict__, "method": "bottleneck",
                                                              "output": output}))
                head = (AutoConfig.from_pretrained(result.model_dir).hidden_size + 1) * len(result.labels)
                scores.append(result.accuracy)
                parameters = result.trainable_parameters - head
                seconds.append(result.train_seconds)
            else:
                result = train_transfer(options, sources, method)
                scores.append(result.accuracy)
                parameters = result.transfer_parameters
                seconds.append(result.train_seconds)
            print(f"{method} seed {seed}: {scores[-1]:.4f}", flush=True)
        rows.append({"method": method, "transfer_parameters": parameters, "accuracies": scores,
                     "mean": statistics.mean(scores), "stdev": statistics.stdev(scores) if len(scores) > 1 else 0.0,
                     "train_seconds": statistics.median(seconds)})

    print("\n| method | trained transfer parameters | CB dev accuracy (mean ± sd) |")
    print("|---|---:|---:|")
    for row in rows:
        print(f"| {row['method']} | {row['transfer_parameters']:,} | {row['mean']:.4f} ± {row['stdev']:.4f} |")
    RESULTS.parent.mkdir(exist_ok=True)
    RESULTS.write_text(json.dumps({"measured": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), **provenance(),
                                   "sources": source_accuracy, "seeds": args.seeds, "epochs": args.epochs,
                                   "rows": rows}, indent=2))


if __name__ == "__main__":
    main()
