"""Crash-safe training on transformers' Trainer: small atomic checkpoints, resuming, a stop on NaN / inf.

``TrainingCheckpoints`` is mixed into peftkit's Trainer. A checkpoint (every ``save_steps``, under
``OUTPUT/checkpoints/checkpoint-N``) holds the trainable parameters only (``trainable.safetensors``,
not the frozen base model) with the Trainer's optimizer, scheduler, RNG and trainer state. It is
written in a staging folder and renamed into place when complete, so a process killed mid-write
leaves either the previous checkpoints or a whole new one — never one that loads wrongly; the
staging folder is cleared before the next write. Resuming loads the newest checkpoint: the same
parameters, optimizer moments, schedule, data position and random state, so on CPU with
deterministic kernels the run ends with the same weights as one never interrupted.

A loss that is NaN or inf stops training before the optimizer step, naming the step and the last
good checkpoint.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import torch
from transformers.trainer_utils import get_last_checkpoint, rotate_checkpoints

from peftkit.core.checkpoint import read_tensors, write_tensors
from peftkit.core.errors import CheckpointError, PeftkitError

TRAINABLE_NAME = "trainable.safetensors"
STAGING = ".staging"


class TrainingDiverged(PeftkitError):
    """The loss became NaN or inf."""


def last_checkpoint(folder: str | Path) -> str | None:
    """The newest complete checkpoint in ``folder`` (None when there is none)."""
    return get_last_checkpoint(str(folder)) if Path(folder).is_dir() else None


class TrainingCheckpoints:
    """Trainer methods for checkpoints of the trainable state; see the module docstring."""

    _staging = False

    def _get_output_dir(self, trial) -> str:
        run_dir = super()._get_output_dir(trial)
        return os.path.join(run_dir, STAGING) if self._staging else run_dir

    def _save_checkpoint(self, model, trial) -> None:
        run_dir = self._get_output_dir(trial)
        staging = Path(run_dir) / STAGING
        if self.args.should_save:
            shutil.rmtree(staging, ignore_errors=True)
        self._staging = True
        try:
            super()._save_checkpoint(model, trial)
        finally:
            self._staging = False
        if self.args.should_save:
            name = f"checkpoint-{self.state.global_step}"
            shutil.rmtree(Path(run_dir) / name, ignore_errors=True)
            os.replace(staging / name, Path(run_dir) / name)
            staging.rmdir()
            rotate_checkpoints(output_dir=run_dir, save_total_limit=self.args.save_total_limit, use_mtime=False)

    def _save(self, output_dir: str | None = None, state_dict=None) -> None:
        if self.args.should_save:
            os.makedirs(output_dir, exist_ok=True)
            write_tensors(Path(output_dir) / TRAINABLE_NAME, {name: p.detach().contiguous() for name, p in
                                                              self.model.named_parameters() if p.requires_grad})

    def _load_from_checkpoint(self, resume_from_checkpoint: str, model=None) -> None:
        model = model or self.model
        saved = read_tensors(Path(resume_from_checkpoint) / TRAINABLE_NAME)
        trainable = {name: p for name, p in model.named_parameters() if p.requires_grad}
        if saved.keys() != trainable.keys() or any(saved[n].shape != p.shape for n, p in trainable.items()):
            raise CheckpointError(f"{resume_from_checkpoint}: written for other trainable parameters than this "
                                  f"run's (another method, model or options?)")
        with torch.no_grad():
            for name, parameter in trainable.items():
                parameter.copy_(saved[name])

    def check_finite(self, loss: torch.Tensor) -> None:
        """Stop with the step and the last good checkpoint when ``loss`` is NaN or inf."""
        if not torch.isfinite(loss.detach()).all():
            step = self.state.global_step + 1
            kept = last_checkpoint(self.args.output_dir) if self.args.save_strategy == "steps" else None
            where = f"; the last good checkpoint is {kept}" if kept else ""
            raise TrainingDiverged(f"the loss became {loss.detach().float().item()} at step {step}; "
                                   f"training stopped{where}")
