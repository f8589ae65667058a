"""PANDA on real data: prompt transfer SST-2 → SST-5 on the bundled all-MiniLM-L6-v2, against vanilla
prompt transfer and training from scratch, plus the transferability metric.

A soft prompt (prompt tuning, 20 virtual tokens, the recipe's defaults) is trained on SST-2 (``--source-steps``
steps of 32) and on TREC (a question-type task, as a contrast for the metric). On SST-5 (5 sentiment
classes; 8,544 train, 1,101 dev), for each seed: a prompt from its usual initialisation (scratch), one
started from the SST-2 prompt (vanilla transfer, the teacher) and PANDA (started from the SST-2 prompt,
distilling the teacher with β = max(T, 0)), each ``--target-steps`` steps, scored on SST-5 dev. T(source,
SST-5) is measured with the seed's scratch prompt as SST-5's own prompt, on 200 + 200 probe sentences.
Printed and written to ``results/panda_transfer.json``.

Usage: [PEFTKIT_DATA=../shared/data] python benchmarks/panda_transfer.py [--seeds 1,2,3]
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

DATA = Path(os.environ.get("PEFTKIT_DATA", Path(__file__).resolve().parents[1].parent / "shared" / "data"))
RESULTS = Path(__file__).parent / "results" / "panda_transfer.json"


def texts(path: Path, count: int) -> list[str]:
    return [json.loads(line)["text"] for line in path.read_text().split("\n")[:count] if line.strip()]


def main() -> None:
    import torch

    from peftkit.recipes.classification import train_classifier
    from peftkit.recipes.prompt_transfer import prompt_transfer, saved_transferability
    from peftkit.recipes.training import TrainOptions

    parser = argparse.ArgumentParser()
    parser.add_argument("--seeds", default="1,2,3")
    parser.add_argument("--source-steps", type=int, default=200)
    parser.add_argument("--target-steps", type=int, default=150)
    parser.add_argument("--max-length", type=int, default=64)
    args = parser.parse_args()
    torch.set_num_threads(2)
    common = {"method": "prompt_tuning", "max_length": args.max_length}
    target_train, target_dev = DATA / "sst5" / "train.jsonl", DATA / "sst5" / "dev.jsonl"
    probe = texts(DATA / "sst2" / "train.jsonl", 200) + texts(target_train, 200)
    rows, started = [], time.perf_counter()
    with tempfile.TemporaryDirectory() as work:
        work = Path(work)
        sources = {}
        for name, train, dev in (("sst2", "sst2/train.jsonl", "sst2/dev.jsonl"), ("trec", "trec/train.jsonl", None)):
            result = train_classifier(TrainOptions(train=str(DATA / train), eval=str(DATA / dev) if dev else None,
                                                   max_steps=args.source_steps, seed=0, output=str(work / name),
                                                   **common))
            sources[name] = result.accuracy
            print(f"source {name}: dev accuracy {result.accuracy:.4f}", flush=True)
        for seed in map(int, args.seeds.split(",")):
            target = TrainOptions(train=str(target_train), eval=str(target_dev), max_steps=args.target_steps,
                                  seed=seed, **common)
            result = prompt_transfer(target, target, work / f"seed{seed}", probe, source_dir=work / "sst2")
            contrast = saved_transferability(work / "trec", work / f"seed{seed}" / "scratch", probe,
                                             max_length=args.max_length)
            rows.append({"seed": seed, **result.__dict__, "transferability_trec": contrast})
            print(json.dumps(rows[-1]), flush=True)

    def summary(key: str) -> str:
        values = [row[key] for row in rows]
        spread = statistics.stdev(values) if len(values) > 1 else 0.0
        return f"{statistics.mean(values):.4f} ± {spread:.4f}"

    print("\n| SST-5 dev accuracy (mean ± sd over seeds) | |\n|---|---:|")
    for key, label in (("scratch", "prompt tuning from scratch"), ("vanilla", "vanilla prompt transfer from SST-2"),
                       ("panda", "PANDA from SST-2")):
        print(f"| {label} | {summary(key)} |")
    print(f"\ntransferability T(SST-2, SST-5) = {summary('transferability')}, "
          f"T(TREC, SST-5) = {summary('transferability_trec')}")
    RESULTS.parent.mkdir(exist_ok=True)
    RESULTS.write_text(json.dumps({"measured": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), **provenance(),
                                   "sources": sources, "settings": vars(args), "rows": rows,
                                   "seconds": time.perf_counter() - started}, indent=2))


if __name__ == "__main__":
    main()
