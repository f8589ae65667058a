"""Crash-safe training: a run killed mid-training (or mid-checkpoint) and resumed ends with the same adapter
as one never interrupted, bitwise on CPU; a NaN / inf loss stops with the step named."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import torch
from safetensors.torch import load_file

from peftkit.cli import main


def train_args(model_dir, data, output, *extra) -> list[str]:
    return ["train", "--model", str(model_dir), "--train", str(data / "train.csv"), "--eval", str(data / "dev.jsonl"),
            "--text-column", "review", "--label-column", "sentiment", "--max-steps", "12", "--batch-size", "8",
            "--lr", "5e-3", "--save-steps", "4", "--output", str(output), *extra]


def patched_run(args: list[str], patch: str) -> subprocess.CompletedProcess:
    """Run ``peftkit train`` in a fresh process with ``patch`` applied."""
    script = ("import os, signal, sys\nimport peftkit.recipes.training as training\nfrom peftkit.cli import main\n"
              f"{patch}\nsys.exit(main({args!r}))\n")
    return subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)


def killed_run(args: list[str], patch: str) -> int:
    """Run ``peftkit train`` in a fresh process with ``patch`` applied; it kills itself (SIGKILL)."""
    done = patched_run(args, patch)
    if done.returncode not in (0, -9):
        raise AssertionError(done.stderr[-3000:])
    return done.returncode


def adapter(folder) -> dict[str, torch.Tensor]:
    return load_file(folder / "adapter_model.safetensors")


def assert_same_adapter(first, second) -> None:
    a, b = adapter(first), adapter(second)
    assert a.keys() == b.keys()
    for name in a:
        assert torch.equal(a[name], b[name]), name


def test_killed_and_resumed_run_ends_with_the_same_adapter(model_dir, data, tmp_path, capsys):
    assert main(train_args(model_dir, data, tmp_path / "straight")) == 0
    assert not (tmp_path / "straight" / "checkpoints").exists()  # removed once training ended

    crashed = tmp_path / "crashed"
    kill_at_step_6 = textwrap.dedent("""
        step_end = training.ProgressBar.on_step_end
        def on_step_end(self, args, state, control, **kwargs):
            if state.global_step == 6:
                os.kill(os.getpid(), signal.SIGKILL)
            return step_end(self, args, state, control, **kwargs)
        training.ProgressBar.on_step_end = on_step_end
    """)
    assert killed_run(train_args(model_dir, data, crashed), kill_at_step_6) == -9
    assert sorted(p.name for p in (crashed / "checkpoints").iterdir()) == ["checkpoint-4"]
    assert not (crashed / "adapter_model.safetensors").exists()

    assert main(train_args(model_dir, data, crashed, "--resume")) == 0
    assert_same_adapter(tmp_path / "straight", crashed)
    assert "eval accuracy" in capsys.readouterr().out


def test_kill_while_writing_a_checkpoint_leaves_the_previous_one(model_dir, data, tmp_path):
    crashed = tmp_path / "crashed"
    kill_in_checkpoint_8 = textwrap.dedent("""
        from transformers import Trainer
        save_rng = Trainer._save_rng_state
        def _save_rng_state(self, output_dir):
            if self.state.global_step == 8:  # model and optimizer written, the rest not yet
                os.kill(os.getpid(), signal.SIGKILL)
            return save_rng(self, output_dir)
        Trainer._save_rng_state = _save_rng_state
    """)
    assert killed_run(train_args(model_dir, data, crashed), kill_in_checkpoint_8) == -9
    checkpoints = crashed / "checkpoints"
    assert sorted(p.name for p in checkpoints.iterdir()) == [".staging", "checkpoint-4"]
    assert (checkpoints / ".staging" / "checkpoint-8" / "trainable.safetensors").is_file()  # half written

    assert main(train_args(model_dir, data, crashed, "--resume")) == 0  # from checkpoint-4, not the half one
    assert main(train_args(model_dir, data, tmp_path / "straight")) == 0
    assert_same_adapter(tmp_path / "straight", crashed)


def test_checkpoints_hold_the_trainable_state_only(model_dir, data, tmp_path):
    keep = textwrap.dedent("""
        import shutil
        shutil.rmtree = lambda *args, **kwargs: None  # keep the checkpoints to look at
    """)
    assert killed_run(train_args(model_dir, data, tmp_path / "run"), keep) == 0
    checkpoint = tmp_path / "run" / "checkpoints" / "checkpoint-12"
    saved = load_file(checkpoint / "trainable.safetensors")
    assert saved and all("lora_" in name or "classifier" in name for name in saved)
    assert {"optimizer.pt", "scheduler.pt", "rng_state.pth", "trainer_state.json"} <= {p.name for p in
                                                                                        checkpoint.iterdir()}


def test_resume_without_a_checkpoint_is_one_line(model_dir, data, tmp_path, capsys):
    assert main(train_args(model_dir, data, tmp_path / "new", "--resume")) == 2
    error = capsys.readouterr().err.strip()
    assert error == f"peftkit: error: --resume: no checkpoint in {tmp_path / 'new' / 'checkpoints'} to continue from"


def test_nan_loss_stops_with_the_step_and_the_last_good_checkpoint(model_dir, data, tmp_path, capsys):
    output = tmp_path / "run"
    args = train_args(model_dir, data, output, "--save-steps", "1", "--lr", "1e30", "--max-steps", "40")
    assert main(args) == 2
    error = capsys.readouterr().err.strip().splitlines()[-1]
    assert error.startswith("peftkit: error: the loss became nan at step ") or " became inf at step " in error
    step = int(error.split(" at step ")[1].split(";")[0])
    assert step > 1 and error.endswith(f"training stopped; the last good checkpoint is "
                                       f"{output / 'checkpoints' / f'checkpoint-{step - 1}'}")
    assert not (output / "adapter_model.safetensors").exists()


def test_ctrl_c_names_the_last_checkpoint_to_resume_from(model_dir, data, tmp_path):
    output = tmp_path / "interrupted"
    interrupt_at_step_6 = textwrap.dedent("""
        signal.signal(signal.SIGINT, signal.default_int_handler)  # as in a terminal, whatever the test runner's
        step_end = training.ProgressBar.on_step_end
        def on_step_end(self, args, state, control, **kwargs):
            if state.global_step == 6:
                os.kill(os.getpid(), signal.SIGINT)
            return step_end(self, args, state, control, **kwargs)
        training.ProgressBar.on_step_end = on_step_end
    """)
    done = patched_run(train_args(model_dir, data, output), interrupt_at_step_6)
    assert done.returncode == 130, done.stderr[-3000:]
    assert done.stderr.splitlines()[-1] == (f"peftkit: interrupted; the last checkpoint is {output}/checkpoints/"
                                            f"checkpoint-4; run the same command with --resume to continue from it")
    assert main(train_args(model_dir, data, output, "--resume")) == 0
