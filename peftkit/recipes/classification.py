"""Plain fine-tuning of a PEFT adapter for text classification, on transformers' ``Trainer``.

The adapter (any registered method) and a fresh classification head (``modules_to_save``) train; the
pretrained model stays frozen. Without data files the bundled SST-2 sentiment set is used. After
training the adapter is scored on the evaluation set and saved in peft's format, next to a
``peftkit_task.json`` that records the labels and columns so ``peftkit eval`` can score it again.
"""

from __future__ import annotations

import random
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
from tqdm.auto import tqdm
from transformers import DataCollatorWithPadding, Trainer, TrainerCallback, TrainingArguments
from transformers.trainer_callback import PrinterCallback, ProgressCallback

from peftkit.bench.memory import peak_rss_mib
from peftkit.core.checkpoint import CONFIG_NAME, read_json, write_json
from peftkit.core.errors import CheckpointError, ConfigError
from peftkit.core.peft_model import PeftModel, get_peft_model
from peftkit.core.pretrained import load_sequence_classifier, resolve_model_dir
from peftkit.core.registry import method_by_name
from peftkit.tasks.classification import Columns, LabelSet, bundled_sst2, find_columns, load_examples, tokenize
from peftkit.tasks.data import read_rows

TASK_FILE = "peftkit_task.json"
# Method settings used by `peftkit train` unless the user sets them (LoRA on every linear layer).
METHOD_DEFAULTS = {
    "lora": {"r": 8, "lora_alpha": 16, "target_modules": "all-linear"},
    "prompt": {"prompt_tuning_init": "SAMPLE_VOCAB"},
}
# Learning rates used unless --lr is given: what each method needs on a small encoder. "full" trains
# every weight of the model (no adapter): the reference the methods are measured against.
LEARNING_RATES = {"lora": 1e-3, "adapter": 2e-3, "ia3": 2e-2, "bitfit": 2e-3, "ln": 2e-3, "prompt": 3e-2,
                  "ptuning": 3e-3, "prefix": 1e-2, "full": 5e-5}
FULL_FINE_TUNING = "full"


@dataclass
class TrainOptions:
    train: str | None = None
    eval: str | None = None
    model: str | None = None
    method: str = "lora"
    epochs: float = 1.0
    lr: float | None = None
    batch_size: int = 32
    max_length: int = 128
    seed: int = 42
    output: str = "peftkit-adapter"
    text_column: str | None = None
    text_pair_column: str | None = None
    label_column: str | None = None
    eval_fraction: float = 0.1
    method_options: dict = field(default_factory=dict)


@dataclass
class TrainResult:
    method: str
    model_dir: Path
    train_examples: int
    eval_examples: int
    labels: list[str]
    trainable_parameters: int
    total_parameters: int
    accuracy: float
    correct: int
    train_seconds: float
    wall_seconds: float
    peak_memory_mib: float
    output: Path
    losses: list[float]
    step_seconds: list[float]


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
                        mininterval=0.5 if interactive else 15)
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


def _split(rows: list[dict], fraction: float, seed: int) -> tuple[list[dict], list[dict]]:
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
    spec = method_by_name(method)
    settings = {**METHOD_DEFAULTS.get(spec.name, {}), **options, "task_type": task_type,
                "base_model_name_or_path": str(model_dir)}
    if settings.get("prompt_tuning_init") == "TEXT":
        settings.setdefault("tokenizer_name_or_path", str(model_dir))
        settings.setdefault("prompt_tuning_init_text", label_question(labels))
    return spec.config_cls.from_dict(settings)


