"""What every `peftkit train` recipe shares: options, method configs and defaults, the Trainer run, the result.

The recipes (text classification, causal LM) build their data and model, then ``run_trainer`` trains
on transformers' ``Trainer`` with a tqdm bar over optimizer steps that records the loss and each step's
time.
"""

from __future__ import annotations

import dataclasses
import os
import random
import re
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
from tqdm.auto import tqdm
from transformers import Trainer, TrainerCallback, TrainingArguments
from transformers.trainer_callback import PrinterCallback, ProgressCallback

from peftkit import methods  # noqa: F401  (registers the built-in methods the recipes look up by name)
from peftkit.core.checkpoint import CONFIG_NAME, read_json, write_json
from peftkit.core.errors import CheckpointError, ConfigError
from peftkit.core.mechanics.quantization import is_nf4, quantize_nf4
from peftkit.core.mechanics.sharding import process_count, shard_loaded
from peftkit.core.module_names import output_heads
from peftkit.core.peft_model import PeftModel, get_peft_model
from peftkit.core.registry import canonical_name, default_learning_rate, method_form
from peftkit.core.targets import inside_adapter_container
from peftkit.recipes.checkpoints import TrainingCheckpoints, last_checkpoint
from peftkit.recipes.option_rules import check_options
from peftkit.recipes.output_paths import CHECKPOINTS, check_output

# "full" trains every weight of the model (no adapter): the reference the methods are measured against.
FULL_FINE_TUNING = "full"
FULL_LEARNING_RATE = 5e-5
TASK_FILE = "peftkit_task.json"


@dataclass
class TrainOptions:
    task: str = "classification"  # or "token-classification", "causal-lm"
    recipe: str | None = None  # a training procedure instead of plain fine-tuning: "mlm", "self-evolution"
    train: str | None = None
    eval: str | None = None
    model: str | None = None
    method: str = "lora"
    epochs: float | None = None  # None: chosen from the data (recipes/budget.py)
    max_steps: int | None = None  # overrides epochs
    lr: float | None = None
    batch_size: int | None = None  # None: chosen from the data
    max_length: int | None = None  # None: chosen from the training rows' tokenised lengths
    seed: int = 42
    bf16: bool = False  # bfloat16 autocast (CUDA, or a CPU with AVX-512 BF16 / AMX)
    output: str = "peftkit-adapter"
    text_column: str | None = None
    text_pair_column: str | None = None
    label_column: str | None = None
    eval_text_column: str | None = None  # the --eval file's columns, where they differ from the training file's
    eval_text_pair_column: str | None = None
    eval_label_column: str | None = None
    eval_fraction: float = 0.1
    method_options: dict = field(default_factory=dict)
    density_loss: float = 0.0  # DEFT's weight w (objectives/density.py); 0: off
    init_prompt: str | None = None  # a saved prompt-learning adapter whose virtual tokens start the new prompt
    teacher: str | None = None  # a saved adapter folder of the same task: distil its logits (objectives/distillation)
    distill_weight: float = 1.0  # β of the distillation term
    pattern: str | None = None  # PET: a cloze template with {text} (and {text_pair}) and one {mask}
    verbalizer: dict | None = None  # PET: label -> word or words (default: each label's own name)
    shots: int = 16  # LiST: labelled examples per class
    unlabelled: int | None = 1000  # LiST: unlabelled texts (None: all the others)
    rounds: int = 2  # LiST: self-training rounds
    save_steps: int | None = None  # checkpoint the trainable state every N steps (OUTPUT/checkpoints)
    resume: bool = False  # continue from the newest checkpoint in OUTPUT/checkpoints
    overwrite: bool = False  # replace another run's checkpoints in OUTPUT/checkpoints
    gradient_checkpointing: bool = False  # recompute each layer's activations in backward (non-reentrant)
    fsdp: bool = False  # shard the base model over the torchrun processes with FSDP2 (core/mechanics/sharding.py)
    packing: str = "auto"  # causal LM, tagging: padding-free batches where the model allows; "on": required, "off"

    def __post_init__(self) -> None:
        check_options(dataclasses.asdict(self))
        self.method = canonical_name(self.method)


