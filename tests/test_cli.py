"""The ``peftkit`` command end to end on a tiny BERT folder (with a real WordPiece tokenizer)."""

import json
import subprocess
import sys

import pytest
from transformers import BertForSequenceClassification

import peftkit
from peftkit.cli import main


def test_train_on_a_users_csv_then_eval_info_and_merge(model_dir, data, tmp_path, capsys):
    out = tmp_path / "adapter"
    code = main(["train", "--model", str(model_dir), "--train", str(data / "train.csv"), "--eval",
                 str(data / "dev.jsonl"), "--text-column", "review", "--label-column", "sentiment", "--epochs", "8",
                 "--lr", "3e-3", "--batch-size", "16", "--output", str(out), "-o", "r=4"])
    printed = capsys.readouterr().out
    assert code == 0
    accuracy = float(printed.split("eval accuracy:")[1].split()[0])
    assert accuracy >= 0.9
    assert "trainable parameters:" in printed and "peak memory:" in printed and str(out) in printed
    assert (out / "adapter_model.safetensors").is_file() and (out / "peftkit_task.json").is_file()

    assert main(["eval", "--adapter", str(out), "--eval", str(data / "dev.jsonl")]) == 0
    assert f"  accuracy {accuracy:.4f} (" in capsys.readouterr().out

    assert main(["info", str(out)]) == 0
    info = capsys.readouterr().out
    assert "LORA" in info and "labels:      neg, pos" in info

    assert main(["merge", "--adapter", str(out), "--output", str(tmp_path / "merged")]) == 0
    merged = BertForSequenceClassification.from_pretrained(tmp_path / "merged")
    assert not any("lora" in name for name, _ in merged.named_parameters())


def test_config_file_with_command_line_overrides(model_dir, data, tmp_path, capsys):
    config = tmp_path / "run.yaml"
    config.write_text(f"model: {model_dir}\ntrain: {data / 'train.csv'}\ntext-column: review\n"
                      f"label_column: sentiment\nepochs: 1\nadapter:\n  r: 2\n  target_modules: [query]\n")
    out = tmp_path / "adapter"
    assert main(["train", "--config", str(config), "--output", str(out), "-o", "r=3"]) == 0
    saved = json.loads((out / "adapter_config.json").read_text())
    assert saved["r"] == 3 and saved["target_modules"] == ["query"]
    assert "12 evaluation examples" in capsys.readouterr().out  # 10% of 120 held out when no --eval


def test_plan_lists_modules_without_training(model_dir, capsys):
    assert main(["plan", "--model", str(model_dir), "-o", "target_modules=all-linear", "-o", "r=2"]) == 0
    printed = capsys.readouterr().out
    assert "bert.encoder.layer.1.output.dense" in printed and "classifier" in printed


USER_DATA = ["--model", "MODEL", "--train", "TRAIN", "--text-column", "review", "--label-column", "sentiment"]


@pytest.mark.parametrize(("arguments", "message"), [
    (["train", "--model", "MODEL", "--train", "missing.csv"], "missing.csv: data file not found"),
    (["train", "--model", "org/some-hub-model"], "model folder 'org/some-hub-model' not found"),
    (["train", "--model", "MODEL", "--train", "TRAIN", "--label-column", "stars"],
     "column 'stars' (--label-column) not found"),
    (["train", *USER_DATA, "-o", "lora_dropout=1.5"], "lora_dropout must be in [0, 1)"),
    (["train", *USER_DATA, "-o", "target_modules=[nothing]"], "matched no module"),
    (["train", *USER_DATA, "-o", "rank=4"], "unknown field 'rank' for LoraConfig (did you mean 'r'?)"),
    (["train", "--config", "nope.yaml"], "nope.yaml: config file not found"),
    (["train", "--config", "CONFIG:epochz: 2"], "unknown option 'epochz'"),
    (["train", "--config", "CONFIG:adapter: {rank: 4}"], "unknown field 'rank' for LoraConfig"),
    (["train", "--config", "CONFIG:epochs: [1"], "not valid YAML/JSON"),
    (["eval", "--adapter", "no-adapter", "--eval", "x.csv"],
     "no-adapter/adapter_config.json: adapter config not found"),
    (["info", "no-adapter"], "adapter folder not found"),
])
def test_bad_input_is_one_line_and_exit_code_2(arguments, message, model_dir, data, tmp_path, capsys):
    arguments = [{"MODEL": str(model_dir), "TRAIN": str(data / "train.csv")}.get(a, a) for a in arguments]
    if arguments[-1].startswith("CONFIG:"):
        (tmp_path / "run.yaml").write_text(f"model: {model_dir}\ntrain: {data / 'train.csv'}\n"
                                           + arguments[-1].removeprefix("CONFIG:") + "\n")
        arguments[-1] = str(tmp_path / "run.yaml")
    assert main(arguments) == 2
    error = capsys.readouterr().err.strip()
    assert error.startswith("peftkit: error:") and message in error and "\n" not in error


