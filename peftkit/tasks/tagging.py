"""Token tagging (named entities, keyphrase BIO tags): word-level tags, sub-word alignment, entity F1.

Rows hold a list of words and a list of tags of the same length (columns ``tokens`` / ``words`` and
``tags`` / ``ner_tags`` / ``labels`` unless named). A word's tag is trained and predicted at its first
sub-word token; the others and special tokens carry -100 (ignored). Tags are IOB2 (``B-X`` begins an
entity of type X, ``I-X`` continues it, ``O`` is outside).

Entity-level scores follow conlleval / seqeval's default mode: an entity is a maximal run B-X I-X … I-X,
where an ``I-X`` after a tag of another type also begins one; precision, recall and F1 are micro-averaged
over exact (type, start, end) matches.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from peftkit.core.errors import DataError
from peftkit.tasks.classification import LabelSet
from peftkit.tasks.data import read_rows

WORD_COLUMNS = ("tokens", "words")
TAG_COLUMNS = ("tags", "ner_tags", "labels", "bio")
IGNORED = -100


@dataclass
class TaggedExamples:
    words: list[list[str]]
    tags: list[list[int]]


def find_tag_columns(rows: list[dict], path: Path | str, words: str | None = None,
                     tags: str | None = None) -> tuple[str, str]:
    names = list(rows[0])
    for option, value in (("--text-column", words), ("--label-column", tags)):
        if value is not None and value not in names:
            raise DataError(f"{path}: column '{value}' ({option}) not found; columns: {', '.join(names)}")
    words = words or next((c for c in WORD_COLUMNS if c in names), None)
    tags = tags or next((c for c in TAG_COLUMNS if c in names), None)
    if words is None or tags is None:
        raise DataError(f"{path}: cannot tell which columns hold the words and the tags; pass --text-column and "
                        f"--label-column (columns: {', '.join(names)})")
    return words, tags


def load_tagged(path: Path | str, columns: tuple[str, str], tag_set: LabelSet | None = None,
                rows: list[dict] | None = None) -> tuple[TaggedExamples, LabelSet]:
    """Read words and tags; the tag set comes from this file unless one is given (then a tag matches it exactly,
    else ignoring case)."""
    rows = read_rows(path) if rows is None else rows
    word_column, tag_column = columns
    all_words, all_tags = [], []
    for number, row in enumerate(rows, start=1):
        words, tags = row.get(word_column), row.get(tag_column)
        if not isinstance(words, list) or not isinstance(tags, list):
            raise DataError(f"{path}: row {number} needs lists in '{word_column}' and '{tag_column}'")
        if len(words) != len(tags):
            raise DataError(f"{path}: row {number} has {len(words)} words but {len(tags)} tags")
        all_words.append([str(w) for w in words])
        all_tags.append([str(t) for t in tags])
    tag_set = tag_set or LabelSet(sorted({t for tags in all_tags for t in tags}))
    encoded, unknown = [], {}
    for number, tags in enumerate(all_tags, start=1):
        ids = [tag_set.find(t) for t in tags]
        for tag, index in zip(tags, ids, strict=True):
            if index is None and number not in unknown.setdefault(tag, []):
                unknown[tag].append(number)
        encoded.append(ids)
    if unknown:  # every unknown tag in one line, as for classification labels
        listed = "; ".join(f"'{tag}' (row {rows[0]}" + (f" and {len(rows) - 1} more)" if len(rows) > 1 else ")")
                           for tag, rows in unknown.items())
        raise DataError(f"{path}: tags the training data never had (tags: {', '.join(tag_set.names)}): {listed}")
    return TaggedExamples(all_words, encoded), tag_set


def tagged_lengths(tokenizer, examples: TaggedExamples) -> list[int]:
    """Each row's length in tokens, uncut."""
    return [len(ids) for ids in tokenizer(examples.words, is_split_into_words=True, verbose=False)["input_ids"]]


def tokenize_tagged(tokenizer, examples: TaggedExamples, max_length: int) -> list[dict]:
    """One dict per example: ``input_ids``, ``attention_mask``, ``labels`` (a word's tag at its first
    sub-word, -100 elsewhere) and ``word_ids`` (which word each token starts, -1 if none)."""
    encoded = tokenizer(examples.words, is_split_into_words=True, truncation=True, max_length=max_length)
    result = []
    for index, tags in enumerate(examples.tags):
        labels, starts, previous = [], [], None
        for word in encoded.word_ids(index):
            first = word is not None and word != previous
            labels.append(tags[word] if first else IGNORED)
            starts.append(word if first else -1)
            previous = word
        item = {key: encoded[key][index] for key in encoded.keys()}
        result.append({**item, "labels": labels, "word_ids": starts})
    return result


def entities(tags: list[str]) -> set[tuple[str, int, int]]:
    """(type, first word, last word) of every entity in an IOB2 tag sequence (see the module docstring)."""
    found, current = set(), None
    for position, tag in enumerate([*tags, "O"]):
        prefix, _, kind = tag.partition("-")
        continues = current is not None and prefix == "I" and kind == current[0]
        if current is not None and not continues:
            found.add((current[0], current[1], position - 1))
            current = None
        if prefix in ("B", "I") and not continues:
            current = (kind, position)
    return found


@dataclass
class EntityScores:
    precision: float
    recall: float
    f1: float
    gold: int
    predicted: int
    correct: int
    by_type: dict[str, EntityScores] = field(default_factory=dict)  # the same scores over each entity type alone

    @classmethod
    def from_counts(cls, gold: int, predicted: int, correct: int) -> EntityScores:
        precision = correct / predicted if predicted else 0.0
        recall = correct / gold if gold else 0.0
        f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
        return cls(precision, recall, f1, gold, predicted, correct)

    def describe_types(self) -> str:
        """e.g. "LOC 0.81 (120); PER 0.74 (98)": each type's F1 and gold entity count."""
        return "; ".join(f"{kind} {scores.f1:.2f} ({scores.gold})" for kind, scores in self.by_type.items())


def entity_scores(gold: list[list[str]], predicted: list[list[str]]) -> EntityScores:
    """Micro precision, recall and F1 over exact entity matches, overall and per entity type."""
    counts: dict[str, list[int]] = {}  # type -> [gold, predicted, correct]
    for number, (gold_tags, predicted_tags) in enumerate(zip(gold, predicted, strict=True)):
        if len(gold_tags) != len(predicted_tags):
            raise ValueError(f"sentence {number}: {len(gold_tags)} gold tags but {len(predicted_tags)} predicted")
        gold_entities, predicted_entities = entities(gold_tags), entities(predicted_tags)
        for index, found in enumerate((gold_entities, predicted_entities, gold_entities & predicted_entities)):
            for kind, _, _ in found:
                counts.setdefault(kind, [0, 0, 0])[index] += 1
    overall = EntityScores.from_counts(*(sum(c[i] for c in counts.values()) for i in range(3)))
    overall.by_type = {kind: EntityScores.from_counts(*counts[kind]) for kind in sorted(counts)}
    return overall
