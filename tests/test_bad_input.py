"""A catalogue of bad input, grouped by kind: every case ends as one line naming the problem and exit code 2,
before any training runs, and leaves the user's data, model and adapter folders as they were. (Option values
have their own catalogue in ``tests/recipes/test_option_rules.py``.)"""

from __future__ import annotations

import hashlib
import json
import pickle
import shutil
from pathlib import Path

import pytest

from peftkit.cli import main


def digest(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture(autouse=True)
def inputs_unchanged(model_dir, data):
    """Every case leaves the shared model and data folders byte for byte as they were."""
    before = digest(model_dir), digest(data)
    yield
    assert (digest(model_dir), digest(data)) == before


def refused(argv: list[str], capsys, fragment: str) -> str:
    code = main(argv)
    error = capsys.readouterr().err
    assert code == 2, error
    assert error.startswith("peftkit: error: ") and error.count("\n") == 1, error
    assert fragment in error, error
    return error


def rows_file(folder: Path, name: str, rows: list[dict]) -> Path:
    path = folder / name
    if name.endswith(".csv"):
        path.write_text(",".join(rows[0]) + "\n" + "".join(",".join(str(v) for v in r.values()) + "\n" for r in rows))
    else:
        path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def labelled(count: int = 8, label=lambda i: "pos" if i % 2 else "neg") -> list[dict]:
    return [{"text": f"the film was good {i}", "label": label(i)} for i in range(count)]


def with_row(row_number: int, value) -> list[dict]:
    """Labelled rows whose ``row_number``-th (from 1) label is ``value``."""
    rows = labelled()
    rows[row_number - 1]["label"] = value
    return rows


# --- data files ------------------------------------------------------------------------------------------------

DATA_CASES = {
    "label is an object": ("bad.jsonl", lambda: with_row(3, {"a": 1}), "row 3 has a label that is a JSON object"),
    "label is a list": ("bad.jsonl", lambda: with_row(2, [1, 2]), "row 2 has a label that is a JSON list"),
    "label is NaN (JSON)": ("bad.jsonl", lambda: with_row(4, float("nan")), "row 4 has a missing (NaN) label"),
    "label is 'nan' (CSV)": ("bad.csv", lambda: with_row(5, "nan"), "row 5 has a missing (NaN) label"),
    "label is null": ("bad.jsonl", lambda: with_row(6, None), "row 6 has no value in column 'label'"),
    "label is empty (CSV)": ("bad.csv", lambda: with_row(1, ""), "row 1 has no value in column 'label'"),
    "one class": ("bad.csv", lambda: labelled(label=lambda i: "pos"), "every row has the label 'pos'"),
    "one class, numbers": ("bad.jsonl", lambda: labelled(label=lambda i: 1 if i % 2 else 1.0),
                           "every row has the label '1'"),
    "text is a number": ("bad.jsonl", lambda: [{**r, "text": 5} if i == 2 else r for i, r in enumerate(labelled())],
                         "row 3 holds int 5 in text column 'text'"),
    "text is empty": ("bad.csv", lambda: [{**r, "text": ""} if i == 0 else r for i, r in enumerate(labelled())],
                      "row 1 has no text in column 'text'"),
}


@pytest.mark.parametrize("case", list(DATA_CASES))
def test_bad_rows_in_a_training_file(case, model_dir, tmp_path, capsys):
    name, rows, fragment = DATA_CASES[case]
    path = rows_file(tmp_path, name, rows())
    before = path.read_bytes()
    refused(["train", "--model", str(model_dir), "--train", str(path), "--output", str(tmp_path / "out")], capsys,
            fragment)
    assert path.read_bytes() == before and not (tmp_path / "out").exists()


RAW_FILES = {
    "duplicate CSV column": ("dup.csv", b"text,label,text\na,pos,b\nc,neg,d\n",
                             "dup.csv:1: column 'text' appears more than once in the header"),
    "duplicate JSON key": ("dup.jsonl",
                           b'{"text": "a", "label": "pos"}\n{"text": "b", "label": "neg", "label": "pos"}\n',
                           "dup.jsonl:2: key 'label' appears more than once"),
    "duplicate key, JSON array": ("dup.json", b'[{"text": "a", "text": "b", "label": "pos"}]',
                                  "key 'text' appears more than once"),
    "empty file": ("empty.csv", b"", "the file holds no rows"),
    "header only": ("header.csv", b"text,label\n", "the file holds no rows"),
    "blank JSONL": ("blank.jsonl", b"\n\n", "the file holds no rows"),
    "a row with too many fields": ("wide.csv", b"text,label\na,pos\nb,neg,extra\n", "wide.csv:3: the row has 3 fields"),
    "a row with too few fields": ("narrow.csv", b"text,label\na,pos\nb\n", "narrow.csv:3: the row has 1 fields"),
    "not UTF-8": ("latin1.csv", "text,label\ncafé,pos\n".encode("latin-1"), "not UTF-8 text"),
    "unsupported suffix": ("data.xlsx", b"PK\x03\x04", "unsupported file type '.xlsx'"),
    "broken JSON line": ("broken.jsonl", b'{"text": "a", "label": "pos"}\n{"text": "b", \n',
                         "broken.jsonl:2: not valid JSON"),
    "a JSON line that is a list": ("list.jsonl", b'["a", "pos"]\n', "expected a JSON object per line, got list"),
    "a JSON array of numbers": ("numbers.json", b"[1, 2, 3]", "expected a JSON array of objects"),
    "broken JSON array": ("broken.json", b'[{"text": "a"', "not valid JSON"),
    "no label column": ("nolabel.csv", b"text,score\na,1\nb,2\n", "cannot tell which column holds the label"),
    "no text column": ("notext.jsonl", b'{"a": 1, "b": 2, "label": "x"}\n{"a": 1, "b": 3, "label": "y"}\n',
                       "cannot tell which column holds the text"),
}


@pytest.mark.parametrize("case", list(RAW_FILES))
def test_unreadable_training_files(case, model_dir, tmp_path, capsys):
    name, content, fragment = RAW_FILES[case]
    (tmp_path / name).write_bytes(content)
    refused(["train", "--model", str(model_dir), "--train", str(tmp_path / name), "--output", str(tmp_path / "out")],
            capsys, fragment)
    assert (tmp_path / name).read_bytes() == content and not (tmp_path / "out").exists()


COLUMN_CASES = {
    "missing --label-column": (["--label-column", "nope"], "column 'nope' (--label-column) not found"),
    "missing --text-column": (["--text-column", "body"], "column 'body' (--text-column) not found"),
    "missing --text-pair-column": (["--text-pair-column", "other"], "column 'other' (--text-pair-column) not found"),
    "missing training file": (["--train", "no-such.csv"], "no-such.csv: data file not found"),
    "a folder as the training file": (["--train", "."], "data file not found"),
    "missing eval file": (["--eval", "no-such-dev.jsonl"], "no-such-dev.jsonl: data file not found"),
}


@pytest.mark.parametrize("case", list(COLUMN_CASES))
def test_columns_and_paths_that_are_not_there(case, model_dir, data, tmp_path, capsys):
    extra, fragment = COLUMN_CASES[case]
    argv = ["train", "--model", str(model_dir), "--train", str(data / "train.csv"), "--text-column", "review",
            "--label-column", "sentiment", "--output", str(tmp_path / "out")]
    for flag, value in zip(extra[::2], extra[1::2]):
        if flag in argv:
            argv[argv.index(flag) + 1] = value
        else:
            argv += [flag, value]
    refused(argv, capsys, fragment)


def test_an_eval_label_never_seen_in_training_names_it(model_dir, data, tmp_path, capsys):
    dev = rows_file(tmp_path, "dev.jsonl", [{"review": "a film", "sentiment": "meh"}])
    refused(["train", "--model", str(model_dir), "--train", str(data / "train.csv"), "--eval", str(dev),
             "--output", str(tmp_path / "out")], capsys,
            "labels the training data never had (labels: neg, pos): 'meh' (row 1)")


def test_labels_written_as_number_text_and_float_are_one_label(model_dir, tmp_path, capsys):
    values = [1, "1", 1.0, 0, "0", 0.0]
    path = rows_file(tmp_path, "mixed.jsonl", labelled(24, label=lambda i: values[i % 6]))
    assert main(["train", "--model", str(model_dir), "--train", str(path), "--max-steps", "1", "--batch-size", "4",
                 "--output", str(tmp_path / "out")]) == 0
    assert json.loads((tmp_path / "out" / "peftkit_task.json").read_text())["labels"] == ["0", "1"]
    assert "2 labels" in capsys.readouterr().out


# --- model folders ---------------------------------------------------------------------------------------------


class Payload:
    """A pickle that would run a shell command when loaded."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        import os

        return os.system, (f"touch {self.marker}",)


def _no_weights(folder: Path) -> None:
    (folder / "model.safetensors").unlink()


def _truncated(folder: Path) -> None:
    weights = folder / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])


def _tiny_header(folder: Path) -> None:
    (folder / "model.safetensors").write_bytes(b"\x00\x01")


def _no_tokenizer(folder: Path) -> None:
    for name in ("tokenizer.json", "vocab.txt"):
        (folder / name).unlink(missing_ok=True)


def _no_config(folder: Path) -> None:
    (folder / "config.json").unlink()


def _config_not_json(folder: Path) -> None:
    (folder / "config.json").write_text("{ not json")


def _pickled_payload(folder: Path) -> None:
    (folder / "model.safetensors").unlink()
    with open(folder / "pytorch_model.bin", "wb") as handle:
        pickle.dump(Payload(folder / "PWNED"), handle)


MODEL_CASES = {
    "no weights": (_no_weights, "has no weights"),
    "weights cut short": (_truncated, "model.safetensors: unreadable weights, the file may be cut short"),
    "weights header cut short": (_tiny_header, "unreadable weights"),
    "no tokenizer files": (_no_tokenizer, "has no tokenizer files"),
    "no config.json": (_no_config, "has no config.json"),
    "config.json not JSON": (_config_not_json, "config.json: not valid JSON"),
    "a pickle that runs code": (_pickled_payload, "cannot load a model from"),
}


@pytest.mark.parametrize("case", list(MODEL_CASES))
@pytest.mark.parametrize("command", ["train", "plan"])
def test_damaged_model_folders(case, command, model_dir, data, tmp_path, capsys):
    damage, fragment = MODEL_CASES[case]
    folder = tmp_path / "model"
    shutil.copytree(model_dir, folder)
    damage(folder)
    before = digest(folder)
    argv = (["train", "--train", str(data / "train.csv"), "--output", str(tmp_path / "out")] if command == "train"
            else ["plan"])
    refused([*argv, "--model", str(folder)], capsys, fragment)
    assert digest(folder) == before and not (folder / "PWNED").exists() and not (tmp_path / "out").exists()


@pytest.mark.parametrize("name", ["bert-base-uncased", "org/model-name", "missing-folder"])
def test_a_hub_name_or_missing_folder_is_refused_without_a_download(name, data, tmp_path, capsys):
    refused(["train", "--model", name, "--train", str(data / "train.csv"), "--output", str(tmp_path / "out")],
            capsys, f"model folder '{name}' not found (peftkit loads local model folders only")


# --- output folders --------------------------------------------------------------------------------------------


def _train_to(model_dir, data, output, *extra) -> list[str]:
    return ["train", "--model", str(model_dir), "--train", str(data / "train.csv"), "--max-steps", "2",
            "--batch-size", "8", "--output", str(output), *extra]


def test_an_output_that_is_a_file_is_refused_before_training(model_dir, data, tmp_path, capsys):
    target = tmp_path / "result.txt"
    target.write_text("keep me")
    refused(_train_to(model_dir, data, target), capsys, "is an existing file, not a folder")
    assert target.read_text() == "keep me"


def test_an_output_inside_a_file_is_refused(model_dir, data, tmp_path, capsys):
    (tmp_path / "file").write_text("x")
    refused(_train_to(model_dir, data, tmp_path / "file" / "out"), capsys, "is a file, so the folder cannot be made")


def test_an_output_that_is_the_model_folder_is_refused(model_dir, data, capsys):
    refused(_train_to(model_dir, data, model_dir, "--method", "full"), capsys, "is this command's input")


def test_an_output_that_cannot_be_written_is_refused_before_training(model_dir, data, capsys):
    refused(_train_to(model_dir, data, "/sys/peftkit-out"), capsys, "cannot write in /sys")


def test_another_runs_checkpoints_are_kept_unless_resume_or_overwrite(model_dir, data, tmp_path, capsys):
    output = tmp_path / "run"
    checkpoint = output / "checkpoints" / "checkpoint-4"
    checkpoint.mkdir(parents=True)
    (checkpoint / "trainer_state.json").write_text("{}")
    before = digest(output)
    refused(_train_to(model_dir, data, output, "--save-steps", "1"), capsys, "holds another run's checkpoints")
    refused(_train_to(model_dir, data, output), capsys, "pass --resume to continue that run or --overwrite")
    assert digest(output) == before
    assert main(_train_to(model_dir, data, output, "--overwrite")) == 0
    assert not (output / "checkpoints").exists() and (output / "adapter_model.safetensors").is_file()


def test_resume_without_a_checkpoint_names_the_folder(model_dir, data, tmp_path, capsys):
    refused(_train_to(model_dir, data, tmp_path / "fresh", "--resume"), capsys, "--resume: no checkpoint in")


# --- adapters: eval, generate, info, merge -----------------------------------------------------------------------


@pytest.fixture(scope="module")
def adapter(model_dir, data, tmp_path_factory):
    output = tmp_path_factory.mktemp("adapter") / "adapter"
    assert main(_train_to(model_dir, data, output, "--text-column", "review", "--label-column", "sentiment")) == 0
    return output


def test_merge_refuses_to_write_over_its_inputs_or_a_file(adapter, model_dir, tmp_path, capsys):
    before = digest(adapter)
    for output, fragment in ((adapter, "is this command's input"), (model_dir, "is this command's input")):
        refused(["merge", "--adapter", str(adapter), "--model", str(model_dir), "--output", str(output)], capsys,
                fragment)
    refused(["merge", "--adapter", str(adapter), "--output", str(model_dir)], capsys, "is this command's input")
    (tmp_path / "file").write_text("x")
    refused(["merge", "--adapter", str(adapter), "--output", str(tmp_path / "file")], capsys, "is an existing file")
    assert digest(adapter) == before and (tmp_path / "file").read_text() == "x"


def test_merge_replaces_a_folder_only_with_overwrite_and_leaves_no_scratch(adapter, tmp_path, capsys):
    output = tmp_path / "merged"
    output.mkdir()
    (output / "old.txt").write_text("old")
    refused(["merge", "--adapter", str(adapter), "--output", str(output)], capsys, "is a folder that is not empty")
    assert (output / "old.txt").read_text() == "old"
    assert main(["merge", "--adapter", str(adapter), "--output", str(output), "--overwrite"]) == 0
    assert not (output / "old.txt").exists() and (output / "config.json").is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["merged"]  # the staging folders are gone


def test_a_classification_adapter_is_not_a_generator(adapter, capsys):
    refused(["generate", "--adapter", str(adapter), "--prompt", "hi"], capsys,
            "a text-classification adapter, not a causal-lm one")


def test_eval_reads_the_file_before_loading_the_model(adapter, tmp_path, capsys):
    path = rows_file(tmp_path, "other.csv", [{"text": "a film", "grade": "pos"}])
    refused(["eval", "--adapter", str(adapter), "--eval", str(path)], capsys,
            "cannot tell which column holds the label; pass --label-column")


def _adapter_without_config(folder: Path) -> None:
    (folder / "adapter_config.json").unlink()


def _adapter_config_not_json(folder: Path) -> None:
    (folder / "adapter_config.json").write_text("[1, 2")


def _adapter_weights_cut(folder: Path) -> None:
    weights = folder / "adapter_model.safetensors"
    weights.write_bytes(weights.read_bytes()[:100])


def _no_task_file(folder: Path) -> None:
    (folder / "peftkit_task.json").unlink()


ADAPTER_CASES = {
    "no adapter config": (_adapter_without_config, "adapter_config.json"),
    "adapter config not JSON": (_adapter_config_not_json, "not valid JSON"),
    "adapter weights cut short": (_adapter_weights_cut, "adapter_model.safetensors"),
    "no task file": (_no_task_file, "peftkit task file"),
}


# info describes adapters from any tool, so a folder without peftkit's task file is no error there
ADAPTER_COMMANDS = [(command, case) for command in ("eval", "merge", "info") for case in ADAPTER_CASES
                    if (command, case) != ("info", "no task file")]


@pytest.mark.parametrize("command, case", ADAPTER_COMMANDS)
def test_damaged_adapter_folders(command, case, adapter, data, tmp_path, capsys):
    damage, fragment = ADAPTER_CASES[case]
    folder = tmp_path / "adapter"
    shutil.copytree(adapter, folder)
    damage(folder)
    argv = {"eval": ["eval", "--adapter", str(folder), "--eval", str(data / "dev.jsonl")],
            "merge": ["merge", "--adapter", str(folder), "--output", str(tmp_path / "merged")],
            "info": ["info", str(folder)]}[command]
    refused(argv, capsys, fragment)
    assert not (tmp_path / "merged").exists()


# --- flags of every subcommand -------------------------------------------------------------------------------------

FLAG_CASES = {
    "generate --max-new-tokens 0": (["generate", "--adapter", "a", "--prompt", "p", "--max-new-tokens", "0"],
                                    "argument --max-new-tokens: must be a whole number ≥ 1, got 0"),
    "generate --max-new-tokens -3": (["generate", "--adapter", "a", "--prompt", "p", "--max-new-tokens", "-3"],
                                     "must be a whole number ≥ 1, got -3"),
    "generate --max-new-tokens many": (["generate", "--adapter", "a", "--prompt", "p", "--max-new-tokens", "many"],
                                       "must be a whole number ≥ 1, got 'many'"),
    "generate without --prompt": (["generate", "--adapter", "a"], "the following arguments are required: --prompt"),
    "eval --batch-size 0": (["eval", "--adapter", "a", "--eval", "e.csv", "--batch-size", "0"],
                            "argument --batch-size: must be a whole number ≥ 1"),
    "bench --threads 0": (["bench", "--threads", "0"], "argument --threads: must be a whole number ≥ 1"),
    "bench --seeds x": (["bench", "--seeds", "x,y"], "--seeds must be whole numbers separated by commas"),
    "bench --device tpu": (["bench", "--device", "tpu"], "argument --device: invalid choice: 'tpu'"),
    "train --lr abc": (["train", "--lr", "abc"], "argument --lr: invalid float value: 'abc'"),
    "train --batch-size 2.5": (["train", "--batch-size", "2.5"], "argument --batch-size: invalid int value"),
    "train --task regression": (["train", "--task", "regression"], "argument --task: invalid choice: 'regression'"),
    "train --recipe distil": (["train", "--recipe", "distil"], "recipe (--recipe) must be one of pet, list"),
    "train --method bogus": (["train", "--method", "bogus"], "unknown method 'bogus'"),
    "train -o without =": (["train", "-o", "r16"], "method option 'r16' must look like KEY=VALUE"),
    "an unknown flag": (["train", "--learning-rate", "1"], "unrecognized arguments: --learning-rate"),
    "an unknown command": (["fit"], "argument command: invalid choice: 'fit'"),
    "no command": ([], "the following arguments are required: command"),
    "info of a missing folder": (["info", "nowhere"], "nowhere: adapter folder not found"),
    "merge of a missing adapter": (["merge", "--adapter", "nowhere", "--output", "o"], "nowhere/peftkit_task.json"),
    "vocab-reduce without corpus or scripts": (["vocab-reduce", "--output", "o"], "needs --corpus FILE or --scripts"),
    "vocab-reduce --scripts klingon": (["vocab-reduce", "--scripts", "klingon", "--output", "o"],
                                       "unknown script 'klingon'"),
    "vocab-reduce --scripts latn": (["vocab-reduce", "--scripts", "latin,latn", "--output", "o"],
                                    "unknown script 'latn': no Unicode letter belongs to it (did you mean latin"),
    "vocab-reduce of a missing corpus": (["vocab-reduce", "--corpus", "none.txt", "--output", "o"], "none.txt"),
}


@pytest.mark.parametrize("case", list(FLAG_CASES))
def test_bad_flags_of_every_subcommand(case, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    argv, fragment = FLAG_CASES[case]
    refused(argv, capsys, fragment)
    assert list(tmp_path.iterdir()) == []  # nothing written


def test_vocab_reduce_refuses_to_write_over_its_model(mlm_dir, capsys):
    before = digest(mlm_dir)
    refused(["vocab-reduce", "--model", str(mlm_dir), "--scripts", "latin", "--output", str(mlm_dir)], capsys,
            "is this command's input")
    assert digest(mlm_dir) == before


# --- method options (-o) and config files ------------------------------------------------------------------------

OPTION_CASES = {
    "an unclosed regex": ("target_modules=(unclosed", "target_modules '(unclosed' is not a valid regular expression"),
    "rank_pattern a number": ("rank_pattern=5", "LoraConfig.rank_pattern must be a mapping"),
    "r a word": ("r=eight", "LoraConfig.r must be a whole number, got 'eight'"),
    "r zero": ("r=0", "r must be"),
    "dropout a word": ("lora_dropout=abc", "LoraConfig.lora_dropout must be a number"),
    "target_modules numbers": ("target_modules=[1,2]", "LoraConfig.target_modules must be a list of texts"),
    "an unknown field": ("rank=8", "unknown field 'rank' for LoraConfig"),
    "a misspelt field": ("lora_alfa=8", "did you mean 'lora_alpha'?"),
    "negative layer index": ("layers_to_transform=[-1]", "layers_to_transform must hold non-negative layer indices"),
    "nothing matched": ("target_modules=[no_such_module]", "no_such_module"),
    "a value that is not YAML": ("target_modules=[a, b", "method option 'target_modules=[a, b': cannot read the value"),
}


@pytest.mark.parametrize("case", list(OPTION_CASES))
@pytest.mark.parametrize("command", ["train", "plan"])
def test_bad_method_options(case, command, model_dir, data, tmp_path, capsys):
    option, fragment = OPTION_CASES[case]
    argv = (["train", "--train", str(data / "train.csv"), "--output", str(tmp_path / "out")] if command == "train"
            else ["plan"])
    refused([*argv, "--model", str(model_dir), "-o", option], capsys, fragment)
    assert not (tmp_path / "out").exists()


CONFIG_FILES = {
    "missing": (None, "not found"),
    "YAML syntax error": ("epochs: [1\n", "config.yaml"),
    "a list, not a mapping": ("- epochs: 1\n", "a mapping of option names to values"),
    "an unknown option": ("learning_rate: 0.1\n", "unknown option 'learning_rate'"),
    "max_steps a word": ("max_steps: two\n", "max_steps (--max-steps) must be a whole number ≥ 1, got 'two'"),
    "method_options a text": ("method_options: r=8\n", "method_options (--method-options) must be a mapping"),
    "an unknown method option": ("method_options: {rank: 8}\n", "unknown field 'rank' for LoraConfig"),
}


@pytest.mark.parametrize("case", list(CONFIG_FILES))
def test_bad_config_files(case, model_dir, data, tmp_path, capsys):
    content, fragment = CONFIG_FILES[case]
    config = tmp_path / "config.yaml"
    if content is not None:
        config.write_text(content)
    refused(["train", "--model", str(model_dir), "--train", str(data / "train.csv"), "--config", str(config),
             "--output", str(tmp_path / "out")], capsys, fragment)
    assert not (tmp_path / "out").exists()
