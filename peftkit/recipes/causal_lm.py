"""Fine-tuning a causal LM with any PEFT method on prompt / completion or chat data, on transformers' Trainer.

The loss is the mean cross-entropy over the trained tokens only (``peftkit.tasks.causal_lm``). Batches
are left-padded, with position ids counted from each row's first real token, so the trained tokens of
every row sit in the last K positions: the LM head runs on those K alone (``logits_to_keep``), which for
short answers skips most of the vocabulary projection, forward and backward.

Training batches are padding-free by default (``--packing auto``): each batch's rows packed end to end,
attention kept within each row, the loss and its gradients those of the padded batch
(``core/mechanics/packing.py``), and the LM head run only where a trained token is predicted. ``auto`` first
checks that the model keeps packed rows apart and pads otherwise (as for prompt-learning methods, whose
virtual tokens belong to each row); ``on`` makes that check an error; ``off`` pads.

Scoring: when the evaluation answers come from a small set (2 to 20 distinct answers: labels), the
accuracy of ranking the right one first by log-likelihood given the context; when the candidates start
with different tokens that is one forward pass per example comparing next-token log-probabilities (the
usual zero-shot protocol). The mean loss on the evaluation answers is reported in every case.
Without data files the task is the bundled SST-2 as a chat instruction; without a model, SmolLM2-135M-Instruct.
"""

from __future__ import annotations

import time
from pathlib import Path

import torch
import torch.nn.functional as F

from peftkit.core.mechanics.packing import PackingCollator, packed_loss
from peftkit.core.mechanics.sharding import held_parameters
from peftkit.core.peft_model import PeftModel
from peftkit.core.pretrained import load_causal_lm, position_limit, resolve_causal_lm_dir
from peftkit.objectives.density import DensityLoss
from peftkit.recipes.batching import choose_batches
from peftkit.recipes.budget import settle_budget
from peftkit.recipes.training import (
    FULL_FINE_TUNING,
    ObjectiveTrainer,
    TrainOptions,
    TrainResult,
    autocast,
    learning_rate_for,
    load_saved_adapter,
    loads_sharded,
    parameter_counts,
    recipe_config,
    run_trainer,
    save_result,
    sharded_run,
    split_rows,
    with_method,
)
from peftkit.tasks.causal_lm import IGNORE, Example, encode, load_lm_examples, sst2_instruction_rows
from peftkit.tasks.data import read_rows
from peftkit.utils.memory import peak_rss_mib

MAX_CANDIDATES = 20
UNCUT = 1 << 30  # a max_length that cuts nothing: to measure the rows


class LeftPadCollator:
    """Left-pads input_ids / labels and adds position ids that start at each row's first real token."""

    def __init__(self, pad_token_id: int) -> None:
        self.pad_token_id = pad_token_id

    def __call__(self, features: list[dict]) -> dict[str, torch.Tensor]:
        length = max(len(f["input_ids"]) for f in features)
        batch = {"input_ids": [], "attention_mask": [], "labels": []}
        for f in features:
            pad = length - len(f["input_ids"])
            batch["input_ids"].append([self.pad_token_id] * pad + f["input_ids"])
            batch["attention_mask"].append([0] * pad + [1] * len(f["input_ids"]))
            batch["labels"].append([IGNORE] * pad + f.get("labels", [IGNORE] * len(f["input_ids"])))
        tensors = {k: torch.tensor(v) for k, v in batch.items()}
        tensors["position_ids"] = (tensors["attention_mask"].cumsum(1) - 1).clamp(min=0)
        if all("answer_from_end" in f for f in features):
            tensors["answer_from_end"] = torch.tensor([f["answer_from_end"] for f in features])
        return tensors


def _model_inputs(model, batch: dict) -> dict:
    inputs = {k: batch[k] for k in ("input_ids", "attention_mask", "position_ids")}
    if isinstance(model, PeftModel) and model.prompt_encoder:
        inputs.pop("position_ids")  # virtual tokens shift positions; the model counts them itself
    return inputs


