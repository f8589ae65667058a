"""How fast the command line answers: ``peftkit --help`` and ``peftkit --version`` against the bare interpreter and
``import torch``, measured in one run.

Each command runs ``--runs`` times as a fresh process (taking turns, so a slow moment of the shared machine falls on
every command alike); reported: the median wall time of each, its ratio to the bare interpreter's, and whether
anything was written to stderr.

Usage: python benchmarks/cli_startup.py [--runs 10]
"""

from __future__ import annotations

import argparse
import datetime
import json
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

RESULTS = Path(__file__).parent / "results"
COMMANDS = {
    "python -c pass": [sys.executable, "-c", "pass"],
    "python -c 'import torch'": [sys.executable, "-c", "import torch"],
    "peftkit --help": [sys.executable, "-m", "peftkit", "--help"],
    "peftkit --version": [sys.executable, "-m", "peftkit", "--version"],
}


def timed(command: list[str]) -> tuple[float, str]:
    started = time.perf_counter()
    result = subprocess.run(command, capture_output=True, text=True, check=True)
    return time.perf_counter() - started, result.stderr


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=10)
    args = parser.parse_args()
    times: dict[str, list[float]] = {name: [] for name in COMMANDS}
    stderr: dict[str, str] = {name: "" for name in COMMANDS}
    for name, command in COMMANDS.items():
        timed(command)  # warm the file cache
    for _ in range(args.runs):
        for name, command in COMMANDS.items():
            seconds, errors = timed(command)
            times[name].append(seconds)
            stderr[name] += errors
    median = {name: statistics.median(values) for name, values in times.items()}
    bare = median["python -c pass"]
    result = {
        "date": datetime.date.today().isoformat(), "command": "python benchmarks/cli_startup.py",
        "machine": f"{platform.machine()}, {platform.processor() or 'cpu'}, python {platform.python_version()}",
        "runs": args.runs,
        "commands": {name: {"median_seconds": round(median[name], 3), "vs_bare_python": round(median[name] / bare, 2),
                            "stderr_empty": stderr[name] == "", "seconds": [round(s, 3) for s in times[name]]}
                     for name in COMMANDS},
    }
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "cli_startup.json").write_text(json.dumps(result, indent=2) + "\n")
    for name, values in result["commands"].items():
        print(f"{name:<28} {values['median_seconds']:.3f} s  ({values['vs_bare_python']:.2f}x bare python)  "
              f"stderr {'empty' if values['stderr_empty'] else 'NOT empty'}")


if __name__ == "__main__":
    main()