@dataclass
class TrainResult:
    method: str
    model_dir: Path
    train_examples: int
    eval_examples: int
    labels: list[str]  # classification labels, or the candidate answers scored for accuracy
    trainable_parameters: int
    total_parameters: int
    accuracy: float | None  # None: the evaluation answers are free text (see eval_loss)
    correct: int
    train_seconds: float
    wall_seconds: float
    peak_memory_mib: float
    output: Path
    losses: list[float]
    step_seconds: list[float]
    eval_loss: float | None = None
    steps: int = 0
    density: tuple[float, float] | None = None  # DEFT: feed-forward activation density before, after
    metric: tuple[str, float, str] | None = None  # another score: (name, value, detail), e.g. entity F1
    held_parameters: int | None = None  # sharded with FSDP: the parameters each process holds
    budget: str | None = None  # the settled training budget and why (recipes/budget.py)
    batches: str | None = None  # how batches were formed (padded or padding-free) and what packing saved
    columns: str | None = None  # the columns read from each file, and which were found by name
    report: object | None = None  # classification: the evaluation's ClassificationReport (tasks/metrics.py)
    reports: list[Path] = field(default_factory=list)  # what the evaluation wrote: eval.json, its plot


def evaluation_source(options: TrainOptions) -> str:
    """What a run is scored on, for its report: the --eval file, a held-out share of --train, or the bundled dev set."""
    if options.eval:
        return options.eval
    return f"{options.eval_fraction:.0%} held out of {options.train}" if options.train else "SST-2 dev (bundled)"


def progress_bar(total: int, what: str, unit: str) -> tqdm:
    """A tqdm bar on stderr (rate in ``unit``/s) for work that takes more than 3 seconds: refreshed twice a
    second in a terminal, every 15 s in a log."""
    interactive = sys.stderr.isatty()
    return tqdm(total=total, desc=what, unit=unit, file=sys.stderr, dynamic_ncols=True, leave=False, delay=3,
                mininterval=0.5 if interactive else 15, disable=not is_main_process())


class ProgressBar(TrainerCallback):
    """A tqdm bar over optimizer steps showing the latest loss and the learning rate."""

    def __init__(self) -> None:
        self.bar = None
        self.losses: list[float] = []
        self.step_seconds: list[float] = []
        self._last = 0.0

    def on_train_begin(self, args, state, control, **kwargs):
        interactive = sys.stderr.isatty()
        self.bar = tqdm(total=state.max_steps, desc="training", unit="step", dynamic_ncols=True, file=sys.stderr,
                        mininterval=0.5 if interactive else 15, disable=not is_main_process())
        self._last = time.perf_counter()

    def on_step_end(self, args, state, control, **kwargs):
        now = time.perf_counter()
        self.step_seconds.append(now - self._last)
        self._last = now
        self.bar.update(state.global_step - self.bar.n)

    def on_log(self, args, state, control, logs=None, **kwargs):
        if logs and "loss" in logs:
            self.losses.append(float(logs["loss"]))
            self.bar.set_postfix(loss=f"{logs['loss']:.4f}", lr=f"{logs.get('learning_rate', 0):.2e}")

    def on_train_end(self, args, state, control, **kwargs):
        self.bar.close()


def prepare_run(options: TrainOptions) -> None:
    """What is checked before anything loads: the output folder (``recipes/output_paths.py``; with
    ``--overwrite``, another run's checkpoints are removed from it), the model folder, and ``--max-length``
    against the model's positions (lowered to them)."""
    from peftkit.core.pretrained import CAUSAL_LM_NAMES, check_tokenizer_files, position_limit, resolve_model_dir

    target = check_output(options.output, inputs=(options.model, options.init_prompt, options.teacher),
                          resume=options.resume, overwrite=options.overwrite)
    bundled_causal = options.task == "causal-lm" and (options.model is None or options.model.lower() in CAUSAL_LM_NAMES)
    model_dir = None if bundled_causal else resolve_model_dir(options.model)
    if model_dir is not None:
        check_tokenizer_files(model_dir)
    limit = None if model_dir is None else position_limit(model_dir)
    if limit is not None and options.max_length is not None and options.max_length > limit:
        options.max_length = limit  # rows cut there are counted in a note when the data are tokenised
    if options.overwrite and not options.resume and is_main_process():
        shutil.rmtree(target / CHECKPOINTS, ignore_errors=True)


def is_main_process() -> bool:
    """Rank 0 of a ``torchrun`` / ``accelerate launch`` run, or a single process: the one that writes files
    and prints; the others train their share of each batch (transformers' Trainer runs DDP under them)."""
    return int(os.environ.get("RANK", "0")) == 0


