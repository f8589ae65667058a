"""Pattern-exploiting training with adapters: classification as a cloze scored by the LM's own head.

Schick & Schütze, 2021, "Exploiting Cloze Questions for Few Shot Text Classification and Natural
Language Inference" (PET); Rieger et al., 2023, "Few-shot learning with adapters": a frozen LM, a
trained adapter (any peftkit method).

A pattern turns an input into a cloze: ``"{text} It was {mask}."`` (``{text_pair}`` for pairs). A
verbalizer maps each label to one or more words. With a masked LM, ``{mask}`` becomes n mask tokens,
n the longest word's token count; a word's score is the sum of the masked-LM logits of its tokens at
the mask positions (token j at mask j), and a label's score is the mean over its words. With a causal
LM the template must end at ``{mask}`` (text after it is dropped) and every word must be one token (with
the space before ``{mask}`` attached): a label's score is the mean next-token logit of its words.
Training is cross-entropy over the label scores; only the adapter trains. Choices the paper leaves
open: the mean over a label's words (so labels with more words are not favoured); the text, never the
pattern, is cut to fit ``max_length``.
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn
from transformers.modeling_outputs import SequenceClassifierOutput

from peftkit.core.errors import ConfigError
from peftkit.recipes.budget import fixed_budget
from peftkit.recipes.training import (
    TrainOptions,
    TrainResult,
    learning_rate_for,
    parameter_counts,
    recipe_config,
    run_trainer,
    save_result,
    with_method,
)
from peftkit.utils.memory import peak_rss_mib

FIELDS = re.compile(r"\{(text|text_pair|mask)\}")


@dataclass
class Pattern:
    template: str = "{text} It was {mask}."
    verbalizer: dict[str, list[str]] = field(default_factory=dict)  # label -> words

    def for_labels(self, labels: list[str]) -> Pattern:
        """This pattern, with each label's own name as its word when the verbalizer is empty."""
        return self if self.verbalizer else Pattern(self.template, {label: [label] for label in labels})

    def check(self, labels: list[str]) -> None:
        found = FIELDS.findall(self.template)
        if found.count("mask") != 1 or "text" not in found:
            raise ConfigError(f"pattern {self.template!r} needs {{text}} and exactly one {{mask}}")
        missing = [label for label in labels if not self.verbalizer.get(label)]
        if missing:
            raise ConfigError(f"the verbalizer gives no words for label(s) {missing}")


