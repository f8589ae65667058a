"""Plain fine-tuning of a PEFT adapter for text classification, on transformers' ``Trainer``.

The adapter (any registered method) and a fresh classification head (``modules_to_save``) train; the
pretrained model stays frozen. Without data files the bundled SST-2 sentiment set is used. After
training the adapter is scored on the evaluation set and saved in peft's format, next to a
``peftkit_task.json`` that records the labels and columns so ``peftkit eval`` can score it again.
"""

from __future__ import annotations

import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from transformers import DataCollatorWithPadding

from peftkit.core.errors import ConfigError
from peftkit.core.mechanics.sharding import held_parameters
from peftkit.core.pretrained import load_sequence_classifier, position_limit, resolve_model_dir
from peftkit.objectives.density import DENSITY_THRESHOLD, DensityLoss, activation_density
from peftkit.objectives.distillation import DistillationLoss
from peftkit.recipes.budget import Budget, settle_budget
from peftkit.recipes.eval_report import write_report
from peftkit.recipes.training import (
    TrainOptions,
    TrainResult,
    autocast,
    evaluation_source,
    learning_rate_for,
    load_saved_adapter,
    loads_sharded,
    parameter_counts,
    progress_bar,
    read_saved_task,
    recipe_config,
    run_trainer,
    save_result,
    sharded_run,
    split_rows,
    with_method,
)
from peftkit.tasks.classification import (
    EVAL_FLAGS,
    Columns,
    Examples,
    LabelSet,
    bundled_sst2,
    columns_like,
    find_columns,
    load_examples,
    read_texts,
    token_lengths,
    tokenize,
)
from peftkit.tasks.data import read_rows
from peftkit.tasks.metrics import ClassificationReport, classification_report
from peftkit.utils.memory import peak_rss_mib


@dataclass
class TaskData:
    """A classification task's examples, read as ``options`` says (bundled SST-2 without files)."""

    model_dir: Path
    columns: Columns
    labels: LabelSet
    train: Examples
    eval: Examples
    eval_columns: Columns  # the evaluation file's own (the training file's for a held-out share)


def load_task_data(options: TrainOptions) -> TaskData:
    model_dir = resolve_model_dir(options.model)
    train_path = Path(options.train) if options.train else bundled_sst2("train")
    train_rows = read_rows(train_path)
    columns = find_columns(train_rows, train_path, options.text_column, options.text_pair_column,
                           options.label_column)
    _, labels = load_examples(train_path, columns, rows=train_rows)  # every row checked, numbered as in the file
    eval_columns = columns
    if options.eval:
        eval_path, eval_rows = Path(options.eval), read_rows(options.eval)
        eval_columns = columns_like(eval_rows, eval_path, columns, options.eval_text_column,
                                    options.eval_text_pair_column, options.eval_label_column, flags=EVAL_FLAGS)
    elif options.train:
        train_rows, eval_rows = split_rows(train_rows, options.eval_fraction, options.seed)
        eval_path = train_path
    else:
        eval_path = bundled_sst2("dev")
        eval_rows = read_rows(eval_path)
    train_examples, _ = load_examples(train_path, columns, labels, rows=train_rows)
    eval_examples, _ = load_examples(eval_path, eval_columns, labels, rows=eval_rows)
    return TaskData(model_dir, columns, labels, train_examples, eval_examples, eval_columns)


@dataclass
class ClassifierSetup:
    """A classification run ready to train: data, tokenizer, the wrapped model and its encoded examples."""

    data: TaskData
    tokenizer: object
    model: torch.nn.Module
    quantization: str | None
    dataset: list[dict]
    eval_encoded: list[dict]
    learning_rate: float
    options: TrainOptions  # with the budget settled
    budget: Budget


def setup_classifier(options: TrainOptions, wrap=with_method) -> ClassifierSetup:
    """Read the data, load the model with a fresh head and wrap it with ``options.method``: ``wrap(model,
    method, config, sharded)`` returns (the model to train, its base quantisation); ``with_method`` is
    peftkit's."""
    torch.manual_seed(options.seed)
    data = load_task_data(options)
    config = recipe_config(options, "SEQ_CLS", data.model_dir, data.labels.names)
    tokenizer, model = load_sequence_classifier(data.model_dir, data.labels.names, sharded=loads_sharded(options))
    options, budget = settle_budget(options, len(data.train.labels), token_lengths(tokenizer, data.train),
                                    position_limit(data.model_dir))
    peft_model, quantization = wrap(model, options.method, config, sharded_run(options))
    return ClassifierSetup(data=data, tokenizer=tokenizer, model=peft_model, quantization=quantization,
                           dataset=tokenize(tokenizer, data.train, options.max_length, "training"),
                           eval_encoded=tokenize(tokenizer, data.eval, options.max_length, "evaluation"),
                           learning_rate=options.lr or learning_rate_for(options.method), options=options,
                           budget=budget)


