"""Text classification and text-pair classification: columns, labels, tokenised examples.

Columns are found by name where that is unambiguous (``text``/``sentence``/… for the text, known
pairs such as ``premise``/``hypothesis``, ``label``/``sentiment``/``polarity``/… for the label) and otherwise
must be named; each file is read with its own columns (an evaluation file's are found the same way, starting
from the training file's names). Labels may be texts or numbers (``1``, ``1.0`` and ``"1"`` are one label);
their order is fixed by the training file (sorted, numbers numerically). An evaluation label is matched to the
training labels exactly, else ignoring case; labels matching none are one error listing them all. A missing
(NaN) label or a training file with a single label is an error naming the row.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

from peftkit.core.errors import DataError
from peftkit.tasks.data import note_truncated, read_rows

LABEL_COLUMNS = ("label", "labels", "target", "class", "category", "sentiment", "polarity", "stars", "rating",
                 "type", "intent", "tag", "topic", "y")
TEXT_COLUMNS = ("text", "sentence", "review", "content", "document", "utterance", "question")
PAIR_COLUMNS = (("premise", "hypothesis"), ("sentence1", "sentence2"), ("question1", "question2"),
                ("text_a", "text_b"), ("question", "passage"), ("question", "sentence"))


def bundled_sst2(split: str) -> Path:
    """SST-2 (Socher et al., 2013) as shipped with peftkit: ``train`` (6,920 rows) or ``dev`` (872)."""
    return Path(str(resources.files("peftkit.tasks") / "data" / "sst2" / f"{split}.jsonl"))


@dataclass(frozen=True)
class Columns:
    text: str
    label: str | None  # None: an unlabelled file (peftkit predict)
    text_pair: str | None = None
    found: tuple[str, ...] = field(default=(), compare=False)  # the roles found by name ("text", "label", …)

    def describe(self) -> str:
        """e.g. "text 'review', label 'polarity' (found by name)"."""
        roles = [("text", self.text), ("text pair", self.text_pair), ("label", self.label)]
        parts = [f"{role} '{name}'" + (" (found by name)" if role in self.found else "")
                 for role, name in roles if name is not None]
        return ", ".join(parts)


@dataclass(frozen=True)
class ColumnFlags:
    """The options that name a file's columns, for error messages: training's or evaluation's."""

    text: str = "--text-column"
    text_pair: str = "--text-pair-column"
    label: str = "--label-column"


EVAL_FLAGS = ColumnFlags("--eval-text-column", "--eval-text-pair-column", "--eval-label-column")


def find_columns(rows: list[dict], path: Path | str, text: str | None = None, text_pair: str | None = None,
                 label: str | None = None, *, flags: ColumnFlags = ColumnFlags(), labelled: bool = True,
                 pair: bool | None = None) -> Columns:
    """The file's columns: those given, the others found by name. ``labelled=False``: no label column is
    looked for; ``pair``: whether the file must hold a text pair (None: either)."""
    names = list(rows[0])
    listing = ", ".join(names)
    for option, value in ((flags.text, text), (flags.text_pair, text_pair), (flags.label, label)):
        if value is not None and value not in names:
            raise DataError(f"{path}: column '{value}' ({option}) not found; columns: {listing}")
    found = []
    if label is None and labelled:
        label = next((c for c in LABEL_COLUMNS if c in names and c not in (text, text_pair)), None)
        if label is None:
            raise DataError(f"{path}: cannot tell which column holds the label; pass {flags.label} "
                            f"(columns: {listing})")
        found.append("label")
    if text is None:
        known = next((p for p in PAIR_COLUMNS if p[0] in names and p[1] in names and label not in p), None)
        if known and text_pair is None and pair is not False:
            text, text_pair = known
            found.append("text pair")
        else:
            text = next((c for c in TEXT_COLUMNS if c in names and c not in (label, text_pair)), None)
        if text is None:
            others = [c for c in names if c not in (label, text_pair) and isinstance(rows[0][c], str)]
            if len(others) != 1:
                raise DataError(f"{path}: cannot tell which column holds the text; pass {flags.text} "
                                f"(columns: {listing})")
            text = others[0]
        found.append("text")
    if pair and text_pair is None:
        raise DataError(f"{path}: the adapter was trained on text pairs; this file has no second text column found "
                        f"by name: pass {flags.text_pair} (columns: {listing})")
    if pair is False and text_pair is not None:
        raise DataError(f"{path}: {flags.text_pair}: the adapter was trained on single texts, not pairs")
    return Columns(text=text, label=label, text_pair=text_pair, found=tuple(found))