def sharded_run(options: TrainOptions) -> bool:
    """Whether the base model loads sharded over the processes with FSDP2 (``--fsdp``, ``core/mechanics/sharding.py``);
    a one-line error where it cannot."""
    if not options.fsdp:
        return False
    if process_count() < 2:
        raise ConfigError("--fsdp shards the model over the processes of torchrun / accelerate launch, and this "
                          "run has one; start it with `torchrun --nproc_per_node N -m peftkit train ...`")
    if options.recipe is not None:
        raise ConfigError(f"--fsdp applies to plain training (classification, token-classification, causal-lm), "
                          f"not to --recipe {options.recipe}")
    if options.save_steps or options.resume:
        raise ConfigError("--fsdp cannot be combined with --save-steps / --resume: transformers' Trainer does "
                          "not checkpoint the optimizer of a model sharded while loading")
    return True


def keep_frozen_out_of_ddp(model: torch.nn.Module) -> None:
    """Tell DDP (which the Trainer wraps the model in under ``torchrun`` / ``accelerate launch``) to leave the
    frozen parameters alone: it would broadcast every parameter from rank 0 when it wraps the model, but
    each process loaded the same frozen weights itself, and a broadcast into a 4-bit NF4 weight re-quantises
    it (the weights drift by ~1e-6). Only the trainable parameters are broadcast and all-reduced."""
    from torch.nn.parallel import DistributedDataParallel

    frozen = [name for name, parameter in model.named_parameters() if not parameter.requires_grad]
    DistributedDataParallel._set_params_and_buffers_to_ignore_for_model(model, frozen)


def save_result(model: torch.nn.Module, output: Path, task: dict, tokenizer=None) -> None:
    """The trained adapter (or whole model) and its task file, written by the main process only (every
    process takes part in gathering a model sharded with FSDP)."""
    model.save_pretrained(output, is_main_process=is_main_process())
    if not is_main_process():
        return
    if tokenizer is not None:
        tokenizer.save_pretrained(output)
    write_json(output / TASK_FILE, task)


def split_rows(rows: list[dict], fraction: float, seed: int) -> tuple[list[dict], list[dict]]:
    """A seeded random split: (kept for training, held out)."""
    order = list(range(len(rows)))
    random.Random(seed).shuffle(order)
    held_out = max(1, int(len(rows) * fraction))
    return [rows[i] for i in order[held_out:]], [rows[i] for i in order[:held_out]]


def label_question(labels: list[str]) -> str:
    """The text a TEXT-initialised soft prompt starts from when none is given: the task's label words."""
    return f"which fits best: {', '.join(labels)}?"


def method_config(method: str, options: dict, task_type: str, model_dir: Path, labels: list[str]):
    """The method's config from the recipe's defaults, the user's options and what the model folder and
    labels supply (base model path; a TEXT soft prompt's tokenizer and label words)."""
    spec, _ = method_form(method)
    settings = {**spec.train_defaults, **options, "task_type": task_type,
                "base_model_name_or_path": str(model_dir)}
    if settings.get("prompt_tuning_init") == "TEXT":
        settings.setdefault("tokenizer_name_or_path", str(model_dir))
        settings.setdefault("prompt_tuning_init_text", label_question(labels))
    return spec.config_cls.from_dict(settings)


def base_quantization(method: str) -> str | None:
    """How the method stores the base model's weights ("nf4" for QLoRA), or None."""
    form = None if method == FULL_FINE_TUNING else method_form(method)[1]
    return form.quantization if form is not None else None


def learning_rate_for(method: str, task: str | None = None) -> float:
    """The learning rate ``peftkit train`` uses unless ``--lr`` is given: the method's registered one."""
    return FULL_LEARNING_RATE if method == FULL_FINE_TUNING else default_learning_rate(method, task)


def recipe_config(options: TrainOptions, task_type: str, model_dir: Path, labels: list[str]):
    """The method's config for a recipe, or None for full fine-tuning (which takes no method options)."""
    if options.method == FULL_FINE_TUNING:
        if options.method_options:
            raise ConfigError(f"method options {sorted(options.method_options)} do not apply to full fine-tuning")
        return None
    return method_config(options.method, options.method_options, task_type, model_dir, labels)


