"""Reading labelled rows from CSV, TSV, JSON Lines or a JSON array, with errors that name the file."""

from __future__ import annotations

import csv
import io
import json
import sys
from pathlib import Path

from peftkit.core.errors import DataError

READERS = (".csv", ".tsv", ".jsonl", ".json")


def note_truncated(lengths: list[int], max_length: int, what: str) -> None:
    """One line on stderr when rows reach ``max_length`` tokens (where they are cut)."""
    cut = sum(length >= max_length for length in lengths)
    if cut:
        print(f"peftkit: note: {cut:,} of {len(lengths):,} {what} rows reach the {max_length}-token limit "
              f"(--max-length, or the model's positions when fewer) and are cut there", file=sys.stderr)


def read_rows(path: str | Path) -> list[dict]:
    """All rows of a data file as dicts; the format comes from the suffix."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: data file not found")
    suffix = path.suffix.lower()
    if suffix not in READERS:
        raise DataError(f"{path}: unsupported file type '{suffix}'; use one of {', '.join(READERS)}")
    try:
        text = path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as exc:
        raise DataError(f"{path}: not UTF-8 text ({exc.reason} at byte {exc.start})") from None
    if suffix in (".csv", ".tsv"):
        rows = _read_delimited(path, text, "\t" if suffix == ".tsv" else ",")
    elif suffix == ".json" and text.lstrip().startswith("["):
        rows = _read_json_array(path, text)
    else:
        rows = _read_json_lines(path, text)
    if not rows:
        raise DataError(f"{path}: the file holds no rows")
    return rows


def _read_delimited(path: Path, text: str, delimiter: str) -> list[dict]:
    reader = csv.DictReader(io.StringIO(text, newline=""), delimiter=delimiter)  # quoted fields keep their newlines
    if not reader.fieldnames:
        return []
    repeated = sorted({name for name in reader.fieldnames if reader.fieldnames.count(name) > 1})
    if repeated:
        raise DataError(f"{path}:1: column '{repeated[0]}' appears more than once in the header")
    rows = []
    for row in reader:
        if None in row or any(value is None for value in row.values()):
            fields = sum(v is not None for k, v in row.items() if k is not None) + len(row.get(None, []))
            header = len(reader.fieldnames)
            raise DataError(f"{path}:{reader.line_num}: the row has {fields} fields, the header {header}")
        rows.append(row)
    return rows


def _read_json_lines(path: Path, text: str) -> list[dict]:
    rows = []
    # JSON Lines end at "\n" only: str.splitlines would also split inside strings at U+0085, U+2028, …
    for number, line in enumerate(text.split("\n"), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line, object_pairs_hook=_refuse_repeated_keys)
        except json.JSONDecodeError as exc:
            raise DataError(f"{path}:{number}: not valid JSON ({exc.msg})") from None
        except _RepeatedKey as exc:
            raise DataError(f"{path}:{number}: key '{exc}' appears more than once in the object") from None
        if not isinstance(row, dict):
            raise DataError(f"{path}:{number}: expected a JSON object per line, got {type(row).__name__}")
        rows.append(row)
    return rows


def _read_json_array(path: Path, text: str) -> list[dict]:
    try:
        rows = json.loads(text, object_pairs_hook=_refuse_repeated_keys)
    except json.JSONDecodeError as exc:
        raise DataError(f"{path}: not valid JSON ({exc.msg} at line {exc.lineno})") from None
    except _RepeatedKey as exc:
        raise DataError(f"{path}: key '{exc}' appears more than once in an object") from None
    if not all(isinstance(row, dict) for row in rows):
        raise DataError(f"{path}: expected a JSON array of objects")
    return rows


class _RepeatedKey(Exception):
    pass


def _refuse_repeated_keys(pairs: list[tuple[str, object]]) -> dict:
    """A JSON object as a dict, unless a key repeats (json would keep the last value silently)."""
    row = dict(pairs)
    if len(row) < len(pairs):
        keys = [key for key, _ in pairs]
        raise _RepeatedKey(next(key for key in keys if keys.count(key) > 1))
    return row


def write_predictions(path: str | Path, rows: list[dict], labels: list[str]) -> None:
    """Rows with their ``predicted`` label and ``probabilities`` (label -> p), as the suffix says: JSON Lines
    (.jsonl / .json) as they are; CSV / TSV with a ``p(LABEL)`` column per label instead of the mapping."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in READERS:
        raise DataError(f"{path}: unsupported file type '{suffix}'; use one of {', '.join(READERS)}")
    if not path.parent.is_dir():
        raise DataError(f"{path}: folder {path.parent} not found")
    if suffix in (".jsonl", ".json"):
        path.write_text("".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows), encoding="utf-8")
        return
    flat = [{**{k: v for k, v in row.items() if k != "probabilities"},
             **{f"p({label})": row["probabilities"][label] for label in labels}} for row in rows]
    with path.open("w", encoding="utf-8", newline="") as file:
        writer = csv.DictWriter(file, fieldnames=list(flat[0]), delimiter="\t" if suffix == ".tsv" else ",")
        writer.writeheader()
        writer.writerows(flat)
