"""A bench's summary per row from its run records: means and spreads over seeds, medians, ratios."""

from __future__ import annotations

import statistics

import pytest

from peftkit.bench.report import markdown_table, summarise


def record(row: str, seed: int, score: float, steps: list[float], peak: float, implementation: str = "peftkit",
           method: str | None = None) -> dict:
    return {"row": row, "method": method or row, "options": {}, "seed": seed, "implementation": implementation,
            "trainable": 10 if row != "full" else 1000, "total": 1000, "score": score, "step_seconds": steps,
            "peak_mib": peak, "activation_bytes": 2**20, "latency_unmerged_s": 0.02, "latency_merged_s": None
            if row == "full" else 0.01, "merge_note": None, "batch_size": 8}


def test_seeds_are_averaged_and_ratios_taken_against_full_fine_tuning_and_peft():
    records = [record("full", 1, 0.9, [2.0, 2.0], 400), record("full", 2, 0.8, [2.0], 500),
               record("lora", 1, 0.7, [1.0, 3.0], 300), record("lora", 2, 0.9, [0.5], 200),
               record("lora", 3, 0.0, [], 0) | {"error": "boom"},
               record("lora", 1, 0.6, [2.0], 600, implementation="peft")]
    del records[4]["score"]
    summaries = {(s["row"], s["implementation"]): s for s in summarise(records)}
    lora = summaries["lora", "peftkit"]
    assert lora["score"] == pytest.approx(0.8) and lora["score_sd"] == pytest.approx(statistics.stdev([0.7, 0.9]))
    assert lora["step_seconds"] == 1.0 and lora["examples_per_second"] == 8.0  # median of 1.0, 3.0, 0.5
    assert lora["peak_mib"] == 300 and lora["failed_seeds"] == [3] and lora["trainable_percent"] == 1.0
    assert lora["vs_full"] == {"step_seconds": 0.5, "peak_mib": 0.6}
    assert lora["vs_peft"]["step_seconds"] == 0.5 and lora["vs_peft"]["score_difference"] == pytest.approx(0.2)
    assert lora["latency_unmerged_ms"] == pytest.approx(20) and lora["latency_merged_ms"] == pytest.approx(10)
    table = markdown_table(list(summaries.values()))
    assert "| lora | peftkit | 10 | 1.000 | 0.8000 ± 0.1414 | 1.000 | 0.50 | 8.0 | 300 | 0.60 |" in table


def test_a_row_whose_every_seed_failed_keeps_its_reason():
    failed = record("bogus", 1, 0.0, [], 0) | {"error": "unknown method 'bogus'"}
    summary = summarise([record("full", 1, 0.9, [1.0], 100), failed])[1]
    assert summary["error"] == "unknown method 'bogus'" and "score" not in summary
    assert "| bogus | peftkit | - |" in markdown_table([summary]) and "failed: unknown method 'bogus'" in \
        markdown_table([summary])
