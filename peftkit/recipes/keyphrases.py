"""Keyphrase extraction (BIO tagging with an encoder) and generation (a causal LM writes the list).

Wu et al., 2022, "Pre-trained Language Models for Keyphrase Generation: A Thorough Empirical Study".
Rows hold a document (``title`` + ``abstract``, or ``text``) and its gold ``keyphrases``.

* Extraction: each document's words are tagged B-KP / I-KP where a present gold keyphrase occurs
  (``tasks/keyphrases.bio_row``); the tagging recipe trains any method on them; the predicted spans,
  ranked by how often each is tagged, are the document's keyphrases. Present keyphrases only.
* Generation: the causal-LM recipe learns "present ; absent" lists — the present keyphrases in order of
  first appearance, then the absent ones, joined by " ; " — after the prompt ``GENERATION_PROMPT``; greedy
  decoding writes the list for each evaluation document, split at ";".
* Baseline: TF-IDF n-grams (``tasks/keyphrases.TfidfBaseline``), fitted on the training and evaluation
  documents, its top 10 phrases (F1@M is over those 10).

Scores: F1@5 and F1@M on present keyphrases (and absent ones for generation), as ``tasks/keyphrases``
defines them.
"""

from __future__ import annotations

import json
import tempfile
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import torch

from peftkit.core.errors import DataError
from peftkit.recipes.eval_report import write_report
from peftkit.recipes.tagging import train_tagger
from peftkit.recipes.training import FULL_FINE_TUNING, TrainOptions, TrainResult, evaluation_source, split_rows
from peftkit.tasks.data import read_rows
from peftkit.tasks.keyphrases import (
    KeyphraseScores,
    TfidfBaseline,
    bio_row,
    contains,
    corpus_scores,
    first_position,
    normalise,
    phrases_from_tags,
    split_present,
)

GENERATION_PROMPT = "Title and abstract: {text}\nKeyphrases:"
SEPARATOR = " ; "
# the settings of benchmarks/keyphrases_inspec.py (abstracts run to ~350 tokens), where the user gives none
EXTRACTION_DEFAULTS = {"epochs": 3.0, "batch_size": 16, "max_length": 384}
GENERATION_DEFAULTS = {"epochs": 1.0, "batch_size": 8, "max_length": 384}


@dataclass
class Document:
    text: str
    keyphrases: list[str]


def read_documents(path: str | Path, rows: list[dict] | None = None) -> list[Document]:
    rows = read_rows(path) if rows is None else rows
    documents = []
    for number, row in enumerate(rows, start=1):
        text = row.get("text") or f"{row.get('title', '')}. {row.get('abstract', '')}".strip(". ")
        phrases = row.get("keyphrases")
        if not text or not isinstance(phrases, list):
            raise DataError(f"{path}: row {number} needs a text (or title / abstract) and a 'keyphrases' list")
        documents.append(Document(text, [str(p) for p in phrases]))
    return documents


def load_documents(options: TrainOptions) -> tuple[list[Document], list[Document]]:
    if not options.train:
        raise DataError("keyphrase training needs --train FILE (rows with title / abstract or text, and keyphrases)")
    rows = read_rows(options.train)
    if options.eval:
        return read_documents(options.train, rows), read_documents(options.eval)
    train_rows, eval_rows = split_rows(rows, options.eval_fraction, options.seed)
    return read_documents(options.train, train_rows), read_documents(options.train, eval_rows)


def gold_sets(documents: list[Document]) -> tuple[list, list]:
    """(present, absent) normalised gold phrases per document."""
    pairs = [split_present(d.text, d.keyphrases) for d in documents]
    return [p for p, _ in pairs], [a for _, a in pairs]


def tfidf_scores(train: list[Document], evaluation: list[Document]) -> KeyphraseScores:
    baseline = TfidfBaseline().fit([d.text for d in train + evaluation])
    return corpus_scores([baseline.extract(d.text, top=10) for d in evaluation], gold_sets(evaluation)[0])


def _write_jsonl(path: Path, rows: list[dict]) -> None:
    path.write_text("".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows), encoding="utf-8")


@dataclass
class ExtractionRun:
    result: TrainResult
    present: KeyphraseScores
    tfidf: KeyphraseScores


def extract_keyphrases(options: TrainOptions) -> ExtractionRun:
    """BIO extraction with ``options.method`` on an encoder, against TF-IDF in the same run."""
    train, evaluation = load_documents(options)
    with tempfile.TemporaryDirectory(prefix="peftkit-keyphrases-") as scratch:
        folder = Path(scratch)
        _write_jsonl(folder / "train.jsonl", [bio_row(d.text, d.keyphrases) for d in train])
        _write_jsonl(folder / "eval.jsonl", [bio_row(d.text, d.keyphrases) for d in evaluation])
        run = train_tagger(replace(options, task="token-classification", train=str(folder / "train.jsonl"),
                                   eval=str(folder / "eval.jsonl"), text_column="tokens", label_column="tags"),
                           EXTRACTION_DEFAULTS)
    predictions = [phrases_from_tags(tokens, tags) for tokens, tags in zip(run.words, run.predicted, strict=True)]
    present = corpus_scores(predictions, gold_sets(evaluation)[0])
    tfidf = tfidf_scores(train, evaluation)
    run.result.metric = ("present keyphrase F1@5", present.f1_at_5,
                         f"F1@M {present.f1_at_m:.4f}; TF-IDF baseline F1@5 {tfidf.f1_at_5:.4f}, "
                         f"F1@M {tfidf.f1_at_m:.4f}; {present.documents} documents")
    run.result.reports = write_report(run.result.output, {
        "file": evaluation_source(options),
        "keyphrases": {"present": asdict(present), "tfidf_baseline": asdict(tfidf)}})
    return ExtractionRun(run.result, present, tfidf)


