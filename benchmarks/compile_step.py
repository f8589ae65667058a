"""torch.compile on a LoRA training step: compiled against eager, for peftkit and peft, in one run.

The setting of ``lora_vs_peft.py`` (the bundled MiniLM-L6 with a classification head, 32 SST-2 sentences padded to
128 tokens, LoRA r=8 alpha=16 on every linear layer, the model's own dropout 0.1 on): four variants — peft eager,
peft compiled, peftkit eager (lean training), peftkit compiled (``torch.compile(model)``, inductor). Each variant
first runs ``--warmup`` steps (compilation, and transformers' first-call change of ``config.problem_type``, which
compiles once more), then the variants take turns over ``--rounds`` rounds of ``--steps`` timed steps (forward,
backward, AdamW step). Reported: median step times and their ratios.

Usage: python benchmarks/compile_step.py [--rounds 6] [--steps 2] [--warmup 3]
"""

from __future__ import annotations

import argparse
import datetime
import json
import platform
import statistics
import time
from pathlib import Path

import torch
from lora_vs_peft import build, step

RESULTS = Path(__file__).parent / "results"
VARIANTS = ["peft eager", "peft compiled", "peftkit eager", "peftkit compiled"]


def setup(variant: str):
    implementation, mode = variant.split()
    model, batch, optimizer = build(implementation, 0.0, "minilm")
    return (torch.compile(model) if mode == "compiled" else model), batch, optimizer


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--steps", type=int, default=2)
    parser.add_argument("--warmup", type=int, default=3)
    args = parser.parse_args()
    torch.set_num_threads(2)
    setups, warmup_seconds = {}, {}
    for variant in VARIANTS:
        setups[variant] = setup(variant)
        started = time.perf_counter()
        for _ in range(args.warmup):
            step(*setups[variant])
        warmup_seconds[variant] = time.perf_counter() - started
    times: dict[str, list[float]] = {variant: [] for variant in VARIANTS}
    for round_number in range(args.rounds):
        for variant in VARIANTS[:: 1 if round_number % 2 == 0 else -1]:
            for _ in range(args.steps):
                started = time.perf_counter()
                step(*setups[variant])
                times[variant].append(time.perf_counter() - started)
    median = {variant: statistics.median(values) for variant, values in times.items()}
    ratios = {"peftkit compiled / peftkit eager": median["peftkit compiled"] / median["peftkit eager"],
              "peftkit compiled / peft compiled": median["peftkit compiled"] / median["peft compiled"],
              "peft compiled / peft eager": median["peft compiled"] / median["peft eager"]}
    print(f"LoRA r=8 all-linear, MiniLM-L6 + head, batch 32x128, {torch.get_num_threads()} threads, "
          f"{args.rounds}x{args.steps} timed steps each")
    for variant in VARIANTS:
        print(f"{variant:<18} median step {median[variant]:.3f} s   (warm-up {warmup_seconds[variant]:.1f} s)")
    for name, value in ratios.items():
        print(f"{name:<34} {value:.3f}")
    RESULTS.mkdir(exist_ok=True)
    path = RESULTS / "compile_step_minilm.json"
    path.write_text(json.dumps({
        "command": "python benchmarks/compile_step.py " + " ".join(
            f"--{k} {v}" for k, v in vars(args).items()),
        "date": datetime.date.today().isoformat(), "model": "MiniLM-L6 + head", "batch": [32, 128],
        "step_seconds": times, "median_step_seconds": median, "warmup_seconds": warmup_seconds, "ratios": ratios,
        "environment": {"torch": torch.__version__, "python": platform.python_version(),
                        "threads": torch.get_num_threads(), "machine": platform.machine(),
                        "processor": platform.processor() or platform.machine()},
    }, indent=2))
    print(f"raw measurements: {path}")


if __name__ == "__main__":
    main()
