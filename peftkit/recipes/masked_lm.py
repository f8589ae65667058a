"""Adaptive masked-LM training on raw text: language / domain adaptive fine-tuning, full or with any method.

Gururangan et al., 2020, "Don't Stop Pretraining"; Alabi et al., 2022 (MAFT) adapt a pretrained encoder
to a language or domain by continuing masked-LM training on its raw text. Each passage (a line of a
``.txt`` file, or the text column of a CSV / JSONL file) is one example, cut at ``max_length`` tokens.

Objectives: ``mlm`` — BERT's random masking (15 % of tokens; 80 % [MASK], 10 % random, 10 % kept),
transformers' ``DataCollatorForLanguageModeling``, with the head run on the masked positions only (the
same loss; about half the step time on MiniLM, ``benchmarks/mlm_head_speed.py``); ``self-evolution`` —
the informative tokens and rectified smooth labels of ``objectives/self_evolution.py``.

With a PEFT method the adapter trains, and so do the masked-LM head's own layers (its transform and
output bias; the output matrix is the tied input embedding): a folder's head may be missing (a
sentence-embedding model's) and is then freshly initialised. The result is a model folder (the
adapter merged in) to fine-tune on the downstream task (``--model OUTPUT``); the adapter alone is kept in
``OUTPUT/adapter``. Reported: the masked-LM loss on held-out passages with fixed masks, before and after.
"""

from __future__ import annotations

import time
from pathlib import Path

import torch
from transformers import DataCollatorForLanguageModeling

from peftkit.core.errors import ConfigError, DataError
from peftkit.core.peft_model import PeftModel
from peftkit.core.pretrained import head_parameters, load_masked_lm, output_heads, resolve_model_dir
from peftkit.objectives.self_evolution import SelfEvolution
from peftkit.recipes.budget import fixed_budget
from peftkit.recipes.training import (
    ObjectiveTrainer,
    TrainOptions,
    TrainResult,
    is_main_process,
    learning_rate_for,
    parameter_counts,
    recipe_config,
    run_trainer,
    split_rows,
    with_method,
)
from peftkit.tasks.classification import TEXT_COLUMNS
from peftkit.tasks.data import read_rows
from peftkit.utils.memory import peak_rss_mib

OBJECTIVES = ("mlm", "self-evolution")
MLM_LEARNING_RATES = {"full": 1e-4}


def read_passages(path: str | Path, text_column: str | None = None) -> list[str]:
    """Non-empty lines of a .txt file, or the text column of a CSV / TSV / JSONL file."""
    path = Path(path)
    if path.suffix.lower() == ".txt":
        if not path.is_file():
            raise DataError(f"{path}: data file not found")
        passages = [line.strip() for line in path.read_text(encoding="utf-8").split("\n") if line.strip()]
    else:
        rows = read_rows(path)
        column = text_column or next((c for c in TEXT_COLUMNS if c in rows[0]), None)
        if column is None or column not in rows[0]:
            raise DataError(f"{path}: cannot tell which column holds the text; pass --text-column "
                            f"(columns: {', '.join(rows[0])})")
        passages = [str(row[column]).strip() for row in rows if str(row.get(column) or "").strip()]
    if not passages:
        raise DataError(f"{path}: no text found")
    return passages


def encode_passages(tokenizer, passages: list[str], max_length: int) -> list[dict]:
    encoded = tokenizer(passages, truncation=True, max_length=max_length, return_special_tokens_mask=True)
    return [{key: encoded[key][i] for key in encoded.keys()} for i in range(len(passages))]


def random_masking(tokenizer, seed: int | None = None) -> DataCollatorForLanguageModeling:
    return DataCollatorForLanguageModeling(tokenizer, mlm_probability=0.15, seed=seed)


@torch.no_grad()
def held_out_loss(model, tokenizer, encoded: list[dict], batch_size: int = 64, seed: int = 0) -> float:
    """Mean masked-LM loss over masked tokens, with the same random masks on every call (``seed``)."""
    was_training = model.training
    model.eval()
    collate = random_masking(tokenizer, seed=seed)
    device = next(model.parameters()).device
    total, count = 0.0, 0
    for start in range(0, len(encoded), batch_size):
        batch = {k: v.to(device) for k, v in collate(encoded[start:start + batch_size]).items()
                 if k != "special_tokens_mask"}
        labels = batch.pop("labels")
        logits = model(**batch).logits
        masked = labels != -100
        total += float(torch.nn.functional.cross_entropy(logits[masked].float(), labels[masked], reduction="sum"))
        count += int(masked.sum())
    model.train(was_training)
    return total / max(count, 1)


class PaddingWithSpecialMask:
    """Pads input ids, attention and special-token masks (self-evolution masks inside the loss)."""

    def __init__(self, tokenizer) -> None:
        self.tokenizer = tokenizer

    def __call__(self, features: list[dict]) -> dict:
        return self.tokenizer.pad(features, return_tensors="pt")


