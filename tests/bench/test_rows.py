"""Which rows a bench runs: methods, option sets from YAML, variants, full fine-tuning first."""

from __future__ import annotations

import pytest

from peftkit.bench.rows import BenchRow, bench_rows, default_methods
from peftkit.core.errors import ConfigError


def test_option_sets_become_rows_after_full_fine_tuning(tmp_path):
    options = tmp_path / "methods.yaml"
    options.write_text("lora:\n  - {r: 4}\n  - {r: 8}\n  - {r: 16}\nbottleneck: {reduction_factor: 32}\n")
    rows = bench_rows(["lora", "bottleneck", "ia3"], options)
    assert rows == [BenchRow("full", "full"), BenchRow("lora r=4", "lora", {"r": 4}),
                    BenchRow("lora r=8", "lora", {"r": 8}), BenchRow("lora r=16", "lora", {"r": 16}),
                    BenchRow("bottleneck", "bottleneck", {"reduction_factor": 32}), BenchRow("ia3", "ia3")]
    assert rows[1].slug == "lora_r_4"


def test_variants_and_defaults():
    assert bench_rows(["dora"])[1] == BenchRow("dora", "lora", {"use_dora": True})
    names = default_methods()
    assert names[0] == "full"
    benched = {"lora", "qlora", "dora", "meft", "bottleneck", "prefix_tuning", "prompt_tuning", "ia3", "bitfit"}
    assert benched <= set(names)
    assert [row.label for row in bench_rows()] == names


def test_bad_option_files_name_the_problem(tmp_path):
    with pytest.raises(ConfigError, match="missing.yaml: method options file not found"):
        bench_rows(["lora"], tmp_path / "missing.yaml")
    broken = tmp_path / "broken.yaml"
    broken.write_text("lora: [r: 4\n")
    with pytest.raises(ConfigError, match="broken.yaml: not valid YAML"):
        bench_rows(["lora"], broken)
    scalar = tmp_path / "scalar.yaml"
    scalar.write_text("lora: 4\n")
    with pytest.raises(ConfigError, match="the options of 'lora' must be a mapping"):
        bench_rows(["lora"], scalar)
    twice = tmp_path / "twice.yaml"
    twice.write_text("lora:\n  - {r: 4}\n  - {r: 4}\n")
    with pytest.raises(ConfigError, match="bench rows named twice: lora r=4"):
        bench_rows(["lora"], twice)


def test_jobs_that_cannot_run_get_their_reason_without_a_worker():
    from peftkit.bench.runner import PEFTKIT, Job, not_runnable
    from peftkit.bench.worker import PEFT

    qlora = BenchRow("qlora", "qlora")
    assert not_runnable(Job(qlora, 42, PEFTKIT)) is None
    assert "bitsandbytes" in not_runnable(Job(qlora, 42, PEFT))
    assert not_runnable(Job(BenchRow("bogus", "bogus"), 42)).startswith("unknown method 'bogus'")
    assert not_runnable(Job(BenchRow("full", "full"), 42)) is None