class ClozeEncoder:
    """Token ids of patterned inputs and of the verbalizer's words (see the module docstring)."""

    def __init__(self, tokenizer, pattern: Pattern, labels: list[str], causal: bool, max_length: int) -> None:
        pattern.check(labels)
        self.tokenizer, self.pattern, self.causal, self.max_length = tokenizer, pattern, causal, max_length
        template = pattern.template
        if causal:
            template = template[:template.index("{mask}")]
        self.space_before_mask = template.endswith(" ")
        parts = FIELDS.split(template.rstrip(" ") if causal else template)  # literal, field, literal, …
        # fields by name, literal text as its token ids (tokenised once)
        self.pieces = [("field", part) if i % 2 else ("literal", self._ids(part)) for i, part in enumerate(parts)
                       if part]
        words = [[self._word_ids(word) for word in pattern.verbalizer[label]] for label in labels]
        self.masks = max(len(ids) for label_words in words for ids in label_words)
        if causal and self.masks > 1:
            long = [w for label in labels for w in pattern.verbalizer[label] if len(self._word_ids(w)) > 1]
            raise ConfigError(f"with a causal LM every verbalizer word must be one token; {long} are not")
        self.special_before, self.special_after = self._special_tokens()
        most = max(len(label_words) for label_words in words)
        self.word_tokens = torch.full((len(labels), most, self.masks), -1, dtype=torch.long)
        for i, label_words in enumerate(words):
            for j, ids in enumerate(label_words):
                self.word_tokens[i, j, :len(ids)] = torch.tensor(ids)
        self.mask_ids = [] if causal else [tokenizer.mask_token_id] * self.masks
        self.text_budget = (max_length - len(self.special_before) - len(self.special_after) - len(self.mask_ids)
                            - sum(len(ids) for kind, ids in self.pieces if kind == "literal"))
        if self.text_budget < 1:
            raise ConfigError(f"max_length {max_length} leaves no room for the text in the pattern")

    def _special_tokens(self) -> tuple[list[int], list[int]]:
        """The ids the tokenizer puts before and after a text ([CLS] … [SEP], <s> …, or nothing)."""
        content = self._ids("x")
        full = self.tokenizer("x")["input_ids"]
        start = next(i for i in range(len(full)) if full[i:i + len(content)] == content)
        return full[:start], full[start + len(content):]

    def _word_ids(self, word: str) -> list[int]:
        text = (" " + word) if self.causal and self.space_before_mask else word
        ids = self.tokenizer(text, add_special_tokens=False)["input_ids"]
        if not ids:
            raise ConfigError(f"verbalizer word {word!r} has no tokens")
        return ids

    def encode(self, text: str, text_pair: str | None = None) -> dict:
        """input_ids, attention_mask and ``score_at`` (the first mask position, or the last position for a
        causal LM)."""
        fields = {"text": self._ids(text), "text_pair": self._ids(text_pair or ""), "mask": self.mask_ids}
        while len(fields["text"]) + len(fields["text_pair"]) > self.text_budget:  # cut the longer text first
            longer = "text" if len(fields["text"]) >= len(fields["text_pair"]) else "text_pair"
            fields[longer] = fields[longer][:-1]
        ids = []
        for kind, part in self.pieces:
            ids += fields[part] if kind == "field" else part
        if self.causal:  # the prompt ends where the label word would follow
            ids = self.special_before + ids
            score_at = len(ids) - 1
        else:
            ids = self.special_before + ids + self.special_after
            score_at = ids.index(self.tokenizer.mask_token_id)
        return {"input_ids": ids, "attention_mask": [1] * len(ids), "score_at": score_at}

    def _ids(self, text: str) -> list[int]:
        return self.tokenizer(text, add_special_tokens=False)["input_ids"] if text else []

    def label_scores(self, logits: torch.Tensor, score_at: torch.Tensor) -> torch.Tensor:
        """batch × labels: mean over a label's words of Σ_j logits[score_at + j, token_j(word)]."""
        positions = score_at[:, None] + torch.arange(self.masks, device=logits.device)  # batch × masks
        at_masks = logits.gather(1, positions[..., None].expand(-1, -1, logits.shape[-1]))  # batch × masks × V
        tokens = self.word_tokens.to(logits.device)  # labels × words × masks, -1 where a word is shorter
        valid = tokens >= 0
        slot = torch.arange(self.masks, device=logits.device).expand_as(tokens)
        word_scores = (at_masks[:, slot, tokens.clamp(min=0)] * valid).sum(-1)  # batch × labels × words
        words = valid.any(-1)  # labels × words: which words exist
        return (word_scores * words).sum(-1) / words.sum(-1)


class ClozeClassifier(nn.Module):
    """A (PEFT-wrapped) masked or causal LM that classifies by ``ClozeEncoder.label_scores``."""

    def __init__(self, model: nn.Module, encoder: ClozeEncoder) -> None:
        super().__init__()
        self.model, self.encoder = model, encoder

    def forward(self, input_ids, attention_mask, score_at, labels=None, **_):
        logits = self.model(input_ids=input_ids, attention_mask=attention_mask).logits
        scores = self.encoder.label_scores(logits.float(), score_at)
        loss = nn.functional.cross_entropy(scores, labels) if labels is not None else None
        return SequenceClassifierOutput(loss=loss, logits=scores)