def token_log_likelihoods(model, batch: dict) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Over the last K positions, from the first label on: per-token log p(label), the mask of real labels,
    and the logits that predicted them."""
    labels = batch["labels"]
    trained = labels != IGNORE
    first = int(torch.where(trained.any(1), trained.float().argmax(1), labels.shape[1]).min())
    keep = max(1, min(labels.shape[1] - first, labels.shape[1] - 1))
    logits = model(**_model_inputs(model, batch), logits_to_keep=keep + 1).logits[:, :-1].float()
    targets = labels[:, -keep:]
    mask = targets != IGNORE
    log_probs = -F.cross_entropy(logits.transpose(1, 2), targets.clamp(min=0), reduction="none")
    return log_probs * mask, mask, logits


def completion_loss(model, batch: dict) -> torch.Tensor:
    log_probs, mask, _ = token_log_likelihoods(model, batch)
    return -log_probs.sum() / mask.sum().clamp(min=1)


class CompletionTrainer(ObjectiveTrainer):
    def task_loss(self, model, inputs, num_items_in_batch):
        return completion_loss(model, inputs), None


class PackedCompletionTrainer(ObjectiveTrainer):
    def task_loss(self, model, inputs, num_items_in_batch):
        return packed_loss(model, inputs), None


def _by_length(encoded: list[dict], size: int):
    """Batches of similar length (less padding), as (indices, rows)."""
    order = sorted(range(len(encoded)), key=lambda i: len(encoded[i]["input_ids"]))
    for start in range(0, len(order), size):
        indices = order[start:start + size]
        yield indices, [encoded[i] for i in indices]


@torch.no_grad()
def score_answers(model, tokenizer, examples: list[Example], max_length: int, batch_size: int = 32):
    """(mean loss on the answers, correct count or None, candidate answers or None); see the module docstring."""
    was_training = model.training
    model.eval()
    collate = LeftPadCollator(tokenizer.pad_token_id)
    device = next(model.parameters()).device
    candidates = sorted({e.answer for e in examples})
    ranked = 2 <= len(candidates) <= MAX_CANDIDATES
    candidate_ids = [tokenizer(c, add_special_tokens=False)["input_ids"] for c in candidates]
    firsts = [ids[0] for ids in candidate_ids]
    first_token_decides = ranked and len(set(firsts)) == len(firsts)
    encoded = [encode(tokenizer, e, max_length) for e in examples]
    total, tokens, correct = 0.0, 0, 0
    for indices, rows in _by_length(encoded, batch_size):
        batch = {k: v.to(device) for k, v in collate(rows).items()}
        log_probs, mask, logits = token_log_likelihoods(model, batch)
        total, tokens = total - float(log_probs.sum()), tokens + int(mask.sum())
        if first_token_decides:
            at = mask.shape[1] - batch["answer_from_end"]
            chosen = logits[torch.arange(len(rows)), at][:, firsts].argmax(-1).tolist()
            correct += sum(candidates[c] == examples[i].answer for c, i in zip(chosen, indices, strict=True))
    if ranked and not first_token_decides:
        correct = sum(_ranked_first(model, tokenizer, e, candidates, candidate_ids, max_length, device) == e.answer
                      for e in examples)
    model.train(was_training)
    return total / max(tokens, 1), (correct if ranked else None), (candidates if ranked else None)


def _ranked_first(model, tokenizer, example: Example, candidates, candidate_ids, max_length, device) -> str:
    """The candidate answer with the highest log-likelihood after the example's context."""
    context = encode(tokenizer, Example(example.context), max_length)["input_ids"] if example.context else []
    rows = [{"input_ids": (context + ids)[-max_length:], "labels": ([IGNORE] * len(context) + ids)[-max_length:]}
            for ids in candidate_ids]
    batch = {k: v.to(device) for k, v in LeftPadCollator(tokenizer.pad_token_id)(rows).items()}
    log_probs, _, _ = token_log_likelihoods(model, batch)
    return candidates[int(log_probs.sum(1).argmax())]


def _data(options: TrainOptions, tokenizer) -> tuple[list[Example], list[Example]]:
    if options.train:
        train_rows = read_rows(options.train)
        if options.eval:
            return load_lm_examples(tokenizer, options.train, train_rows), load_lm_examples(tokenizer, options.eval)
        kept, held_out = split_rows(train_rows, options.eval_fraction, options.seed)
        return load_lm_examples(tokenizer, options.train, kept), load_lm_examples(tokenizer, options.train, held_out)
    train = load_lm_examples(tokenizer, "SST-2 train (bundled)", sst2_instruction_rows("train"))
    evaluation = (load_lm_examples(tokenizer, options.eval) if options.eval else
                  load_lm_examples(tokenizer, "SST-2 dev (bundled)", sst2_instruction_rows("dev")))
    return train, evaluation


