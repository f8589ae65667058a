"""Bench runs (a row, a seed, an implementation) in a worker process. ``python -m peftkit.bench.worker``
reads jobs as JSON, one per line on stdin, and for each reports every training step as ``@step DONE TOTAL``
and ends with ``@result {json}`` on stdout: the measurements, or ``{"error": one line}`` when the row cannot
run. Each job's stderr (warnings, a traceback) goes to its own log file. On CPU the bench gives every job a
process of its own, so that the process's peak memory is that run's alone; on CUDA one worker runs them all
(the peak is reset per job there), which saves each job the start of a process.
"""

from __future__ import annotations

import gc
import json
import math
import os
import sys
from contextlib import contextmanager

import torch
from transformers import DataCollatorWithPadding, TrainerCallback

from peftkit.bench.measure import activation_bytes, forward_seconds, merged_copy
from peftkit.core.errors import ConfigError, PeftkitError
from peftkit.recipes.classification import count_correct, load_task_data, setup_classifier
from peftkit.recipes.training import TrainOptions, autocast, parameter_counts, run_trainer, with_method
from peftkit.utils.memory import peak_rss_mib

PEFT = "peft"  # the implementation name of Hugging Face peft's runs


class StepReporter(TrainerCallback):
    """Tells the bench process how far training is."""

    def on_step_end(self, args, state, control, **kwargs):
        print(f"@step {state.global_step} {state.max_steps}", flush=True)


class PeftRankAllocation(TrainerCallback):
    """peft's AdaLoRA allocates rank in ``update_and_allocate``, called after each optimizer step."""

    def on_optimizer_step(self, args, state, control, model=None, **kwargs):
        model.base_model.update_and_allocate(state.global_step)


def training_steps(options: TrainOptions) -> int:
    if options.max_steps:
        return options.max_steps
    per_epoch = math.ceil(len(load_task_data(options).train.labels) / options.batch_size)
    return math.ceil(per_epoch * options.epochs)


def peft_wrapper(options: TrainOptions):
    """``wrap`` for ``setup_classifier`` that puts Hugging Face peft's implementation of the method in."""

    def wrap(model, method, config, sharded: bool = False):  # bench runs are single processes
        import peft

        from peftkit.core.registry import method_for_config

        if config is None:
            return model, None
        if not method_for_config(config).peft_reads:
            raise ConfigError(f"Hugging Face peft has no {method}")
        values = config.to_dict()
        if values["peft_type"] == "ADALORA":
            values["total_step"] = training_steps(options)
        return peft.get_peft_model(model, peft.get_peft_config(values)), None

    return wrap


def first_batch(tokenizer, encoded: list[dict], size: int, device: torch.device, labels: bool) -> dict:
    batch = DataCollatorWithPadding(tokenizer)(encoded[:size])
    return {k: v.to(device) for k, v in batch.items() if labels or k != "labels"}


def run(job: dict) -> dict:
    """Train the job's row and measure it; see the module docstring."""
    options = TrainOptions(**job["options"])
    peft_run = job["implementation"] == PEFT
    cuda = torch.cuda.is_available()
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    setup = setup_classifier(options, wrap=peft_wrapper(options) if peft_run else with_method)
    model, tokenizer = setup.model, setup.tokenizer
    trainable, total = parameter_counts(model)
    callbacks = (StepReporter(), *((PeftRankAllocation(),) if peft_run and hasattr(
        getattr(model, "base_model", None), "update_and_allocate") else ()))
    progress, train_seconds = run_trainer(model, setup.dataset, DataCollatorWithPadding(tokenizer), options,
                                          setup.learning_rate, callbacks=callbacks)
    peak_mib = torch.cuda.max_memory_allocated() / 2**20 if cuda else peak_rss_mib()
    device = next(model.parameters()).device
    with autocast(options):
        correct = count_correct(model, tokenizer, setup.eval_encoded)
        activations = activation_bytes(model, first_batch(tokenizer, setup.dataset, options.batch_size, device, True))
        inputs = first_batch(tokenizer, setup.eval_encoded, options.batch_size, device, labels=False)
        unmerged = forward_seconds(model, inputs)
        merged, merge_note = None, None
        if options.method != "full":
            try:
                merged = forward_seconds(merged_copy(model), inputs)
            except (PeftkitError, ValueError, NotImplementedError, AttributeError) as exc:
                merge_note = str(exc).strip().splitlines()[0]
    return {"trainable": trainable, "total": total, "score": correct / len(setup.eval_encoded),
            "eval_examples": len(setup.eval_encoded), "train_examples": len(setup.dataset),
            "step_seconds": progress.step_seconds, "train_seconds": train_seconds, "losses": progress.losses,
            "learning_rate": setup.learning_rate, "peak_mib": peak_mib, "peak_kind": "cuda allocated" if cuda
            else "process VmHWM", "activation_bytes": activations, "latency_unmerged_s": unmerged,
            "latency_merged_s": merged, "merge_note": merge_note, "batch_size": options.batch_size,
            "worker_pid": os.getpid()}


@contextmanager
def stderr_to(log: str):
    """This process's stderr (file descriptor 2, so C++ and child output too) appended to ``log``."""
    sys.stderr.flush()
    saved = os.dup(2)
    with open(log, "a") as file:
        os.dup2(file.fileno(), 2)
        try:
            yield
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)


def measured(job: dict) -> dict:
    """The job's measurements, or its one-line reason (the traceback to stderr)."""
    try:
        return run(job)
    except KeyboardInterrupt:
        raise
    except Exception as exc:  # the row's one-line reason; the rest of the bench still runs
        import traceback

        traceback.print_exc()
        message = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        return {"error": message if isinstance(exc, PeftkitError) else f"{type(exc).__name__}: {message}"}
    finally:
        gc.collect()  # the next job in this process starts from what the previous one left: nothing
        if torch.cuda.is_available():
            torch.cuda.empty_cache()


def main() -> None:
    import warnings

    from transformers.utils import logging

    warnings.filterwarnings("ignore", category=FutureWarning)
    logging.set_verbosity_error()
    for line in sys.stdin:
        job = json.loads(line)
        torch.set_num_threads(job.get("threads") or torch.get_num_threads())
        with stderr_to(job["log"]):
            result = measured(job)
        print("@result " + json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
