"""Every method's row on the default bench job, read from the bench runs in ``RUNS`` (in order: a method's row from a
later run replaces its row from an earlier one, as after its default learning rate changed; each row's ratios are to
full fine-tuning in the same run). The method pages show a method's row; docs/benchmarks/methods.md lists them all.
The benchmark pages are written by ``python docs/generate_benchmarks.py`` (this command runs it too)."""

from __future__ import annotations

import json
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RUNS = ["bench-default", "bench-peft-types", "bench-more-types", "bench-retuned"]


def bench_runs() -> list[tuple[str, dict]]:
    """(name, bench.json) of every run in ``RUNS``."""
    return [(name, json.loads((ROOT / "benchmarks" / "results" / name / "bench.json").read_text())) for name in RUNS]


def bench_rows() -> dict[str, tuple[dict, str]]:
    """Method row label -> (its summary, the run it comes from); full fine-tuning left out."""
    rows = {}
    for name, run in bench_runs():
        for summary in run["summary"]:
            if summary["implementation"] == "peftkit" and summary["row"] != "full":
                rows[summary["row"]] = (summary, name)
    return rows


if __name__ == "__main__":
    import runpy

    runpy.run_path(str(Path(__file__).with_name("generate_benchmarks.py")), run_name="__main__")