class ClozeCollator:
    def __init__(self, pad_token_id: int, left: bool) -> None:
        self.pad_token_id, self.left = pad_token_id, left

    def __call__(self, features: list[dict]) -> dict:
        length = max(len(f["input_ids"]) for f in features)
        batch = {"input_ids": [], "attention_mask": [], "score_at": []}
        for f in features:
            pad = length - len(f["input_ids"])
            ids, mask = f["input_ids"], f["attention_mask"]
            if self.left:
                batch["input_ids"].append([self.pad_token_id] * pad + ids)
                batch["attention_mask"].append([0] * pad + mask)
                batch["score_at"].append(f["score_at"] + pad)
            else:
                batch["input_ids"].append(ids + [self.pad_token_id] * pad)
                batch["attention_mask"].append(mask + [0] * pad)
                batch["score_at"].append(f["score_at"])
        tensors = {k: torch.tensor(v) for k, v in batch.items()}
        if "labels" in features[0]:
            tensors["labels"] = torch.tensor([f["labels"] for f in features])
        return tensors


def load_cloze_model(options: TrainOptions):
    """(tokenizer, model, causal, model folder): a masked LM with a trained head, or a causal LM."""
    from peftkit.core.pretrained import load_causal_lm, load_masked_lm, resolve_causal_lm_dir, resolve_model_dir

    if options.task == "causal-lm":
        model_dir = resolve_causal_lm_dir(options.model)
        return (*load_causal_lm(model_dir), True, model_dir)
    model_dir = resolve_model_dir(options.model)
    return (*load_masked_lm(model_dir, require_head=True), False, model_dir)


def encode_examples(encoder: ClozeEncoder, examples) -> list[dict]:
    pairs = examples.pairs or [None] * len(examples.texts)
    return [{**encoder.encode(text, pair), "labels": label}
            for text, pair, label in zip(examples.texts, pairs, examples.labels, strict=True)]


@torch.no_grad()
def cloze_predictions(classifier: ClozeClassifier, encoded: list[dict], pad_token_id: int,
                      batch_size: int = 64) -> torch.Tensor:
    """Label scores (examples × labels) of encoded examples."""
    was_training = classifier.training
    classifier.eval()
    collate = ClozeCollator(pad_token_id, left=classifier.encoder.causal)
    device = next(classifier.parameters()).device
    scores = []
    for start in range(0, len(encoded), batch_size):
        batch = {k: v.to(device) for k, v in collate(encoded[start:start + batch_size]).items() if k != "labels"}
        scores.append(classifier(**batch).logits.cpu())
    classifier.train(was_training)
    return torch.cat(scores)


def train_pet(options: TrainOptions, pattern: Pattern) -> TrainResult:
    """PET with ``options.method`` on the classification data of ``options`` (see the module docstring)."""
    from peftkit.recipes.classification import load_task_data

    started = time.perf_counter()
    options = fixed_budget(options)
    torch.manual_seed(options.seed)
    data = load_task_data(options)
    tokenizer, model, causal, model_dir = load_cloze_model(options)
    pattern = pattern.for_labels(data.labels.names)
    encoder = ClozeEncoder(tokenizer, pattern, data.labels.names, causal, options.max_length)
    config = recipe_config(options, "CAUSAL_LM" if causal else None, model_dir, data.labels.names)
    peft_model, _ = with_method(model, options.method, config)
    classifier = ClozeClassifier(peft_model, encoder)
    trainable, total = parameter_counts(classifier)
    train, evaluation = encode_examples(encoder, data.train), encode_examples(encoder, data.eval)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    progress, train_seconds = run_trainer(classifier, train, ClozeCollator(pad, left=causal), options,
                                          options.lr or learning_rate_for(options.method))
    predicted = cloze_predictions(classifier, evaluation, pad).argmax(-1)
    correct = int((predicted == torch.tensor(data.eval.labels)).sum())
    output = Path(options.output)
    save_result(peft_model, output, {"task": "pet", "labels": data.labels.names, "template": pattern.template,
                                    "verbalizer": pattern.verbalizer, "causal": causal,
                                    "max_length": options.max_length})
    return TrainResult(
        method=options.method, model_dir=model_dir, train_examples=len(train), eval_examples=len(evaluation),
        labels=data.labels.names, trainable_parameters=trainable, total_parameters=total,
        accuracy=correct / len(evaluation), correct=correct, train_seconds=train_seconds,
        wall_seconds=time.perf_counter() - started, peak_memory_mib=peak_rss_mib(), output=output,
        losses=progress.losses, step_seconds=progress.step_seconds, steps=len(progress.step_seconds))
