"""Token tagging with a PEFT adapter (named entities, BIO keyphrases), on transformers' ``Trainer``.

The adapter (any registered method, or "full") and a fresh token-classification head train; scored by
entity-level F1 (``tasks/tagging.py``) on the evaluation file (or a held-out share of the training
file); saved in peft's format next to ``peftkit_task.json`` (the tags and columns). Training batches are
padding-free where the model allows (``recipes/batching.py``).
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from transformers import DataCollatorForTokenClassification

from peftkit.core.errors import ConfigError
from peftkit.core.mechanics.packing import EncoderPackingCollator
from peftkit.core.mechanics.sharding import held_parameters
from peftkit.core.pretrained import load_token_classifier, position_limit, resolve_model_dir
from peftkit.recipes.batching import choose_batches
from peftkit.recipes.budget import settle_budget
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
    read_saved_task,
    recipe_config,
    run_trainer,
    save_result,
    sharded_run,
    split_rows,
    with_method,
)
from peftkit.tasks.classification import LabelSet
from peftkit.tasks.data import read_rows
from peftkit.tasks.tagging import (
    EntityScores,
    TaggedExamples,
    entity_scores,
    find_tag_columns,
    load_tagged,
    tagged_lengths,
    tokenize_tagged,
)
from peftkit.utils.memory import peak_rss_mib

TASK = "token-classification"


@dataclass
class TaggingData:
    columns: tuple[str, str]
    tags: LabelSet
    train: TaggedExamples
    eval: TaggedExamples


def load_tagging_data(options: TrainOptions) -> TaggingData:
    if not options.train:
        raise ConfigError("token classification needs --train FILE (rows of words and their tags)")
    train_rows = read_rows(options.train)
    columns = find_tag_columns(train_rows, options.train, options.text_column, options.label_column)
    if options.eval:
        eval_path, eval_rows = options.eval, read_rows(options.eval)
    else:
        train_rows, eval_rows = split_rows(train_rows, options.eval_fraction, options.seed)
        eval_path = options.train
    train, tags = load_tagged(options.train, columns, rows=train_rows)
    evaluation, _ = load_tagged(eval_path, columns, tags, rows=eval_rows)
    return TaggingData(columns, tags, train, evaluation)


def without_word_ids(examples: list[dict]) -> list[dict]:
    return [{k: v for k, v in example.items() if k != "word_ids"} for example in examples]


@torch.no_grad()
def predict_tags(model, tokenizer, encoded: list[dict], words: list[list[str]], names: list[str],
                 batch_size: int = 64) -> list[list[str]]:
    """Each word's predicted tag (from its first sub-word; words cut by truncation get "O")."""
    was_training = model.training
    model.eval()
    collate = DataCollatorForTokenClassification(tokenizer)
    device = next(model.parameters()).device
    predicted = []
    for start in range(0, len(encoded), batch_size):
        chunk = encoded[start:start + batch_size]
        batch = {k: v.to(device) for k, v in collate(without_word_ids(chunk)).items() if k != "labels"}
        best = model(**batch).logits.argmax(-1).tolist()
        for offset, example in enumerate(chunk):
            tags = ["O"] * len(words[start + offset])
            for position, word in enumerate(example["word_ids"]):
                if word >= 0:
                    tags[word] = names[best[offset][position]]
            predicted.append(tags)
    model.train(was_training)
    return predicted


@dataclass
class TaggerRun:
    result: TrainResult
    scores: EntityScores
    words: list[list[str]]  # the evaluation rows' words
    predicted: list[list[str]]  # and their predicted tags