def train_classifier(options: TrainOptions) -> TrainResult:
    """Train ``options.method`` (any registered method, or "full") and score it; see the module docstring."""
    started = time.perf_counter()
    setup = setup_classifier(options)
    options = setup.options
    data, tokenizer, peft_model, eval_encoded = setup.data, setup.tokenizer, setup.model, setup.eval_encoded
    trainable, total = parameter_counts(peft_model)
    held = held_parameters(peft_model)
    if options.init_prompt:
        peft_model.load_prompt(options.init_prompt)
    objectives, density = [], None
    if options.density_loss:
        density_before = feed_forward_density(peft_model, tokenizer, eval_encoded)
        objectives.append(DensityLoss(peft_model, weight=options.density_loss))
    if options.teacher:
        objectives.append(DistillationLoss(peft_model, load_teacher(options.teacher, data.labels, options.model),
                                           weight=options.distill_weight))
    progress, train_seconds = run_trainer(peft_model, setup.dataset, DataCollatorWithPadding(tokenizer), options,
                                          setup.learning_rate, objectives=objectives)
    if options.density_loss:
        density = (density_before, feed_forward_density(peft_model, tokenizer, eval_encoded))
    with autocast(options):
        predicted = class_probabilities(peft_model, tokenizer, eval_encoded).argmax(-1).tolist()
    report = classification_report(data.eval.labels, predicted, data.labels.names)
    output = Path(options.output)
    save_result(peft_model, output, {  # full fine-tuning: the whole model, in transformers' format
        "task": "text-classification", "labels": data.labels.names, "text_column": data.columns.text,
        "text_pair_column": data.columns.text_pair, "label_column": data.columns.label,
        "max_length": options.max_length, "base_quantization": setup.quantization,
    })
    written = write_report(output, {"file": evaluation_source(options), "columns": asdict(data.eval_columns)},
                           report)
    return TrainResult(
        method=options.method, model_dir=data.model_dir, train_examples=len(data.train.labels),
        eval_examples=len(data.eval.labels), labels=data.labels.names, trainable_parameters=trainable,
        total_parameters=total, accuracy=report.accuracy, correct=report.correct, report=report, reports=written,
        train_seconds=train_seconds, wall_seconds=time.perf_counter() - started, peak_memory_mib=peak_rss_mib(),
        output=output, losses=progress.losses, step_seconds=progress.step_seconds, steps=len(progress.step_seconds),
        density=density, held_parameters=held,
        budget=setup.budget.describe(), columns=describe_columns(options, data),
    )


def describe_columns(options: TrainOptions, data: TaskData) -> str:
    """The columns read from the training file and, when it has its own, the evaluation file."""
    train = Path(options.train).name if options.train else "SST-2"
    described = f"{train}: {data.columns.describe()}"
    if options.eval:
        described += f"; {Path(options.eval).name}: {data.eval_columns.describe()}"
    return described


def load_teacher(adapter_dir: str, labels: LabelSet, model: str | None) -> torch.nn.Module:
    """A saved classification adapter of the same labels, to distil from."""
    _, teacher, task = load_saved_adapter(adapter_dir, "text-classification", model)
    if task["labels"] != labels.names:
        raise ConfigError(f"teacher {adapter_dir} has labels {task['labels']}, the task {labels.names}")
    return teacher


def _batches(model: torch.nn.Module, tokenizer, examples: list[dict], batch_size: int):
    """Padded batches of encoded examples on the model's device (labels included where the examples have them)."""
    collate = DataCollatorWithPadding(tokenizer)
    device = next(model.parameters()).device
    for start in range(0, len(examples), batch_size):
        yield {k: v.to(device) for k, v in collate(examples[start:start + batch_size]).items()}


def feed_forward_density(model: torch.nn.Module, tokenizer, examples: list[dict], batch_size: int = 128) -> float:
    """Mean over layers of the fraction of feed-forward activations with |a| > ``DENSITY_THRESHOLD``."""
    inputs = ({k: v for k, v in batch.items() if k != "labels"}
              for batch in _batches(model, tokenizer, examples, batch_size))
    per_layer = activation_density(model, inputs, threshold=DENSITY_THRESHOLD)
    return sum(per_layer.values()) / len(per_layer)


