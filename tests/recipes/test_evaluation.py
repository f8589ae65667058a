"""Evaluation a user can trust: each file read with its own columns, labels matched by name, a report with
baselines written to eval.json, and predictions for an unlabelled file."""

from __future__ import annotations

import csv
import json

import pytest

from peftkit.cli import main
from peftkit.core.errors import DataError
from peftkit.tasks.classification import Columns, LabelSet, columns_like, find_columns


def rows(**columns) -> list[dict]:
    return [dict(columns)]


@pytest.mark.parametrize("label", ["label", "sentiment", "polarity", "stars", "rating", "type", "intent", "tag"])
def test_common_label_names_are_found_and_said(label):
    columns = find_columns(rows(review="a film", **{label: "x"}), "f.csv")
    assert (columns.text, columns.label) == ("review", label)
    assert columns.describe() == f"text 'review' (found by name), label '{label}' (found by name)"


def test_a_given_column_is_not_said_to_be_found():
    columns = find_columns(rows(question="why?", type="DESC", note="n"), "f.csv", label="type")
    assert columns.describe() == "text 'question' (found by name), label 'type'"


def test_another_file_keeps_the_known_names_where_it_has_them_else_finds_its_own():
    known = Columns(text="sentence", label="label")
    same = columns_like(rows(sentence="s", label="pos"), "a.csv", known)
    assert (same.text, same.label, same.found) == ("sentence", "label", ())
    renamed = columns_like(rows(review="s", polarity="pos"), "b.csv", known)
    assert (renamed.text, renamed.label, renamed.found) == ("review", "polarity", ("label", "text"))
    given = columns_like(rows(body="s", verdict="pos", id="1"), "c.csv", known, text="body", label="verdict")
    assert (given.text, given.label) == ("body", "verdict")


def test_a_pair_task_needs_a_pair_in_every_file_and_a_single_text_task_takes_no_pair():
    pair = Columns(text="premise", label="label", text_pair="hypothesis")
    found = columns_like(rows(sentence1="a", sentence2="b", label="x"), "p.csv", pair)
    assert (found.text, found.text_pair) == ("sentence1", "sentence2")
    with pytest.raises(DataError, match=r"p\.csv: the adapter was trained on text pairs; this file has no second "
                                        r"text column found by name: pass --text-pair-column \(columns: text, label\)"):
        columns_like(rows(text="a", label="x"), "p.csv", pair)
    single = Columns(text="text", label="label")
    with pytest.raises(DataError, match=r"s\.csv: cannot tell which column holds the text; pass --text-column"):
        columns_like(rows(premise="a", hypothesis="b", label="x"), "s.csv", single)  # a pair is not one text
    chosen = columns_like(rows(premise="a", hypothesis="b", label="x"), "s.csv", single, text="hypothesis")
    assert (chosen.text, chosen.text_pair) == ("hypothesis", None)


def test_labels_match_ignoring_case_and_the_unknown_ones_are_listed_together():
    labels = LabelSet(["negative", "positive"])
    assert labels.encode(["Positive", "NEGATIVE", "positive"], "e.csv") == [1, 0, 1]
    with pytest.raises(DataError) as error:
        labels.encode(["neutral", "positive", "mixed", "neutral", "neutral"], "e.csv")
    assert str(error.value) == ("e.csv: labels the training data never had (labels: negative, positive): "
                                "'neutral' (3 rows, first row 1); 'mixed' (row 3)")


@pytest.fixture(scope="module")
def adapter(model_dir, data, tmp_path_factory):
    out = tmp_path_factory.mktemp("adapter") / "out"
    assert main(["train", "--model", str(model_dir), "--train", str(data / "train.csv"), "--eval",
                 str(data / "dev.jsonl"), "--epochs", "6", "--batch-size", "16", "--lr", "5e-3", "--output",
                 str(out)]) == 0
    return out


