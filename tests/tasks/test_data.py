import json

import pytest

from peftkit import DataError
from peftkit.tasks.classification import Columns, LabelSet, bundled_sst2, find_columns, load_examples
from peftkit.tasks.data import read_rows


def write(path, text):
    path.write_text(text, encoding="utf-8")
    return path


def test_reads_csv_tsv_jsonl_and_json_arrays_alike(tmp_path):
    rows = [{"text": "good, fine", "label": "pos"}, {"text": "bad", "label": "neg"}]
    csv_file = write(tmp_path / "d.csv", 'text,label\n"good, fine",pos\nbad,neg\n')
    tsv_file = write(tmp_path / "d.tsv", "text\tlabel\ngood, fine\tpos\nbad\tneg\n")
    jsonl_file = write(tmp_path / "d.jsonl", "\n".join(json.dumps(r) for r in rows) + "\n\n")
    json_file = write(tmp_path / "d.json", json.dumps(rows))
    for path in (csv_file, tsv_file, jsonl_file, json_file):
        assert read_rows(path) == rows


def test_jsonl_strings_may_hold_unicode_line_separators(tmp_path):
    rows = [{"text": "one \u0085 two \u2028 three", "label": "a"}, {"text": "four", "label": "b"}]
    path = write(tmp_path / "d.jsonl", "\r\n".join(json.dumps(r, ensure_ascii=False) for r in rows))
    assert read_rows(path) == rows


@pytest.mark.parametrize(("name", "text", "message"), [
    ("missing.csv", None, "data file not found"),
    ("empty.csv", "", "holds no rows"),
    ("header.csv", "text,label\n", "holds no rows"),
    ("bad.jsonl", '{"text": "a", "label": 1}\n{"text": \n', r"bad.jsonl:2: not valid JSON"),
    ("short.csv", "text,label\nonly\n", r"short.csv:2: the row has 1 fields"),
    ("data.xlsx", "x", "unsupported file type '.xlsx'"),
])
def test_bad_files_get_one_line_errors_naming_the_file(tmp_path, name, text, message):
    path = tmp_path / name
    if text is not None:
        write(path, text)
    with pytest.raises(DataError, match=message) as error:
        read_rows(path)
    assert name in str(error.value) and "\n" not in str(error.value)


@pytest.mark.parametrize(("columns", "expected"), [
    (["text", "label"], Columns("text", "label")),
    (["id", "sentence", "target"], Columns("sentence", "target")),
    (["premise", "hypothesis", "label"], Columns("premise", "label", "hypothesis")),
    (["sentence1", "sentence2", "class"], Columns("sentence1", "class", "sentence2")),
    (["body", "label"], Columns("body", "label")),
])
def test_columns_are_detected_where_unambiguous(columns, expected):
    row = {c: (7 if c == "id" else "x") for c in columns}
    assert find_columns([row], "f.csv") == expected


def test_ambiguous_or_missing_columns_are_errors_naming_the_option():
    with pytest.raises(DataError, match="pass --text-column"):
        find_columns([{"title": "a", "body": "b", "label": "x"}], "f.csv")
    with pytest.raises(DataError, match="pass --label-column"):
        find_columns([{"text": "a", "grade": 3}], "f.csv")
    with pytest.raises(DataError, match=r"column 'review' \(--text-column\) not found; columns: text, label"):
        find_columns([{"text": "a", "label": 1}], "f.csv", text="review")


def test_labels_sorted_integers_numerically_and_unseen_eval_labels_rejected(tmp_path):
    assert LabelSet.from_values([10, 2, 2, 1]).names == ["1", "2", "10"]
    assert LabelSet.from_values(["b", "a"]).names == ["a", "b"]
    train = write(tmp_path / "train.jsonl", '{"text": "a", "label": 1}\n{"text": "b", "label": 0}\n')
    dev = write(tmp_path / "dev.jsonl", '{"text": "a", "label": 2}\n')
    examples, labels = load_examples(train, Columns("text", "label"))
    assert examples.labels == [1, 0] and labels.names == ["0", "1"]
    with pytest.raises(DataError, match=r"dev.jsonl: labels the training data never had \(labels: 0, 1\): '2' "
                                        r"\(row 1\)"):
        load_examples(dev, Columns("text", "label"), labels)


def test_rows_without_text_are_errors(tmp_path):
    path = write(tmp_path / "d.jsonl", '{"text": "a", "label": 1}\n{"text": "", "label": 0}\n')
    with pytest.raises(DataError, match="row 2 has no text in column 'text'"):
        load_examples(path, Columns("text", "label"))


def test_bundled_sst2_has_the_documented_sizes():
    assert len(read_rows(bundled_sst2("train"))) == 6920
    dev = read_rows(bundled_sst2("dev"))
    assert len(dev) == 872 and {r["label"] for r in dev} == {"negative", "positive"}
