"""``peftkit train`` with its defaults only, on the bundled data sets: does the budget it chooses from the data work?

Each job runs the command a user would type — ``peftkit train --train FILE --eval FILE`` (and ``--recipe keyphrase``
for Inspec), no other option — in a subprocess, and reads the score, the wall time and the chosen budget from its
summary. The data sets with no dev file get a fixed one: a seeded shuffle (seed 0) of the training file, the first
rows held out (RTE 277, the size of its official dev set; CommitmentBank 56, likewise).

| job | data | goal |
|---|---|---|
| sst2 | the bundled SST-2 (``peftkit train`` with no argument: ``make demo``) | accuracy ≥ 0.85 in ≤ 5 minutes |
| rte | RTE (premise, hypothesis; 2 labels) | accuracy ≥ 0.60 |
| cb | CommitmentBank (premise, hypothesis; 3 labels) | accuracy ≥ 0.75 |
| inspec | Inspec abstracts, keyphrase extraction | present F1@5 ≥ 0.30 |

Results (one run each, seed 42, the command's default) go to ``benchmarks/results/defaults.json``, merged with the
jobs already there, with the command, machine and date.

Usage: [PEFTKIT_DATA=../shared/data] python benchmarks/defaults.py [--jobs sst2,rte,cb,inspec]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import subprocess
import sys
import tempfile
from pathlib import Path

from provenance import provenance

DATA = Path(os.environ.get("PEFTKIT_DATA", Path(__file__).resolve().parents[1].parent / "shared" / "data"))
RESULTS = Path(__file__).parent / "results" / "defaults.json"
HELD_OUT = {"rte": 277, "cb": 56}
GOALS = {"sst2": ("accuracy", 0.85), "rte": ("accuracy", 0.60), "cb": ("accuracy", 0.75),
         "inspec": ("present keyphrase F1@5", 0.30)}
NAMES = {"sst2": "SST-2 (bundled)", "rte": "RTE", "cb": "CommitmentBank", "inspec": "Inspec keyphrase extraction"}


def held_out_split(name: str, folder: Path) -> tuple[Path, Path]:
    """(train, dev) files: the training file shuffled with seed 0, its first ``HELD_OUT[name]`` rows the dev set."""
    rows = (DATA / name / "train.jsonl").read_text().splitlines()
    random.Random(0).shuffle(rows)
    dev, train = folder / f"{name}-dev.jsonl", folder / f"{name}-train.jsonl"
    dev.write_text("\n".join(rows[:HELD_OUT[name]]) + "\n")
    train.write_text("\n".join(rows[HELD_OUT[name]:]) + "\n")
    return train, dev


def job_arguments(name: str, folder: Path) -> list[str]:
    if name == "sst2":
        return []
    if name == "inspec":
        return ["--recipe", "keyphrase", "--train", str(DATA / "inspec" / "train.jsonl"),
                "--eval", str(DATA / "inspec" / "dev.jsonl")]
    train, dev = held_out_split(name, folder)
    return ["--train", str(train), "--eval", str(dev)]


def read_summary(text: str) -> dict:
    """Score, examples, wall seconds, steps and the budget line from ``peftkit train``'s summary."""
    score = re.search(r"(?:dev|eval) (accuracy|present keyphrase F1@5):\s+([0-9.]+)", text)
    wall = re.search(r"wall time:\s+(\d+)m ([0-9.]+)s \(training [0-9.]+s, (\d+) steps\)", text)
    examples = re.search(r": ([\d,]+) training / ([\d,]+) evaluation examples", text)
    budget = re.search(r"budget:\s+(.+)", text)
    if not (score and wall and examples and budget):
        raise SystemExit(f"could not read the summary:\n{text[-3000:]}")
    return {"metric": score.group(1), "score": float(score.group(2)),
            "seconds": 60 * int(wall.group(1)) + float(wall.group(2)), "steps": int(wall.group(3)),
            "train_examples": int(examples.group(1).replace(",", "")),
            "eval_examples": int(examples.group(2).replace(",", "")), "budget": budget.group(1).strip()}


def run_job(name: str) -> dict:
    with tempfile.TemporaryDirectory(prefix=f"peftkit-defaults-{name}-") as scratch:
        folder = Path(scratch)
        arguments = job_arguments(name, folder)
        command = [sys.executable, "-m", "peftkit", "train", *arguments, "--output", str(folder / "adapter")]
        done = subprocess.run(command, capture_output=True, text=True, env={**os.environ, "HF_HUB_OFFLINE": "1"})
        if done.returncode != 0:
            raise SystemExit(f"{name}: peftkit train failed:\n{done.stderr[-3000:]}")
    user_command = "peftkit train " + " ".join(a.replace(str(DATA), "$PEFTKIT_DATA").replace(str(folder), ".")
                                               for a in arguments)
    metric, goal = GOALS[name]
    return {"data": NAMES[name], "train_command": user_command.strip(), "goal": goal, **read_summary(done.stdout)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", default=",".join(GOALS), help="comma-separated: " + ", ".join(GOALS))
    args = parser.parse_args()
    record = json.loads(RESULTS.read_text()) if RESULTS.is_file() else {"jobs": {}}
    for name in args.jobs.split(","):
        if name not in GOALS:
            raise SystemExit(f"unknown job {name!r}; jobs: {', '.join(GOALS)}")
        result = {**run_job(name), **provenance()}
        print(name, json.dumps(result), flush=True)
        record["jobs"][name] = result
        RESULTS.write_text(json.dumps(record, indent=2) + "\n")


if __name__ == "__main__":
    main()
