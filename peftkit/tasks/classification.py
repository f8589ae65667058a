"""Text classification and text-pair classification: columns, labels, tokenised examples.

Columns are found by name where that is unambiguous (``text``/``sentence``/… for the text, known
pairs such as ``premise``/``hypothesis``, ``label``/``target``/… for the label) and otherwise must be
named. Labels may be texts or numbers (``1``, ``1.0`` and ``"1"`` are one label); their order is fixed by the
training file (sorted, numbers numerically), and an evaluation label never seen in training, a missing (NaN)
label or a training file with a single label is an error naming the row.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from peftkit.core.errors import DataError
from peftkit.tasks.data import note_truncated, read_rows

LABEL_COLUMNS = ("label", "labels", "target", "class", "category", "sentiment", "y")
TEXT_COLUMNS = ("text", "sentence", "review", "content", "document", "utterance", "question")
PAIR_COLUMNS = (("premise", "hypothesis"), ("sentence1", "sentence2"), ("question1", "question2"),
                ("text_a", "text_b"), ("question", "passage"), ("question", "sentence"))


def bundled_sst2(split: str) -> Path:
    """SST-2 (Socher et al., 2013) as shipped with peftkit: ``train`` (6,920 rows) or ``dev`` (872)."""
    return Path(str(resources.files("peftkit.tasks") / "data" / "sst2" / f"{split}.jsonl"))


@dataclass(frozen=True)
class Columns:
    text: str
    label: str
    text_pair: str | None = None


def find_columns(rows: list[dict], path: Path | str, text: str | None = None, text_pair: str | None = None,
                 label: str | None = None) -> Columns:
    names = list(rows[0])
    listing = ", ".join(names)
    for option, value in (("--text-column", text), ("--text-pair-column", text_pair), ("--label-column", label)):
        if value is not None and value not in names:
            raise DataError(f"{path}: column '{value}' ({option}) not found; columns: {listing}")
    if label is None:
        label = next((c for c in LABEL_COLUMNS if c in names), None)
        if label is None:
            raise DataError(f"{path}: cannot tell which column holds the label; pass --label-column "
                            f"(columns: {listing})")
    if text is None:
        pair = next((p for p in PAIR_COLUMNS if p[0] in names and p[1] in names and label not in p), None)
        if pair and text_pair is None:
            text, text_pair = pair
        else:
            text = next((c for c in TEXT_COLUMNS if c in names and c not in (label, text_pair)), None)
        if text is None:
            others = [c for c in names if c not in (label, text_pair) and isinstance(rows[0][c], str)]
            if len(others) != 1:
                raise DataError(f"{path}: cannot tell which column holds the text; pass --text-column "
                                f"(columns: {listing})")
            text = others[0]
    return Columns(text=text, label=label, text_pair=text_pair)


@dataclass
class Examples:
    texts: list[str]
    pairs: list[str] | None
    labels: list[int]


def label_name(value, path: Path | str, row: int) -> str:
    """A label value as the name it is known by: ``1``, ``1.0`` and ``"1"`` are one label "1"; a NaN, an
    object or a list is an error naming the row."""
    if isinstance(value, float):
        if math.isnan(value):
            raise DataError(f"{path}: row {row} has a missing (NaN) label")
        return str(int(value)) if value.is_integer() else str(value)
    if isinstance(value, (dict, list)):
        kind = "object" if isinstance(value, dict) else "list"
        raise DataError(f"{path}: row {row} has a label that is a JSON {kind} ({json.dumps(value)[:40]}); a label "
                        f"is a text or a number")
    name = str(value).strip()
    if name.lower() == "nan":
        raise DataError(f"{path}: row {row} has a missing (NaN) label")
    return name


class LabelSet:
    """The label names in training order: sorted, numbers numerically."""

    def __init__(self, names: list[str]) -> None:
        self.names = names
        self.index = {name: i for i, name in enumerate(names)}

    @classmethod
    def from_values(cls, values: list, path: Path | str = "labels") -> LabelSet:
        unique = {label_name(value, path, row) for row, value in enumerate(values, start=1)}
        if len(unique) < 2:
            raise DataError(f"{path}: every row has the label '{next(iter(unique))}'; classification needs at "
                            f"least two labels")
        return cls(sorted(unique, key=_numeric_first))

    def encode(self, values: list, path: Path | str) -> list[int]:
        ids = []
        for row, value in enumerate(values, start=1):
            key = label_name(value, path, row)
            if key not in self.index:
                raise DataError(f"{path}: label '{key}' (row {row}) never appears in the training data "
                                f"(labels: {', '.join(self.names)})")
            ids.append(self.index[key])
        return ids


def _numeric_first(name: str) -> tuple:
    """Integer names in numeric order, then the others alphabetically."""
    try:
        return (0, int(name), "")
    except ValueError:
        return (1, 0, name)


def _column_values(rows: list[dict], column: str, path, want_text: bool) -> list:
    values = []
    for row_number, row in enumerate(rows, start=1):
        value = row.get(column)
        if value is None or value == "":
            raise DataError(f"{path}: row {row_number} has no {'text' if want_text else 'value'} in column "
                            f"'{column}'")
        if want_text and not isinstance(value, str):
            raise DataError(f"{path}: row {row_number} holds {type(value).__name__} {json.dumps(value)[:40]} in text "
                            f"column '{column}', not a text")
        values.append(value)
    return values


def load_examples(path: Path | str, columns: Columns, labels: LabelSet | None = None,
                  rows: list[dict] | None = None) -> tuple[Examples, LabelSet]:
    """Read ``path`` (or use ``rows`` read from it) into examples; the label set comes from this file
    unless one is given."""
    rows = read_rows(path) if rows is None else rows
    missing = [c for c in (columns.text, columns.text_pair, columns.label) if c and c not in rows[0]]
    if missing:
        raise DataError(f"{path}: column '{missing[0]}' not found; columns: {', '.join(rows[0])}")
    raw_labels = _column_values(rows, columns.label, path, want_text=False)
    labels = labels or LabelSet.from_values(raw_labels, path)
    return Examples(
        texts=_column_values(rows, columns.text, path, want_text=True),
        pairs=_column_values(rows, columns.text_pair, path, want_text=True) if columns.text_pair else None,
        labels=labels.encode(raw_labels, path),
    ), labels


def token_lengths(tokenizer, examples: Examples) -> list[int]:
    """Each example's length in tokens, uncut."""
    return [len(ids) for ids in tokenizer(examples.texts, examples.pairs, verbose=False)["input_ids"]]


def tokenize(tokenizer, examples: Examples, max_length: int, what: str = "") -> list[dict]:
    """One dict per example (``input_ids``, ``attention_mask``, … and ``labels``), unpadded; ``what`` (e.g.
    "training"): note on stderr how many rows are cut at ``max_length``."""
    encoded = tokenizer(examples.texts, examples.pairs, truncation=True, max_length=max_length)
    if what:
        note_truncated([len(ids) for ids in encoded["input_ids"]], max_length, what)
    keys = list(encoded.keys())
    return [{**{k: encoded[k][i] for k in keys}, "labels": label} for i, label in enumerate(examples.labels)]
