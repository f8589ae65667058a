"""The token-tagging recipe on the tiny BERT folder: it learns a tagging rule, saves, and the CLI runs it."""

from __future__ import annotations

import json
import random

import pytest

from peftkit.cli import main
from peftkit.core.checkpoint import read_json
from peftkit.recipes.tagging import train_tagger
from peftkit.recipes.training import TrainOptions

RULE = {"movie": "B-THING", "film": "B-THING", "plot": "B-PART"}  # "very <adjective>": B-QUALITY I-QUALITY


def tagged(sentences: int, seed: int) -> list[dict]:
    generator = random.Random(seed)
    rows = []
    for _ in range(sentences):
        words, tags = [], []
        for _ in range(generator.randint(3, 6)):
            if generator.random() < 0.3:
                words += ["very", generator.choice(["good", "bad", "fine", "awful"])]
                tags += ["B-QUALITY", "I-QUALITY"]
            else:
                word = generator.choice(["movie", "film", "plot", "the", "a", "was", "great", "poor"])
                words.append(word)
                tags.append(RULE.get(word, "O"))
        rows.append({"tokens": words, "tags": tags})
    return rows


@pytest.fixture(scope="module")
def ner_files(tmp_path_factory):
    folder = tmp_path_factory.mktemp("ner")
    for name, count, seed in (("train.jsonl", 160, 0), ("dev.jsonl", 40, 1)):
        (folder / name).write_text("".join(json.dumps(r) + "\n" for r in tagged(count, seed)))
    return folder


def test_the_recipe_learns_the_tags_and_saves_them(model_dir, ner_files, tmp_path):
    options = TrainOptions(task="token-classification", model=str(model_dir), train=str(ner_files / "train.jsonl"),
                           eval=str(ner_files / "dev.jsonl"), epochs=8, batch_size=16, lr=5e-3,
                           output=str(tmp_path / "tagger"))
    run = train_tagger(options)
    result, scores = run.result, run.scores
    assert scores.gold > 60 and scores.f1 >= 0.9
    assert result.metric[0] == "entity F1" and result.metric[1] == scores.f1
    assert result.losses[-1] < 0.5 * result.losses[0]
    assert result.batches.startswith("padding-free: ") and "% less)" in result.batches
    assert json.loads((tmp_path / "tagger" / "eval.json").read_text())["entities"]["f1"] == scores.f1
    task = read_json(tmp_path / "tagger" / "peftkit_task.json")
    assert task["task"] == "token-classification"
    assert task["labels"] == ["B-PART", "B-QUALITY", "B-THING", "I-QUALITY", "O"]


def test_the_cli_trains_a_tagger_and_reports_entity_f1(model_dir, ner_files, tmp_path, capsys):
    code = main(["train", "--task", "token-classification", "--model", str(model_dir), "--train",
                 str(ner_files / "train.jsonl"), "--epochs", "1", "--output", str(tmp_path / "out")])
    assert code == 0
    assert "eval entity F1:" in capsys.readouterr().out


def test_the_cli_names_a_missing_training_file(model_dir, capsys):
    assert main(["train", "--task", "token-classification", "--model", str(model_dir)]) == 2
    assert "token classification needs --train FILE" in capsys.readouterr().err


def test_padded_and_padding_free_tagging_follow_the_same_losses(model_dir, ner_files, tmp_path):
    from transformers import AutoConfig, AutoTokenizer, BertForTokenClassification

    without_dropout = tmp_path / "model"  # dropout would draw different masks for the two batch shapes
    config = AutoConfig.from_pretrained(model_dir, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    BertForTokenClassification(config).save_pretrained(without_dropout)
    AutoTokenizer.from_pretrained(model_dir).save_pretrained(without_dropout)

    def losses(packing: str) -> list[float]:
        options = TrainOptions(task="token-classification", model=str(without_dropout), max_steps=20, batch_size=16,
                               lr=5e-3, train=str(ner_files / "train.jsonl"), eval=str(ner_files / "dev.jsonl"),
                               output=str(tmp_path / packing), packing=packing, method_options={"lora_dropout": 0.0})
        return train_tagger(options).result.losses

    packed, padded = losses("on"), losses("off")
    assert len(packed) == 2 and max(abs(a - b) for a, b in zip(packed, padded, strict=True)) < 1e-4


def test_eval_scores_a_tagging_adapter_on_a_file_with_columns_of_its_own(model_dir, ner_files, tmp_path, capsys):
    out = tmp_path / "tagger"
    assert main(["train", "--task", "token-classification", "--model", str(model_dir), "--train",
                 str(ner_files / "train.jsonl"), "--eval", str(ner_files / "dev.jsonl"), "--epochs", "8",
                 "--batch-size", "16", "--lr", "5e-3", "--output", str(out)]) == 0
    trained_f1 = json.loads((out / "eval.json").read_text())["entities"]["f1"]
    renamed = tmp_path / "renamed.jsonl"  # the same rows under other column names, one tag in lower case
    rows = [json.loads(line) for line in (ner_files / "dev.jsonl").read_text().splitlines()]
    rows[0]["tags"] = [tag.lower() for tag in rows[0]["tags"]]
    renamed.write_text("".join(json.dumps({"words": r["tokens"], "ner_tags": r["tags"]}) + "\n" for r in rows))
    capsys.readouterr()
    assert main(["eval", "--adapter", str(out), "--eval", str(renamed)]) == 0
    printed = capsys.readouterr().out
    report = json.loads((out / "eval.json").read_text())
    assert report["columns"] == {"words": "words", "tags": "ner_tags"} and report["entities"]["f1"] == trained_f1
    assert f"  entity F1 {trained_f1:.4f} (" in printed and "  by type (F1, gold entities): B-PART" not in printed
    assert "by type (F1, gold entities): PART " in printed and "; THING " in printed