def test_training_reports_beyond_accuracy_and_writes_eval_json(model_dir, data, tmp_path, capsys):
    out = tmp_path / "out"
    assert main(["train", "--model", str(model_dir), "--train", str(data / "train.csv"), "--eval",
                 str(data / "dev.jsonl"), "--max-steps", "2", "--output", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "  columns:              train.csv: text 'review' (found by name), label 'sentiment' (found by name); " \
           "dev.jsonl: text 'review', label 'sentiment'" in printed
    assert "    macro-F1 " in printed and "baselines: majority 'neg' 0.5000, random 0.5000" in printed
    record = json.loads((out / "eval.json").read_text())
    report = record["classification"]
    assert record["file"] == str(data / "dev.jsonl") and record["columns"]["text"] == "review"
    assert report["examples"] == 40 and sum(map(sum, report["confusion"])) == 40
    assert report["correct"] == sum(report["confusion"][k][k] for k in range(2))
    assert f"evaluation report:    {out / 'eval.json'}, {out / 'eval-confusion.png'}" in printed
    assert (out / "eval-confusion.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_an_untrained_classifier_is_called_no_better_than_the_majority(model_dir, data, tmp_path, capsys):
    out = tmp_path / "out"
    assert main(["train", "--model", str(model_dir), "--train", str(data / "train.csv"), "--eval",
                 str(data / "dev.jsonl"), "--max-steps", "1", "--lr", "1e-9", "--output", str(out)]) == 0
    report = json.loads((out / "eval.json").read_text())["classification"]
    printed = capsys.readouterr().out
    assert report["no_better_than_majority"] is True
    assert "    warning: no better than predicting 'neg' for every row (0.5000 lies within" in printed


def test_eval_reads_a_file_whose_columns_differ_from_the_training_files(adapter, data, tmp_path, capsys):
    dev = [json.loads(line) for line in (data / "dev.jsonl").read_text().splitlines()]
    other = tmp_path / "other.csv"
    with other.open("w", newline="") as file:
        writer = csv.writer(file)
        writer.writerow(["sentence", "polarity"])
        writer.writerows([r["review"], r["sentiment"].upper()] for r in dev)  # labels in capitals
    capsys.readouterr()
    assert main(["eval", "--adapter", str(adapter), "--eval", str(other)]) == 0
    printed = capsys.readouterr().out
    assert "(text 'sentence' (found by name), label 'polarity' (found by name))" in printed
    report = json.loads((adapter / "eval.json").read_text())["classification"]
    assert report["accuracy"] >= 0.9 and report["examples"] == 40
    assert printed.splitlines()[1].startswith(f"  accuracy {report['accuracy']:.4f} ({report['correct']}/40; 95% ")


def test_eval_names_the_columns_it_is_told_and_refuses_unknown_labels(adapter, tmp_path, capsys):
    odd = tmp_path / "odd.jsonl"
    odd.write_text(json.dumps({"body": "the film was good", "verdict": "pos", "id": "a"}) + "\n"
                   + json.dumps({"body": "the film was bad", "verdict": "meh", "id": "b"}) + "\n")
    assert main(["eval", "--adapter", str(adapter), "--eval", str(odd)]) == 2
    assert "cannot tell which column holds the label; pass --label-column" in capsys.readouterr().err
    assert main(["eval", "--adapter", str(adapter), "--eval", str(odd), "--text-column", "body",
                 "--label-column", "verdict"]) == 2
    assert capsys.readouterr().err.strip() == (f"peftkit: error: {odd}: labels the training data never had "
                                               "(labels: neg, pos): 'meh' (row 2)")


def test_predict_writes_each_rows_label_and_probabilities(adapter, data, tmp_path, capsys):
    texts = tmp_path / "texts.csv"
    texts.write_text("id,review\n1,the movie was very great\n2,the plot was very awful\n")
    out = tmp_path / "predicted.csv"
    assert main(["predict", "--adapter", str(adapter), "--input", str(texts), "--output", str(out)]) == 0
    written = list(csv.DictReader(out.open()))
    assert [row["predicted"] for row in written] == ["pos", "neg"] and [row["id"] for row in written] == ["1", "2"]
    for row in written:
        assert abs(float(row["p(neg)"]) + float(row["p(pos)"]) - 1) < 1e-5
    assert "predicted:   neg 1, pos 1" in capsys.readouterr().out
    jsonl = tmp_path / "predicted.jsonl"
    assert main(["predict", "--adapter", str(adapter), "--input", str(texts), "--output", str(jsonl)]) == 0
    first = json.loads(jsonl.read_text().splitlines()[0])
    assert first["predicted"] == "pos" and first["probabilities"]["pos"] > 0.5 and first["review"]
    assert main(["predict", "--adapter", str(adapter), "--input", str(texts), "--output", str(texts)]) == 2
    assert texts.read_text().startswith("id,review\n")  # the input is left as it was


def test_train_reads_an_eval_file_with_columns_of_its_own(model_dir, data, tmp_path, capsys):
    dev = tmp_path / "dev.jsonl"
    dev.write_text("".join(json.dumps({"body": f"the film was {word}", "verdict": label, "id": str(i)}) + "\n"
                           for i, (word, label) in enumerate([("good", "POS"), ("awful", "neg")] * 5)))
    command = ["train", "--model", str(model_dir), "--train", str(data / "train.csv"), "--eval", str(dev),
               "--max-steps", "2", "--output", str(tmp_path / "out")]
    assert main(command) == 2
    assert capsys.readouterr().err.strip() == (f"peftkit: error: {dev}: cannot tell which column holds the label; "
                                               "pass --eval-label-column (columns: body, verdict, id)")
    assert main([*command, "--eval-text-column", "body", "--eval-label-column", "verdict"]) == 0
    printed = capsys.readouterr().out
    assert "dev.jsonl: text 'body', label 'verdict'" in printed and "eval accuracy:  " in printed
    assert json.loads((tmp_path / "out" / "eval.json").read_text())["classification"]["examples"] == 10