def with_method(model: torch.nn.Module, method: str, config, sharded: bool = False) -> tuple[torch.nn.Module,
                                                                                             str | None]:
    """(the model to train, its base quantisation): quantised as the method wants, wrapped with the
    adapter unless ``config`` is None (full fine-tuning). ``sharded`` (FSDP): a model loaded whole to be
    quantised is sharded over the processes here, after quantising (``core/mechanics/sharding.py``)."""
    quantization = base_quantization(method)
    if getattr(config, "init_lora_weights", None) == "loftq":
        wrapped = _with_loftq(model, config, quantization)
    else:
        quantize_base(model, quantization)
        wrapped = model if config is None else get_peft_model(model, config)
    if sharded and quantization is not None:
        shard_loaded(model)
    return wrapped, quantization


def _with_loftq(model: torch.nn.Module, config, quantization: str | None) -> torch.nn.Module:
    """LoRA with LoftQ's initialisation: it picks the 4-bit weights of the layers it adapts; every other linear
    layer is then stored in NF4 as QLoRA stores it (the output head stays in float)."""
    if quantization != "nf4":
        raise ConfigError("init_lora_weights='loftq' makes the base 4-bit: use it with --method qlora")
    if config.loftq_config["loftq_iter"] != 1:
        raise ConfigError("loftq_iter must be 1 here: an adapter is loaded on the model's weights quantised as "
                          "QLoRA does, which is LoftQ's base only after one iteration")
    wrapped = get_peft_model(model, config)
    heads = output_heads(model)
    rest = [name for name, module in model.named_modules()
            if type(module) is torch.nn.Linear and not is_nf4(module.weight) and name not in heads
            and not inside_adapter_container(model, f"{name}.weight")]
    if rest:
        quantize_nf4(model, "|".join(re.escape(name) for name in rest))
    return wrapped


def loads_sharded(options: TrainOptions) -> bool:
    """Whether the base model loads sharded over the processes (FSDP); one to be quantised (QLoRA) loads
    whole and is sharded after quantising (``with_method``)."""
    return sharded_run(options) and base_quantization(options.method) is None


def quantize_base(model: torch.nn.Module, quantization: str | None) -> None:
    """Store the base model's linear weights as the method wants them (QLoRA: NF4)."""
    if quantization == "nf4":
        quantize_nf4(model)


def read_saved_task(adapter_dir: str | Path, task: str) -> dict:
    """The task settings ``peftkit train`` saved beside an adapter, which must be a ``task`` one (a causal-LM
    adapter from another tool has none: it is taken as a causal-LM one)."""
    folder = Path(adapter_dir)
    read_json(folder / CONFIG_NAME, "adapter config")
    if task == "causal-lm" and not (folder / TASK_FILE).is_file():
        return {"task": task}
    saved = read_json(folder / TASK_FILE, "peftkit task file (was the adapter made by `peftkit train`?)")
    if saved.get("task") != task:
        raise CheckpointError(f"{folder}: a {saved.get('task')} adapter, not a {task} one")
    return saved


def load_saved_adapter(adapter_dir: str | Path, task: str, model: str | None = None):
    """(tokenizer, base model with the adapter, the saved task settings) for a folder written by
    ``peftkit train``: the base named in the adapter config (or ``model``), quantised as it was trained.

    A causal-LM adapter from another tool (no peftkit task file) loads as a causal-LM one.
    """
    from peftkit.core.pretrained import (
        load_causal_lm,
        load_sequence_classifier,
        load_token_classifier,
        resolve_causal_lm_dir,
        resolve_model_dir,
    )

    folder = Path(adapter_dir)
    base_name = read_json(folder / CONFIG_NAME, "adapter config").get("base_model_name_or_path")
    saved = read_saved_task(folder, task)
    if task == "causal-lm":
        tokenizer, base = load_causal_lm(resolve_causal_lm_dir(model or base_name))
    elif task == "token-classification":
        tokenizer, base = load_token_classifier(resolve_model_dir(model or base_name), saved["labels"])
    else:
        tokenizer, base = load_sequence_classifier(resolve_model_dir(model or base_name), saved["labels"])
    quantize_base(base, saved.get("base_quantization"))
    return tokenizer, PeftModel.from_pretrained(base, folder), saved


def parameter_counts(model: torch.nn.Module) -> tuple[int, int]:
    """(trainable, all) parameters."""
    return (sum(p.numel() for p in model.parameters() if p.requires_grad),
            sum(p.numel() for p in model.parameters()))