def train_causal_lm(options: TrainOptions, recipe_defaults: dict | None = None) -> TrainResult:
    """Train ``options.method`` (any registered method, qlora, or "full") on a causal LM and score it; the
    budget a user leaves unset comes from ``recipe_defaults``, else from the data (``recipes/budget.py``)."""
    started = time.perf_counter()
    torch.manual_seed(options.seed)
    model_dir = resolve_causal_lm_dir(options.model)
    tokenizer, model = load_causal_lm(model_dir, sharded=loads_sharded(options))
    train_examples, eval_examples = _data(options, tokenizer)
    lengths = [len(encode(tokenizer, example, UNCUT)["input_ids"]) for example in train_examples]
    options, budget = settle_budget(options, len(train_examples), lengths, position_limit(model_dir),
                                    recipe_defaults)
    peft_model, quantization = with_method(model, options.method, recipe_config(options, "CAUSAL_LM", model_dir, []),
                                           sharded_run(options))
    trainable, total = parameter_counts(peft_model)
    held = held_parameters(peft_model)
    learning_rate = options.lr or learning_rate_for(options.method, "causal-lm")
    dataset = [encode(tokenizer, e, options.max_length) for e in train_examples]
    batches = choose_batches(peft_model, dataset, options.packing, LeftPadCollator(tokenizer.pad_token_id),
                             lambda one_row: PackingCollator(tokenizer.pad_token_id, one_row), use_cache=False)
    objectives = (DensityLoss(peft_model, weight=options.density_loss),) if options.density_loss else ()
    progress, train_seconds = run_trainer(peft_model, dataset, batches.collator, options, learning_rate,
                                          PackedCompletionTrainer if batches.packed else CompletionTrainer, objectives)
    with autocast(options):
        eval_loss, correct, candidates = score_answers(peft_model, tokenizer, eval_examples, options.max_length)
    output = Path(options.output)
    save_result(peft_model, output, {"task": "causal-lm", "max_length": options.max_length,
                                     "base_quantization": quantization},
                tokenizer=tokenizer if options.method == FULL_FINE_TUNING else None)  # full: a whole model folder
    return TrainResult(
        method=options.method, model_dir=model_dir, train_examples=len(train_examples),
        eval_examples=len(eval_examples), labels=candidates or [], trainable_parameters=trainable,
        total_parameters=total, accuracy=None if correct is None else correct / len(eval_examples),
        correct=correct or 0, train_seconds=train_seconds, wall_seconds=time.perf_counter() - started,
        peak_memory_mib=peak_rss_mib(), output=output, losses=progress.losses, step_seconds=progress.step_seconds,
        eval_loss=eval_loss, steps=len(progress.step_seconds), held_parameters=held,
        budget=budget.describe(), batches=batches.describe(),
    )


def load_adapter_for_generation(adapter_dir: str, model: str | None = None):
    """(tokenizer, model with the adapter) from a saved causal-LM adapter folder."""
    tokenizer, peft_model, _ = load_saved_adapter(adapter_dir, "causal-lm", model)
    return tokenizer, peft_model.eval()


@torch.no_grad()
def generate_text(tokenizer, model, prompt: str, max_new_tokens: int = 64, chat: bool = True) -> str:
    """Greedy continuation of ``prompt`` (as a user turn in the chat template when the model has one)."""
    if chat and tokenizer.chat_template is not None:
        text = tokenizer.apply_chat_template([{"role": "user", "content": prompt}], tokenize=False,
                                             add_generation_prompt=True)
    else:
        text = prompt
    inputs = tokenizer(text, return_tensors="pt", add_special_tokens=False)
    output = model.generate(**inputs, max_new_tokens=max_new_tokens, do_sample=False,
                            pad_token_id=tokenizer.pad_token_id)
    return tokenizer.decode(output[0, inputs["input_ids"].shape[1]:], skip_special_tokens=True)