def train_classifier(options: TrainOptions) -> TrainResult:
    """Train ``options.method`` (any registered method, or "full") and score it; see the module docstring."""
    started = time.perf_counter()
    torch.manual_seed(options.seed)
    model_dir = resolve_model_dir(options.model)
    train_path = Path(options.train) if options.train else bundled_sst2("train")
    train_rows = read_rows(train_path)
    columns = find_columns(train_rows, train_path, options.text_column, options.text_pair_column,
                           options.label_column)
    if options.eval:
        eval_path, eval_rows = Path(options.eval), read_rows(options.eval)
    elif options.train:
        train_rows, eval_rows = _split(train_rows, options.eval_fraction, options.seed)
        eval_path = train_path
    else:
        eval_path = bundled_sst2("dev")
        eval_rows = read_rows(eval_path)
    train_examples, labels = load_examples(train_path, columns, rows=train_rows)
    eval_examples, _ = load_examples(eval_path, columns, labels, rows=eval_rows)
    full = options.method == FULL_FINE_TUNING
    if full and options.method_options:
        raise ConfigError(f"method options {sorted(options.method_options)} do not apply to full fine-tuning")
    config = None if full else method_config(options.method, options.method_options, "SEQ_CLS", model_dir,
                                             labels.names)
    learning_rate = options.lr or LEARNING_RATES.get(options.method, 1e-3)

    tokenizer, model = load_sequence_classifier(model_dir, labels.names)
    if full:
        peft_model = model
    else:
        peft_model = get_peft_model(model, config)
    trainable = sum(p.numel() for p in peft_model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in peft_model.parameters())

    progress = ProgressBar()
    with tempfile.TemporaryDirectory(prefix="peftkit-trainer-") as scratch:
        arguments = TrainingArguments(
            output_dir=scratch, num_train_epochs=options.epochs, learning_rate=learning_rate,
            per_device_train_batch_size=options.batch_size, warmup_steps=0.06, lr_scheduler_type="linear",
            weight_decay=0.0, logging_steps=10, save_strategy="no", report_to="none", disable_tqdm=True,
            seed=options.seed, remove_unused_columns=False, use_cpu=not torch.cuda.is_available(),
        )
        trainer = Trainer(model=peft_model, args=arguments, train_dataset=tokenize(tokenizer, train_examples,
                                                                                  options.max_length),
                          data_collator=DataCollatorWithPadding(tokenizer), callbacks=[progress])
        trainer.remove_callback(ProgressCallback)
        trainer.remove_callback(PrinterCallback)
        train_started = time.perf_counter()
        trainer.train()
        train_seconds = time.perf_counter() - train_started

    correct = count_correct(peft_model, tokenizer, tokenize(tokenizer, eval_examples, options.max_length))
    output = Path(options.output)
    peft_model.save_pretrained(output)  # full fine-tuning: the whole model, in transformers' format
    write_json(output / TASK_FILE, {
        "task": "text-classification", "labels": labels.names, "text_column": columns.text,
        "text_pair_column": columns.text_pair, "label_column": columns.label, "max_length": options.max_length,
    })
    return TrainResult(
        method=options.method, model_dir=model_dir, train_examples=len(train_examples.labels),
        eval_examples=len(eval_examples.labels), labels=labels.names, trainable_parameters=trainable,
        total_parameters=total, accuracy=correct / len(eval_examples.labels), correct=correct,
        train_seconds=train_seconds, wall_seconds=time.perf_counter() - started, peak_memory_mib=peak_rss_mib(),
        output=output, losses=progress.losses, step_seconds=progress.step_seconds,
    )


@torch.no_grad()
def count_correct(model: torch.nn.Module, tokenizer, examples: list[dict], batch_size: int = 128) -> int:
    was_training = model.training
    model.eval()
    collate = DataCollatorWithPadding(tokenizer)
    device = next(model.parameters()).device
    correct = 0
    for start in range(0, len(examples), batch_size):
        batch = {k: v.to(device) for k, v in collate(examples[start:start + batch_size]).items()}
        labels = batch.pop("labels")
        correct += int((model(**batch).logits.argmax(-1) == labels).sum())
    model.train(was_training)
    return correct


@dataclass
class EvalResult:
    accuracy: float
    correct: int
    examples: int
    labels: list[str]


def evaluate_adapter(adapter_dir: str, eval_file: str, model: str | None = None,
                     batch_size: int = 128) -> EvalResult:
    """Score a saved classification adapter on a labelled file."""
    adapter_path = Path(adapter_dir)
    base_name = read_json(adapter_path / CONFIG_NAME, "adapter config").get("base_model_name_or_path")
    task = read_json(adapter_path / TASK_FILE, "peftkit task file (was the adapter made by `peftkit train`?)")
    if task.get("task") != "text-classification":
        raise CheckpointError(f"{adapter_path / TASK_FILE}: not a text-classification adapter")
    model_dir = resolve_model_dir(model or base_name)
    columns = Columns(text=task["text_column"], label=task["label_column"], text_pair=task["text_pair_column"])
    labels = LabelSet(task["labels"])
    examples, _ = load_examples(eval_file, columns, labels)
    tokenizer, base = load_sequence_classifier(model_dir, labels.names)
    peft_model = PeftModel.from_pretrained(base, adapter_path)
    correct = count_correct(peft_model, tokenizer, tokenize(tokenizer, examples, task["max_length"]), batch_size)
    return EvalResult(accuracy=correct / len(examples.labels), correct=correct, examples=len(examples.labels),
                      labels=labels.names)