def columns_like(rows: list[dict], path: Path | str, known: Columns, text: str | None = None,
                 text_pair: str | None = None, label: str | None = None, *, flags: ColumnFlags = ColumnFlags(),
                 labelled: bool = True) -> Columns:
    """Another file's columns for a task whose columns are ``known`` (the training file's, or those saved with
    an adapter): what is given, else ``known``'s names where this file has them all, else found by name; a
    text pair exactly when ``known`` has one."""
    names = set(rows[0])
    texts = [c for c in (known.text, known.text_pair) if c]
    if text is None and text_pair is None and all(c in names for c in texts):
        text, text_pair = known.text, known.text_pair
    if label is None and labelled and known.label in names and known.label not in (text, text_pair):
        label = known.label
    return find_columns(rows, path, text, text_pair, label, flags=flags, labelled=labelled,
                        pair=known.text_pair is not None)


@dataclass
class Examples:
    texts: list[str]
    pairs: list[str] | None
    labels: list[int] | None  # None: unlabelled (rows to predict)


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
        self._folded = {name.casefold(): i for i, name in reversed(list(enumerate(names)))}

    def find(self, name: str) -> int | None:
        """The index of the label ``name``: matched exactly, else ignoring case; None if it matches none."""
        return self.index.get(name, self._folded.get(name.casefold()))

    @classmethod
    def from_values(cls, values: list, path: Path | str = "labels") -> LabelSet:
        unique = {label_name(value, path, row) for row, value in enumerate(values, start=1)}
        if len(unique) < 2:
            raise DataError(f"{path}: every row has the label '{next(iter(unique))}'; classification needs at "
                            f"least two labels")
        return cls(sorted(unique, key=_numeric_first))

    def encode(self, values: list, path: Path | str) -> list[int]:
        """Each value's label index: its name exactly, else ignoring case; the values matching no label are one
        error listing each with its row count and first row."""
        ids, unknown = [], {}
        for row, value in enumerate(values, start=1):
            key = label_name(value, path, row)
            index = self.find(key)
            if index is None:
                unknown.setdefault(key, []).append(row)
            ids.append(index)
        if unknown:
            listed = "; ".join(f"'{key}' ({_rows(rows)})" for key, rows in unknown.items())
            raise DataError(f"{path}: labels the training data never had (labels: {', '.join(self.names)}): "
                            f"{listed}")
        return ids


def _rows(rows: list[int]) -> str:
    return f"row {rows[0]}" if len(rows) == 1 else f"{len(rows)} rows, first row {rows[0]}"


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


def read_texts(rows: list[dict], columns: Columns, path: Path | str) -> Examples:
    """The texts (and text pairs) of unlabelled rows."""
    missing = [c for c in (columns.text, columns.text_pair) if c and c not in rows[0]]
    if missing:
        raise DataError(f"{path}: column '{missing[0]}' not found; columns: {', '.join(rows[0])}")
    return Examples(texts=_column_values(rows, columns.text, path, want_text=True),
                    pairs=_column_values(rows, columns.text_pair, path, want_text=True) if columns.text_pair else None,
                    labels=None)


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
    rows = [{k: encoded[k][i] for k in keys} for i in range(len(examples.texts))]
    if examples.labels is not None:
        for row, label in zip(rows, examples.labels, strict=True):
            row["labels"] = label
    return rows