@torch.no_grad()
def class_probabilities(model: torch.nn.Module, tokenizer, examples: list[dict], batch_size: int = 128) -> torch.Tensor:
    """[rows, labels]: each row's softmax over the labels, in evaluation mode, with a progress bar (rows/s)."""
    was_training = model.training
    model.eval()
    probabilities = []
    with progress_bar(len(examples), "evaluating", "row") as bar:
        for batch in _batches(model, tokenizer, examples, batch_size):
            batch.pop("labels", None)
            probabilities.append(model(**batch).logits.float().softmax(-1).cpu())
            bar.update(len(probabilities[-1]))
    model.train(was_training)
    return torch.cat(probabilities)


def count_correct(model: torch.nn.Module, tokenizer, examples: list[dict], batch_size: int = 128) -> int:
    predicted = class_probabilities(model, tokenizer, examples, batch_size).argmax(-1)
    return int((predicted == torch.tensor([e["labels"] for e in examples])).sum())


@dataclass
class EvalResult:
    report: ClassificationReport
    columns: Columns
    written: list[Path]  # eval.json (and the confusion plot) beside the adapter


def saved_columns(task: dict) -> Columns:
    """The training file's columns, as saved with an adapter."""
    return Columns(text=task["text_column"], label=task["label_column"], text_pair=task["text_pair_column"])


@dataclass
class ScoredFile:
    """A file read with its own columns and scored by a saved classification adapter."""

    rows: list[dict]
    columns: Columns
    examples: Examples  # labels None for an unlabelled file
    labels: list[str]  # the adapter's
    probabilities: torch.Tensor  # [rows, labels]


def score_file(adapter_dir: str, path: str, model: str | None, batch_size: int, columns: tuple,
               labelled: bool) -> ScoredFile:
    """Read ``path`` with its own columns (``columns`` where given, else the adapter's, else found by name) and
    check its rows — labels too when ``labelled`` — before the model loads; then each row's class probabilities."""
    task = read_saved_task(adapter_dir, "text-classification")
    rows = read_rows(path)
    file_columns = columns_like(rows, path, saved_columns(task), *columns, labelled=labelled)
    if labelled:
        examples, _ = load_examples(path, file_columns, LabelSet(task["labels"]), rows=rows)
    else:
        examples = read_texts(rows, file_columns, path)
    if sys.stderr.isatty():
        print(f"loading the adapter {adapter_dir} on its base model …", file=sys.stderr, flush=True)
    tokenizer, peft_model, _ = load_saved_adapter(adapter_dir, "text-classification", model)
    probabilities = class_probabilities(peft_model, tokenizer, tokenize(tokenizer, examples, task["max_length"]),
                                        batch_size)
    return ScoredFile(rows, file_columns, examples, task["labels"], probabilities)


def evaluate_adapter(adapter_dir: str, eval_file: str, model: str | None = None, batch_size: int = 128,
                     columns: tuple[str | None, str | None, str | None] = (None, None, None)) -> EvalResult:
    """Score a saved classification adapter on a labelled file (read and checked before the model loads);
    ``columns``: the file's text, text-pair and label columns where given (else the adapter's, else found by
    name). The report goes to eval.json beside the adapter."""
    scored = score_file(adapter_dir, eval_file, model, batch_size, columns, labelled=True)
    report = classification_report(scored.examples.labels, scored.probabilities.argmax(-1).tolist(), scored.labels)
    written = write_report(adapter_dir, {"file": str(eval_file), "columns": asdict(scored.columns)}, report)
    return EvalResult(report, scored.columns, written)


@dataclass
class Predictions:
    rows: list[dict]  # each input row with "predicted" and "probabilities" (label -> probability) added
    columns: Columns
    labels: list[str]


def predict_file(adapter_dir: str, input_file: str, model: str | None = None, batch_size: int = 128,
                 columns: tuple[str | None, str | None] = (None, None)) -> Predictions:
    """A saved classification adapter's label and probabilities for every row of an (unlabelled) file;
    ``columns``: its text and text-pair columns where given (else the adapter's, else found by name)."""
    scored = score_file(adapter_dir, input_file, model, batch_size, (*columns, None), labelled=False)
    names = scored.labels
    predicted = [{**row, "predicted": names[int(p.argmax())],
                  "probabilities": {name: round(float(v), 6) for name, v in zip(names, p, strict=True)}}
                 for row, p in zip(scored.rows, scored.probabilities, strict=True)]
    return Predictions(predicted, scored.columns, names)