class MaskedOnly:
    """Runs the masked-LM head on the masked positions only (a pre-hook on the head module), so the
    vocabulary projection costs 15 % of a full one; ``loss(model, batch)`` is then the same mean
    cross-entropy over masked tokens that the model computes with ``labels``."""

    def __init__(self, model: torch.nn.Module) -> None:
        _, self.head = output_heads(model.get_base_model() if isinstance(model, PeftModel) else model)[0]
        self.positions: torch.Tensor | None = None
        self.handle = self.head.register_forward_pre_hook(self._select)

    def _select(self, module, args):
        if self.positions is None:
            return None
        return (args[0][self.positions], *args[1:])

    def loss(self, model, batch: dict) -> tuple[torch.Tensor, object]:
        labels = batch["labels"]
        self.positions = labels != -100
        try:
            outputs = model(**{k: v for k, v in batch.items() if k not in ("labels", "special_tokens_mask")})
        finally:
            self.positions = None
        return torch.nn.functional.cross_entropy(outputs.logits.float(), labels[labels != -100]), outputs

    def remove(self) -> None:
        self.handle.remove()


class MaskedOnlyTrainer(ObjectiveTrainer):
    """Plain random-masking MLM with the head on masked positions only (``masked_only`` set per run)."""

    masked_only: MaskedOnly

    def task_loss(self, model, inputs, num_items_in_batch):
        return self.masked_only.loss(model, inputs)


class SelfEvolutionTrainer(ObjectiveTrainer):
    """The task loss is self-evolution's two-pass loss (``self_evolution`` set on a subclass per run)."""

    self_evolution: SelfEvolution

    def task_loss(self, model, inputs, num_items_in_batch):
        return self.self_evolution.loss(model, inputs)


def train_masked_lm(options: TrainOptions, objective: str = "mlm") -> TrainResult:
    """Adaptive masked-LM training (see the module docstring); writes a model folder to ``options.output``."""
    if objective not in OBJECTIVES:
        raise ConfigError(f"masked-LM objective must be one of {', '.join(OBJECTIVES)}, got {objective!r}")
    options = fixed_budget(options)
    if not options.train:
        raise ConfigError("masked-LM training needs --train FILE (raw text: a .txt file, one passage a line)")
    started = time.perf_counter()
    torch.manual_seed(options.seed)
    passages = read_passages(options.train, options.text_column)
    if options.eval:
        held_out = read_passages(options.eval, options.text_column)
    else:
        passages, held_out = (list(p) for p in split_rows(passages, options.eval_fraction, options.seed))
    model_dir = resolve_model_dir(options.model)
    tokenizer, model = load_masked_lm(model_dir)
    config = recipe_config(options, None, model_dir, [])
    trained, _ = with_method(model, options.method, config)
    for parameter in head_parameters(model).values():  # the head's own layers train too
        parameter.requires_grad_(True)
    trainable, total = parameter_counts(trained)
    train, evaluation = (encode_passages(tokenizer, p, options.max_length) for p in (passages, held_out))
    before = held_out_loss(trained, tokenizer, evaluation)
    learning_rate = options.lr or MLM_LEARNING_RATES.get(options.method) or learning_rate_for(options.method)
    if objective == "mlm":
        masked_only = MaskedOnly(trained)
        trainer_cls = type("MaskedOnlyRun", (MaskedOnlyTrainer,), {"masked_only": masked_only})
        try:
            progress, train_seconds = run_trainer(trained, train, random_masking(tokenizer), options, learning_rate,
                                                  trainer_cls=trainer_cls)
        finally:
            masked_only.remove()
    else:
        trainer_cls = type("SelfEvolutionRun", (SelfEvolutionTrainer,),
                           {"self_evolution": SelfEvolution(tokenizer.mask_token_id)})
        progress, train_seconds = run_trainer(trained, train, PaddingWithSpecialMask(tokenizer), options,
                                              learning_rate, trainer_cls=trainer_cls)
    after = held_out_loss(trained, tokenizer, evaluation)
    output = Path(options.output)
    if is_main_process():
        if isinstance(trained, PeftModel):
            trained.save_pretrained(output / "adapter")
            model = trained.merge_and_unload()
        model.save_pretrained(output)
        tokenizer.save_pretrained(output)
    return TrainResult(
        method=options.method, model_dir=model_dir, train_examples=len(train), eval_examples=len(evaluation),
        labels=[], trainable_parameters=trainable, total_parameters=total, accuracy=None, correct=0,
        train_seconds=train_seconds, wall_seconds=time.perf_counter() - started, peak_memory_mib=peak_rss_mib(),
        output=output, losses=progress.losses, step_seconds=progress.step_seconds, steps=len(progress.step_seconds),
        metric=("masked-LM loss", after, f"{before:.4f} before training; {objective} objective"))
