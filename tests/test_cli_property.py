"""Property: whatever options and data file ``peftkit train`` / ``peftkit eval`` are given on a tiny model, the
command ends with exit 0 and its result, or exit 2 and one line on stderr, never anything else, and no input
file or folder changes."""

from __future__ import annotations

import csv
import io
import json
import math
import uuid

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from peftkit.cli import main
from tests.test_bad_input import digest

REPORT_FILES = ("eval.json", "eval-confusion.png")

FLAG_VALUES = {
    "--lr": ["1e-3", "0", "-1", "nan", "inf", "abc", "5"],
    "--epochs": ["1", "0", "-2", "0.5", "x"],
    "--max-steps": ["1", "2", "0", "-1", "1.5"],
    "--batch-size": ["4", "0", "999", "-3"],
    "--max-length": ["8", "16", "600", "0", "2", "1"],
    "--method": ["lora", "ia3", "bitfit", "prompt_tuning", "adapter", "bogus", "full"],
    "--seed": ["0", "-1", "7"],
    "-o": ["r=2", "r=0", "target_modules=(x", "rank_pattern=5", "lora_dropout=0.5", "num_virtual_tokens=2"],
    "--save-steps": ["1", "0"],
    "--text-column": ["text", "nope"],
    "--label-column": ["label", "text"],
    "--density-loss": ["0.1", "-1"],
}

labels = st.one_of(st.sampled_from(["pos", "neg", "neutral", "nan", "", "1"]), st.integers(-1, 2),
                   st.floats(allow_nan=True, allow_infinity=False, width=16), st.none(), st.booleans(),
                   st.lists(st.integers(), max_size=2), st.dictionaries(st.text(max_size=2), st.integers(), max_size=1))
texts = st.one_of(st.sampled_from(["the film was good", "bad", "great plot", ""]), st.text(max_size=30),
                  st.integers())
rows = st.lists(st.fixed_dictionaries({"text": texts, "label": labels}), min_size=0, max_size=24)


def write(path, content_rows: list[dict], suffix: str) -> None:
    if suffix == ".csv":
        buffer = io.StringIO()
        writer = csv.writer(buffer)
        writer.writerow(["text", "label"])
        for row in content_rows:
            writer.writerow([row["text"], row["label"]])
        path.write_text(buffer.getvalue(), newline="")
    elif suffix == ".json":
        path.write_text(json.dumps(content_rows))
    else:
        path.write_text("".join(json.dumps(row) + "\n" for row in content_rows))


def assert_result_or_one_line(code: int, captured, done: str) -> None:
    event(f"exit {code}")
    if code == 0:
        assert done in captured.out, captured
    else:
        assert code == 2, captured
        assert captured.err.startswith("peftkit: error: ") and captured.err.count("\n") == 1, captured.err


def balanced(count: int) -> list[dict]:
    return [{"text": f"the film was {'good' if i % 2 else 'bad'}", "label": "pos" if i % 2 else "neg"}
            for i in range(count)]


any_rows = st.one_of(rows, st.builds(balanced, st.integers(4, 24)))
suffixes = st.sampled_from([".csv", ".jsonl", ".json"])


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data_rows=any_rows, suffix=suffixes,
       flags=st.dictionaries(st.sampled_from(sorted(FLAG_VALUES)), st.integers(0, 6), max_size=4))
def test_train_ends_with_a_result_or_one_line(data_rows, suffix, flags, model_dir, tmp_path, capsys):
    capsys.readouterr()
    run = tmp_path / uuid.uuid4().hex
    run.mkdir()
    train = run / f"train{suffix}"
    write(train, data_rows, suffix)
    before = train.read_bytes(), digest(model_dir)
    argv = ["train", "--model", str(model_dir), "--train", str(train), "--output", str(run / "out")]
    for flag, choice in flags.items():
        values = FLAG_VALUES[flag]
        argv += [flag, values[choice % len(values)]]
    if "--max-steps" not in flags and "--epochs" not in flags:
        argv += ["--max-steps", "2"]
    code = main(argv)
    assert_result_or_one_line(code, capsys.readouterr(), "adapter saved to")
    assert (train.read_bytes(), digest(model_dir)) == before


@pytest.fixture(scope="module")
def trained(model_dir, tmp_path_factory):
    folder = tmp_path_factory.mktemp("property")
    write(folder / "train.jsonl", balanced(16), ".jsonl")
    assert main(["train", "--model", str(model_dir), "--train", str(folder / "train.jsonl"), "--max-steps", "2",
                 "--batch-size", "4", "--output", str(folder / "adapter")]) == 0
    return folder / "adapter"


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data_rows=any_rows, suffix=suffixes,
       batch_size=st.sampled_from(["1", "3", "0", "-2", "many"]))
def test_eval_ends_with_a_score_or_one_line(data_rows, suffix, batch_size, trained, tmp_path, capsys):
    capsys.readouterr()
    path = tmp_path / f"{uuid.uuid4().hex}{suffix}"
    write(path, data_rows, suffix)
    before = path.read_bytes(), digest(trained)
    code = main(["eval", "--adapter", str(trained), "--eval", str(path), "--batch-size", batch_size])
    captured = capsys.readouterr()
    assert_result_or_one_line(code, captured, "\n  accuracy ")
    after = path.read_bytes(), digest(trained)
    if code == 0:
        accuracy = float(captured.out.split("\n  accuracy ")[1].split()[0])
        assert 0 <= accuracy <= 1 and not math.isnan(accuracy)
        report = json.loads((trained / "eval.json").read_text())["classification"]
        assert report["accuracy"] == pytest.approx(accuracy, abs=5e-5) and report["examples"] == len(data_rows)
        # a successful evaluation writes its report beside the adapter, and changes nothing else
        before, after = (tuple({k: v for k, v in files.items() if k not in REPORT_FILES} if isinstance(files, dict)
                               else files for files in pair) for pair in (before, after))
    assert after == before