def train_tagger(options: TrainOptions, recipe_defaults: dict | None = None) -> TaggerRun:
    """Train ``options.method`` for token tagging and score it (see the module docstring); the budget a user
    leaves unset comes from ``recipe_defaults``, else from the data (``recipes/budget.py``)."""
    started = time.perf_counter()
    torch.manual_seed(options.seed)
    model_dir = resolve_model_dir(options.model)
    data = load_tagging_data(options)
    config = recipe_config(options, "TOKEN_CLS", model_dir, data.tags.names)
    tokenizer, model = load_token_classifier(model_dir, data.tags.names, sharded=loads_sharded(options))
    options, budget = settle_budget(options, len(data.train.tags), tagged_lengths(tokenizer, data.train),
                                    position_limit(model_dir), recipe_defaults)
    peft_model, quantization = with_method(model, options.method, config, sharded_run(options))
    trainable, total = parameter_counts(peft_model)
    held = held_parameters(peft_model)
    train = tokenize_tagged(tokenizer, data.train, options.max_length)
    evaluation = tokenize_tagged(tokenizer, data.eval, options.max_length)
    dataset = without_word_ids(train)
    batches = choose_batches(peft_model, dataset, options.packing, DataCollatorForTokenClassification(tokenizer),
                             lambda one_row: EncoderPackingCollator(tokenizer.pad_token_id, one_row))
    progress, train_seconds = run_trainer(peft_model, dataset, batches.collator, options,
                                          options.lr or learning_rate_for(options.method, TASK))
    with autocast(options):
        predicted = predict_tags(peft_model, tokenizer, evaluation, data.eval.words, data.tags.names)
    scores = entity_scores([[data.tags.names[t] for t in row] for row in data.eval.tags], predicted)
    output = Path(options.output)
    save_result(peft_model, output, {"task": TASK, "labels": data.tags.names, "text_column": data.columns[0],
                                    "label_column": data.columns[1], "max_length": options.max_length,
                                    "base_quantization": quantization})
    written = write_report(output, {"file": evaluation_source(options), "entities": asdict(scores)})
    result = TrainResult(
        method=options.method, model_dir=model_dir, train_examples=len(train), eval_examples=len(evaluation),
        labels=data.tags.names, trainable_parameters=trainable, total_parameters=total, accuracy=None,
        correct=scores.correct, train_seconds=train_seconds, wall_seconds=time.perf_counter() - started,
        peak_memory_mib=peak_rss_mib(), output=output, losses=progress.losses, step_seconds=progress.step_seconds,
        steps=len(progress.step_seconds), metric=("entity F1", scores.f1,
                                                  f"P {scores.precision:.4f}, R {scores.recall:.4f}; "
                                                  f"{scores.correct}/{scores.gold} gold entities found; by type: "
                                                  f"{scores.describe_types()}"),
        held_parameters=held, budget=budget.describe(), batches=batches.describe(), reports=written)
    return TaggerRun(result, scores, data.eval.words, predicted)


@dataclass
class TaggerEvaluation:
    scores: EntityScores
    columns: tuple[str, str]  # the file's words and tags columns
    written: list[Path]  # eval.json beside the adapter


def evaluate_tagger(adapter_dir: str, eval_file: str, model: str | None = None,
                    columns: tuple[str | None, str | None] = (None, None)) -> TaggerEvaluation:
    """Score a saved tagging adapter on a file of words and tags (read and checked before the model loads):
    entity F1, overall and per type, written to eval.json beside the adapter. ``columns``: the file's words and
    tags columns where given, else the adapter's where the file has them, else found by name."""
    task = read_saved_task(adapter_dir, TASK)
    rows = read_rows(eval_file)
    present = set(rows[0])
    words, tags = (given or (saved if saved in present else None)
                   for given, saved in zip(columns, (task["text_column"], task["label_column"]), strict=True))
    file_columns = find_tag_columns(rows, eval_file, words, tags)
    tag_set = LabelSet(task["labels"])
    evaluation, _ = load_tagged(eval_file, file_columns, tag_set, rows=rows)
    tokenizer, peft_model, _ = load_saved_adapter(adapter_dir, TASK, model)
    predicted = predict_tags(peft_model, tokenizer, tokenize_tagged(tokenizer, evaluation, task["max_length"]),
                             evaluation.words, tag_set.names)
    scores = entity_scores([[tag_set.names[t] for t in row] for row in evaluation.tags], predicted)
    written = write_report(adapter_dir, {"file": str(eval_file), "columns": {"words": file_columns[0],
                                                                            "tags": file_columns[1]},
                                         "entities": asdict(scores)})
    return TaggerEvaluation(scores, file_columns, written)
