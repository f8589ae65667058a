"""Text classification and text-pair classification: columns, labels, tokenised examples.

Columns are found by name where that is unambiguous (``text``/``sentence``/… for the text, known
pairs such as ``premise``/``hypothesis``, ``label``/``target``/… for the label) and otherwise must be
named. Labels may be strings or integers; their order is fixed by the training file (sorted), and an
evaluation label never seen in training is an error.
"""

from __future__ import annotations

from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from peftkit.core.errors import DataError
from peftkit.tasks.data import read_rows

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


class LabelSet:
    """The label names in training order: sorted, integers numerically."""

    def __init__(self, names: list[str]) -> None:
        self.names = names
        self.index = {name: i for i, name in enumerate(names)}

    @classmethod
    def from_values(cls, values: list) -> LabelSet:
        unique = set(values)
        if all(isinstance(v, int) and not isinstance(v, bool) for v in unique):
            return cls([str(v) for v in sorted(unique)])
        return cls(sorted(str(v) for v in unique))

    def encode(self, values: list, path: Path | str) -> list[int]:
        ids = []
        for row, value in enumerate(values, start=1):
            key = str(value)
            if key not in self.index:
                raise DataError(f"{path}: label '{key}' (row {row}) never appears in the training data "
                                f"(labels: {', '.join(self.names)})")
            ids.append(self.index[key])
        return ids


def _column_values(rows: list[dict], column: str, path, want_text: bool) -> list:
    values = []
    for row_number, row in enumerate(rows, start=1):
        value = row.get(column)
        if value is None or (want_text and not isinstance(value, str)) or value == "":
            raise DataError(f"{path}: row {row_number} has no {'text' if want_text else 'value'} in column "
                            f"'{column}'")
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
    labels = labels or LabelSet.from_values(raw_labels)
    return Examples(
        texts=_column_values(rows, columns.text, path, want_text=True),
        pairs=_column_values(rows, columns.text_pair, path, want_text=True) if columns.text_pair else None,
        labels=labels.encode(raw_labels, path),
    ), labels


def tokenize(tokenizer, examples: Examples, max_length: int) -> list[dict]:
    """One dict per example (``input_ids``, ``attention_mask``, … and ``labels``), unpadded."""
    encoded = tokenizer(examples.texts, examples.pairs, truncation=True, max_length=max_length)
    keys = list(encoded.keys())
    return [{**{k: encoded[k][i] for k in keys}, "labels": label} for i, label in enumerate(examples.labels)]
