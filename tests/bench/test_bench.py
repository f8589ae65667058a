"""`peftkit bench` end to end on the tiny BERT folder: rows, reasons, peft twins, files, resuming."""

from __future__ import annotations

import datetime
import json
import os
import signal
import subprocess
import sys
import time

import pytest

from peftkit.cli import main

PNG = b"\x89PNG\r\n\x1a\n"


def bench_args(model_dir, data, output, *extra) -> list[str]:
    return ["bench", "--model", str(model_dir), "--train", str(data / "train.csv"), "--eval", str(data / "dev.jsonl"),
            "--text-column", "review", "--label-column", "sentiment", "--max-steps", "3", "--batch-size", "8",
            "--max-length", "16", "--threads", "1", "--output", str(output), *extra]


def summaries(output) -> dict:
    return {(s["row"], s["implementation"]): s for s in json.loads((output / "bench.json").read_text())["summary"]}


def expected_lora_parameters(model_dir, r: int) -> tuple[int, int]:
    import peftkit
    from peftkit.core.pretrained import load_sequence_classifier
    from peftkit.recipes.training import parameter_counts

    _, model = load_sequence_classifier(model_dir, ["neg", "pos"])
    config = peftkit.LoraConfig(r=r, lora_alpha=16, target_modules="all-linear", task_type="SEQ_CLS")
    return parameter_counts(peftkit.get_peft_model(model, config))


@pytest.mark.parametrize("methods, options, named", [
    ("lora,bogus", "", "bench row 'bogus': unknown method 'bogus'"),
    ("lora", "lora:\n  - {r: 2}\n  - {r: 4, target_modules: [no_such_module]}\n",
     "bench row 'lora r=4 target_modules=['no_such_module']': "),
    ("lora", "lora: {r: zero}\n", "bench row 'lora': LoraConfig.r must be a whole number"),
    ("lora", "full: {r: 4}\n", "methods.yaml: options for 'full', full fine-tuning takes no options"),
    ("lora", "ia3: {}\n", "methods.yaml: options for 'ia3', not a benched method (methods: lora)"),
])
def test_bench_refuses_a_bad_row_before_running_any(methods, options, named, model_dir, data, tmp_path, capsys):
    extra = ["--methods", methods]
    if options:
        (tmp_path / "methods.yaml").write_text(options)
        extra += ["--options", str(tmp_path / "methods.yaml")]
    output = tmp_path / "bench"
    assert main(bench_args(model_dir, data, output, *extra)) == 2
    error = capsys.readouterr().err
    assert error.startswith("peftkit: error: ") and named in error and error.count("\n") == 1
    assert not output.exists()  # refused before the first row ran


def test_a_method_that_does_not_apply_to_the_model_gets_its_reason_in_its_row(model_dir, data, tmp_path):
    output = tmp_path / "bench"
    assert main(bench_args(model_dir, data, output, "--methods", "adaption_prompt,ia3")) == 0
    rows = summaries(output)
    assert rows["ia3", "peftkit"]["score"] >= 0
    assert rows["adaption_prompt", "peftkit"]["error"].startswith(
        "does not apply to this model: adaption prompts need a llama, mistral, gpt2 model, not 'bert'")


@pytest.mark.parametrize("flag, value, named", [
    ("--max-steps", "0", "max_steps (--max-steps) must be a whole number ≥ 1"),
    ("--batch-size", "0", "batch_size (--batch-size) must be a whole number ≥ 1"),
    ("--epochs", "-1", "epochs (--epochs) must be a finite number > 0"),
    ("--threads", "0", "argument --threads: must be a whole number ≥ 1, got 0"),
    ("--train", "missing.csv", "missing.csv: data file not found"),
])
def test_bench_refuses_a_bad_budget_or_file_before_running(flag, value, named, model_dir, data, tmp_path, capsys):
    args = bench_args(model_dir, data, tmp_path / "bench", "--methods", "lora")
    if flag in args:
        args[args.index(flag) + 1] = value
    else:
        args += [flag, value]
    assert main(args) == 2
    error = capsys.readouterr().err
    assert named in error and error.count("\n") == 1
    assert not (tmp_path / "bench").exists()