def test_unseen_eval_label_is_named(model_dir, data, tmp_path, capsys):
    dev = tmp_path / "dev.csv"
    dev.write_text("review,sentiment\ngood film,pos\nbad film,meh\n")
    code = main(["train", "--model", str(model_dir), "--train", str(data / "train.csv"), "--eval", str(dev),
                 "--text-column", "review", "--label-column", "sentiment"])
    assert code == 2
    assert "labels the training data never had (labels: neg, pos): 'meh' (row 2)" in capsys.readouterr().err


def test_the_installed_command_exits_2_without_a_traceback(tmp_path):
    result = subprocess.run([sys.executable, "-m", "peftkit", "train", "--train", str(tmp_path / "none.jsonl")],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 2
    assert "Traceback" not in result.stderr and "none.jsonl: data file not found" in result.stderr


@pytest.mark.parametrize("method", ["lora", "bottleneck", "ia3", "bitfit", "ln_tuning", "prompt_tuning",
                                    "p_tuning", "prefix_tuning", "vl_pet", "apet", "adalora", "increlora"])
def test_plan_and_train_every_method(method, model_dir, data, tmp_path, capsys):
    assert main(["plan", "--model", str(model_dir), "--method", method]) == 0
    summary = capsys.readouterr().out.strip().splitlines()[-1]
    assert summary.startswith(f"{method}: ") and "new parameters" in summary
    out = tmp_path / "adapter"
    assert main(["train", "--model", str(model_dir), "--train", str(data / "train.csv"), "--epochs", "1",
                 "--method", method, "--output", str(out)]) == 0
    assert f"peftkit train: {method} on" in capsys.readouterr().out
    assert main(["eval", "--adapter", str(out), "--eval", str(data / "dev.jsonl")]) == 0


def test_full_fine_tuning_is_the_reference_method(model_dir, data, tmp_path, capsys):
    assert main(["train", "--model", str(model_dir), "--train", str(data / "train.csv"), "--epochs", "1",
                 "--method", "full", "--output", str(tmp_path / "full")]) == 0
    printed = capsys.readouterr().out
    assert "trainable parameters:" in printed and "(100.00%)" in printed
    assert main(["train", "--model", str(model_dir), "--train", str(data / "train.csv"), "--method", "full",
                 "-o", "r=4"]) == 2
    assert "do not apply to full fine-tuning" in capsys.readouterr().err


def test_train_with_the_density_loss_reports_density_before_and_after(model_dir, data, tmp_path, capsys):
    code = main(["train", "--model", str(model_dir), "--train", str(data / "train.csv"), "--eval",
                 str(data / "dev.jsonl"), "--text-column", "review", "--label-column", "sentiment", "--epochs", "8",
                 "--lr", "3e-3", "--batch-size", "16", "--output", str(tmp_path / "adapter"), "-o", "r=4",
                 "--density-loss", "1"])
    printed = capsys.readouterr().out
    assert code == 0
    before, after = (float(x.rstrip(",")) for x in printed.split("feed-forward density:")[1].split()[0:3:2])
    assert 0.9 < before <= 1 and 0 < after <= 1 and after != before  # GELU: the effect is in test_density.py


def test_a_negative_density_loss_weight_is_a_one_line_error(model_dir, data, tmp_path, capsys):
    code = main(["train", "--model", str(model_dir), "--train", str(data / "train.csv"), "--text-column", "review",
                 "--label-column", "sentiment", "--output", str(tmp_path / "adapter"), "--density-loss", "-1"])
    assert code == 2
    assert "density_loss (--density-loss) must be a finite number ≥ 0" in capsys.readouterr().err


def test_prompt_transfer_with_a_teacher_from_the_command_line(model_dir, data, tmp_path, capsys):
    common = ["--model", str(model_dir), "--train", str(data / "train.csv"), "--epochs", "1",
              "--method", "prompt_tuning"]
    assert main(["train", *common, "--output", str(tmp_path / "source")]) == 0
    assert main(["train", *common, "--output", str(tmp_path / "student"), "--init-prompt", str(tmp_path / "source"),
                 "--teacher", str(tmp_path / "source"), "--distill-weight", "0.5"]) == 0
    assert "peftkit train: prompt_tuning on" in capsys.readouterr().out
    (data / "three.csv").write_text("review,sentiment\n" + "".join(f"the film {i},{'abc'[i % 3]}\n" for i in range(30)))
    code = main(["train", "--model", str(model_dir), "--train", str(data / "three.csv"), "--method", "prompt_tuning",
                 "--teacher", str(tmp_path / "source"), "--output", str(tmp_path / "bad")])
    assert code == 2
    assert "teacher" in capsys.readouterr().err and not (tmp_path / "bad").exists()


def test_version_and_help_answer_without_loading_torch_and_print_nothing_else():
    """``peftkit --help`` / ``--version`` import neither torch nor transformers, and nothing goes to stderr."""
    check = ("import sys; from peftkit.cli import main\n"
             "assert main(['--version']) == 0\n"
             "heavy = [m for m in ('torch', 'transformers', 'peft', 'torchao') if m in sys.modules]\n"
             "assert not heavy, heavy")
    result = subprocess.run([sys.executable, "-c", check], capture_output=True, text=True)
    assert result.returncode == 0 and result.stderr == "", result
    assert result.stdout.strip() == f"peftkit {peftkit.__version__}"
    result = subprocess.run([sys.executable, "-m", "peftkit", "--help"], capture_output=True, text=True)
    assert result.returncode == 0 and "train" in result.stdout and result.stderr == ""


def test_a_command_prints_no_library_warnings_before_its_own_output(tmp_path):
    result = subprocess.run([sys.executable, "-m", "peftkit", "info", str(tmp_path / "missing")],
                            capture_output=True, text=True)
    assert result.returncode == 2 and result.stderr.splitlines() == [
        f"peftkit: error: {tmp_path / 'missing'}: adapter folder not found (peftkit loads local folders only)"]


def test_train_without_a_budget_chooses_one_from_the_data_and_says_why(model_dir, data, tmp_path, capsys):
    rows = (data / "train.csv").read_text().splitlines()
    (tmp_path / "small.csv").write_text("\n".join(rows[:21]) + "\n")  # the header and 20 rows
    code = main(["train", "--model", str(model_dir), "--train", str(tmp_path / "small.csv"), "--eval",
                 str(data / "dev.jsonl"), "--text-column", "review", "--label-column", "sentiment",
                 "--output", str(tmp_path / "adapter"), "-o", "r=4"])
    printed = capsys.readouterr().out
    assert code == 0
    # under 5,000 rows: batch 8, 3 steps an epoch; 30 epochs (6,000 rows seen wanted, at most 30); the tiny
    # model's 32 positions cap the length; warm-up 6 % of 90 steps
    assert ("budget:               30 epoch(s) = 90 steps (20 rows: passes until 6,000 rows are seen, at most 30), "
            "batch 8 (20 rows: under 5,000), 32 tokens (the model's positions), warm-up 6 steps") in printed
    assert "training " in printed and " 90 steps)" in printed
    task = json.loads((tmp_path / "adapter" / "peftkit_task.json").read_text())
    assert task["max_length"] == 32