def autocast(options: TrainOptions):
    """The training precision for evaluation too: bfloat16 autocast when ``options.bf16``."""
    device = "cuda" if torch.cuda.is_available() else "cpu"
    return torch.autocast(device, dtype=torch.bfloat16, enabled=options.bf16)


class ObjectiveTrainer(TrainingCheckpoints, Trainer):
    """transformers' Trainer adding the terms of peftkit objectives (``peftkit/objectives``: each has
    ``loss()`` for the last forward pass) to the task loss, with crash-safe checkpoints of the trainable
    state and a stop on a NaN / inf loss (``recipes/checkpoints.py``)."""

    objectives: tuple = ()

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        # Each process's loss is its own batch's mean, which DDP averages into the global batch's. (Trainer
        # would otherwise pass num_items_in_batch and scale the loss by the number of processes, which is only
        # right for models whose loss divides by it; classification losses do not.)
        self.model_accepts_loss_kwargs = False

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        loss, outputs = self.task_loss(model, inputs, num_items_in_batch)
        for objective in self.objectives:
            loss = loss + objective.loss().to(loss.device)
        self.check_finite(loss)
        return (loss, outputs) if return_outputs else loss

    def task_loss(self, model, inputs, num_items_in_batch):
        """(loss, outputs) of the task itself."""
        return super().compute_loss(model, inputs, return_outputs=True, num_items_in_batch=num_items_in_batch)


def run_trainer(model, dataset, collator, options: TrainOptions, learning_rate: float,
                trainer_cls: type[ObjectiveTrainer] = ObjectiveTrainer, objectives: tuple = (),
                callbacks: tuple = ()) -> tuple[ProgressBar, float]:
    """Train on transformers' Trainer (linear schedule, 6 % warm-up; checkpoints every ``options.save_steps``
    in OUTPUT/checkpoints, removed at the end; ``options.resume`` continues from the newest), adding the
    ``objectives``' terms to the loss (their hooks are removed when training ends), a rank-allocating
    method's allocator and orthogonality term (AdaLoRA, IncreLoRA) and any other Trainer ``callbacks``;
    (progress, seconds)."""
    from peftkit.recipes.rank_allocation import allocation_parts  # here: it imports the methods

    progress = ProgressBar()
    allocation_callbacks, allocation_objectives = allocation_parts(model)
    objectives = (*objectives, *allocation_objectives)
    checkpoints = Path(options.output) / CHECKPOINTS
    resume_from = last_checkpoint(checkpoints) if options.resume else None
    if options.resume and resume_from is None:
        raise CheckpointError(f"--resume: no checkpoint in {checkpoints} to continue from")
    with tempfile.TemporaryDirectory(prefix="peftkit-trainer-") as scratch:
        arguments = TrainingArguments(
            output_dir=str(checkpoints) if options.save_steps else scratch, num_train_epochs=options.epochs,
            max_steps=options.max_steps or -1, learning_rate=learning_rate,
            per_device_train_batch_size=options.batch_size, warmup_steps=0.06, lr_scheduler_type="linear",
            weight_decay=0.0, logging_steps=10, save_strategy="steps" if options.save_steps else "no",
            save_steps=options.save_steps or 500, save_total_limit=2, report_to="none", disable_tqdm=True,
            seed=options.seed, remove_unused_columns=False, bf16=options.bf16, use_cpu=not torch.cuda.is_available(),
            activation_checkpointing=options.gradient_checkpointing,
            activation_checkpointing_kwargs={"use_reentrant": False},  # frozen inputs keep their gradient path
        )
        keep_frozen_out_of_ddp(model)
        trainer = trainer_cls(model=model, args=arguments, train_dataset=dataset, data_collator=collator,
                              callbacks=[progress, *allocation_callbacks, *callbacks])
        trainer.objectives = tuple(objectives)
        trainer.remove_callback(ProgressCallback)
        trainer.remove_callback(PrinterCallback)
        started = time.perf_counter()
        try:
            trainer.train(resume_from_checkpoint=resume_from)
        finally:
            for objective in objectives:
                objective.remove()
            if progress.bar is not None:
                progress.bar.close()  # before an error's message (closing twice is harmless)
        if options.save_steps or options.resume:
            shutil.rmtree(checkpoints, ignore_errors=True)  # finished: the caller saves the result
        return progress, time.perf_counter() - started