def test_bench_rows_reasons_peft_twins_and_files(model_dir, data, tmp_path, capsys):
    options = tmp_path / "methods.yaml"
    options.write_text("lora:\n  - {r: 2}\n  - {r: 4}\n")
    output = tmp_path / "bench"
    assert main(bench_args(model_dir, data, output, "--methods", "lora,prefix_tuning", "--options", str(options),
                           "--vs-peft")) == 0
    rows = summaries(output)
    assert list(rows) == [("full", "peftkit"), ("lora r=2", "peftkit"), ("lora r=2", "peft"),
                          ("lora r=4", "peftkit"), ("lora r=4", "peft"),
                          ("prefix_tuning", "peftkit"), ("prefix_tuning", "peft")]
    full, lora, lora_peft = rows["full", "peftkit"], rows["lora r=2", "peftkit"], rows["lora r=2", "peft"]
    assert full["trainable"] == full["total"] and full["trainable_percent"] == 100
    assert (lora["trainable"], lora["total"]) == expected_lora_parameters(model_dir, 2)
    assert lora_peft["trainable"] == lora["trainable"]
    for summary in (full, lora, lora_peft):
        assert 0 <= summary["score"] <= 1 and summary["step_seconds"] > 0 and summary["peak_mib"] > 0
        assert summary["activation_mib"] > 0 and summary["latency_unmerged_ms"] > 0
        assert summary["examples_per_second"] == pytest.approx(8 / summary["step_seconds"])
    assert lora["latency_merged_ms"] > 0 and full["latency_merged_ms"] is None
    assert lora["vs_full"]["step_seconds"] == pytest.approx(lora["step_seconds"] / full["step_seconds"])
    assert lora["vs_peft"]["peak_mib"] == pytest.approx(lora["peak_mib"] / lora_peft["peak_mib"])
    assert "no weight to merge" in rows["prefix_tuning", "peftkit"]["merge_note"]
    table = (output / "bench.md").read_text()
    assert table.count("\n| ") == 1 + len(rows)
    for plot in ("score_vs_parameters.png", "score_vs_memory.png"):
        assert (output / plot).read_bytes().startswith(PNG)
    saved = json.loads((output / "bench.json").read_text())
    environment = saved["environment"]
    assert environment["device"] == "cpu" and environment["threads"] == 1 and "torch" in environment["versions"]
    assert saved["command"].startswith("peftkit bench --model ") and saved["command"].endswith("--vs-peft")
    assert saved["date"] == datetime.date.today().isoformat()
    assert "| lora r=2 | peft |" in capsys.readouterr().out


def test_killed_bench_continues_with_the_finished_runs(model_dir, data, tmp_path):
    output = tmp_path / "bench"
    assert main(bench_args(model_dir, data, output, "--methods", "lora")) == 0
    finished = {path.name: path.read_bytes() for path in (output / "runs").iterdir()}
    assert sorted(finished) == ["full-seed42.json", "lora-seed42.json"]

    command = [sys.executable, "-m", "peftkit", *bench_args(model_dir, data, output, "--methods", "lora,ia3")]
    bench = subprocess.Popen(command, start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while not (output / "logs" / "ia3-seed42.log").exists() and time.monotonic() < deadline:
        time.sleep(0.2)
    os.killpg(bench.pid, signal.SIGKILL)  # the bench and its worker, mid-run
    bench.wait()
    assert not (output / "runs" / "ia3-seed42.json").exists()

    assert main(bench_args(model_dir, data, output, "--methods", "lora,ia3")) == 0
    for name, content in finished.items():
        assert (output / "runs" / name).read_bytes() == content  # read back, not run again
    assert [row for row, _ in summaries(output)] == ["full", "lora", "ia3"]


def test_other_settings_in_the_same_folder_are_refused(model_dir, data, tmp_path, capsys):
    output = tmp_path / "bench"
    output.mkdir()
    (output / "bench-settings.json").write_text(json.dumps({"max_steps": 5}))
    assert main(bench_args(model_dir, data, output, "--methods", "lora")) == 2
    error = capsys.readouterr().err.strip()
    assert error.startswith("peftkit: error:") and "other settings" in error and "max_steps 5 -> 3" in error
    assert not (output / "runs").exists()


def test_bad_seeds_are_one_line(tmp_path, capsys):
    assert main(["bench", "--seeds", "1,x", "--output", str(tmp_path / "b")]) == 2
    error = capsys.readouterr().err.strip()
    assert error == "peftkit: error: --seeds must be whole numbers separated by commas, got '1,x'"


def test_one_worker_for_all_jobs_measures_what_a_worker_per_job_does(model_dir, data, tmp_path):
    from peftkit.bench.rows import bench_rows
    from peftkit.bench.runner import BenchSettings, run_bench

    settings = BenchSettings(model=str(model_dir), train=str(data / "train.csv"), eval=str(data / "dev.jsonl"),
                             text_column="review", label_column="sentiment", max_steps=10, batch_size=8,
                             max_length=16, threads=1)  # 10 steps: one logged loss
    runs = {shared: run_bench(bench_rows(["lora", "ia3"]), settings, [42], tmp_path / str(shared), one_worker=shared)
            for shared in (False, True)}
    pids = {shared: {record["worker_pid"] for record in run.records} for shared, run in runs.items()}
    assert len(pids[True]) == 1 and len(pids[False]) == 3  # full, lora, ia3
    for alone, shared in zip(runs[False].records, runs[True].records, strict=True):
        assert alone["row"] == shared["row"] and alone["score"] == shared["score"]
        assert len(alone["losses"]) == 1 and alone["losses"] == pytest.approx(shared["losses"], abs=1e-6)
        assert alone["activation_bytes"] == shared["activation_bytes"]
        assert (alone["trainable"], alone["total"]) == (shared["trainable"], shared["total"])
    assert (tmp_path / "True" / "logs" / "lora-seed42.log").is_file()