def target_list(document: Document) -> str:
    """Present keyphrases by first appearance, then absent ones, joined by " ; "."""
    stemmed = normalise(document.text)
    present, absent, seen = [], [], set()
    for phrase in document.keyphrases:
        key = normalise(phrase)
        if not key or key in seen:
            continue
        seen.add(key)
        position = first_position(stemmed, key)
        (absent if position is None else present).append((position, phrase))
    return SEPARATOR.join([p for _, p in sorted(present, key=lambda item: item[0])] + [p for _, p in absent])


def generation_rows(documents: list[Document]) -> list[dict]:
    return [{"prompt": GENERATION_PROMPT.format(text=d.text), "completion": " " + target_list(d)}
            for d in documents]


@torch.no_grad()
def generate_lists(model, tokenizer, prompts: list[str], max_new_tokens: int = 64, batch_size: int = 8
                   ) -> list[list[str]]:
    """Greedy continuations of ``prompts`` (left-padded batches) up to the end token or a new line, split
    into phrases at ";"."""
    model.eval()
    device = next(model.parameters()).device
    lists = []
    for start in range(0, len(prompts), batch_size):
        batch = tokenizer(prompts[start:start + batch_size], return_tensors="pt", padding=True).to(device)
        output = model.generate(**batch, max_new_tokens=max_new_tokens, do_sample=False,
                                pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id)
        for row in output[:, batch["input_ids"].shape[1]:].tolist():
            if tokenizer.eos_token_id in row:
                row = row[:row.index(tokenizer.eos_token_id)]
            text = tokenizer.decode(row, skip_special_tokens=True).split("\n")[0]
            lists.append([p.strip() for p in text.split(";") if p.strip()])
    return lists


@dataclass
class GenerationRun:
    result: TrainResult
    present: KeyphraseScores
    absent: KeyphraseScores


def generate_keyphrases(options: TrainOptions, eval_documents: int | None = None,
                        max_new_tokens: int = 64) -> GenerationRun:
    """Train a causal LM (``options.method``) to write keyphrase lists; score its greedy lists on the first
    ``eval_documents`` evaluation documents (all by default)."""
    from peftkit.core.pretrained import load_causal_lm
    from peftkit.recipes.causal_lm import load_adapter_for_generation, train_causal_lm

    train, evaluation = load_documents(options)
    evaluation = evaluation[:eval_documents] if eval_documents else evaluation
    with tempfile.TemporaryDirectory(prefix="peftkit-keyphrases-") as scratch:
        folder = Path(scratch)
        _write_jsonl(folder / "train.jsonl", generation_rows(train))
        _write_jsonl(folder / "eval.jsonl", generation_rows(evaluation))
        result = train_causal_lm(replace(options, task="causal-lm", train=str(folder / "train.jsonl"),
                                         eval=str(folder / "eval.jsonl")), GENERATION_DEFAULTS)
    if options.method == FULL_FINE_TUNING:  # the output folder is the whole trained model
        tokenizer, model = load_causal_lm(result.output)
    else:
        tokenizer, model = load_adapter_for_generation(str(result.output), model=options.model)
    lists = generate_lists(model, tokenizer, [GENERATION_PROMPT.format(text=d.text) for d in evaluation],
                           max_new_tokens)
    present_gold, absent_gold = gold_sets(evaluation)
    present_lists, absent_lists = [], []
    for phrases, document in zip(lists, evaluation, strict=True):
        stemmed = normalise(document.text)
        present_lists.append([p for p in phrases if contains(stemmed, normalise(p))])
        absent_lists.append([p for p in phrases if not contains(stemmed, normalise(p))])
    present = corpus_scores(present_lists, present_gold)
    absent = corpus_scores(absent_lists, absent_gold)
    tfidf = tfidf_scores(train, evaluation)
    result.metric = ("present keyphrase F1@5", present.f1_at_5,
                     f"F1@M {present.f1_at_m:.4f}; absent F1@5 {absent.f1_at_5:.4f}, F1@M {absent.f1_at_m:.4f}; "
                     f"TF-IDF baseline (present) F1@5 {tfidf.f1_at_5:.4f}; {present.documents} documents")
    result.reports = write_report(result.output, {
        "file": evaluation_source(options),
        "keyphrases": {"present": asdict(present), "absent": asdict(absent), "tfidf_baseline": asdict(tfidf)}})
    return GenerationRun(result, present, absent)

