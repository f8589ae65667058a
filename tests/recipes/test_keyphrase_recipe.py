"""Keyphrase extraction (BIO tagging) and generation (causal LM) on tiny models and a toy corpus."""

from __future__ import annotations

import json
import random

import pytest
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import PreTrainedTokenizerFast

from peftkit.cli import main
from peftkit.recipes.keyphrases import Document, extract_keyphrases, generate_keyphrases, target_list
from peftkit.recipes.training import TrainOptions
from tests.conftest import tiny_model

NOUNS = ["movie", "film", "plot"]
FILLER = ["the", "a", "was", "very", "good", "great", "fine", "bad", "awful", "poor"]


def toy_documents(count: int, seed: int) -> list[dict]:
    """Documents whose keyphrases are the nouns they mention (present) and "cinema" (absent)."""
    generator = random.Random(seed)
    rows = []
    for _ in range(count):
        text = [generator.choice(FILLER) for _ in range(8)]
        nouns = generator.sample(NOUNS, generator.randint(1, 2))
        for noun in nouns:
            text.insert(generator.randrange(len(text) + 1), noun)
        present = sorted(nouns, key=text.index)
        rows.append({"text": " ".join(text), "keyphrases": [*present, "cinema"]})
    return rows


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    folder = tmp_path_factory.mktemp("keyphrases")
    for name, count, seed in (("train.jsonl", 120, 0), ("dev.jsonl", 30, 1)):
        (folder / name).write_text("".join(json.dumps(r) + "\n" for r in toy_documents(count, seed)))
    return folder


def test_the_target_lists_present_phrases_by_first_appearance_then_absent_ones():
    document = Document("Safe ship control and matrix games for ships", ["game theory", "matrix game",
                                                                        "ship control", "Matrix games"])
    assert target_list(document) == "ship control ; matrix game ; game theory"


def test_extraction_learns_to_tag_the_keyphrases(model_dir, corpus, tmp_path):
    run = extract_keyphrases(TrainOptions(model=str(model_dir), train=str(corpus / "train.jsonl"),
                                          eval=str(corpus / "dev.jsonl"), epochs=6, batch_size=16, lr=5e-3,
                                          output=str(tmp_path / "extractor")))
    assert run.present.documents == 30
    assert run.present.f1_at_m >= 0.9
    assert 0 < run.tfidf.f1_at_5 < 1 and run.result.metric[0] == "present keyphrase F1@5"


def word_model(tmp_path):
    vocabulary = ["<pad>", "<unk>", "<eos>", "Title", "and", "abstract:", "Keyphrases:", ";", "cinema",
                  *NOUNS, *FILLER]
    backend = Tokenizer(models.WordLevel({w: i for i, w in enumerate(vocabulary)}, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend, pad_token="<pad>", eos_token="<eos>",
                                        unk_token="<unk>", padding_side="left")
    folder = tmp_path / "word-llama"
    tokenizer.save_pretrained(folder)
    tiny_model("llama").save_pretrained(folder)
    return folder


def test_generation_learns_to_write_the_keyphrase_list(corpus, tmp_path):
    run = generate_keyphrases(TrainOptions(model=str(word_model(tmp_path)), train=str(corpus / "train.jsonl"),
                                           eval=str(corpus / "dev.jsonl"), max_steps=150, batch_size=16, lr=1e-2,
                                           output=str(tmp_path / "generator")), max_new_tokens=8)
    assert run.present.documents == 30 and run.absent.documents == 30
    # untrained, the lists are noise (F1 0); "cinema" is always the absent keyphrase
    assert run.present.f1_at_m >= 0.6 and run.absent.f1_at_m >= 0.8


def test_the_cli_runs_the_keyphrase_recipe(model_dir, corpus, tmp_path, capsys):
    assert main(["train", "--recipe", "keyphrase", "--model", str(model_dir), "--train", str(corpus / "train.jsonl"),
                 "--epochs", "1", "--output", str(tmp_path / "out")]) == 0
    assert "eval present keyphrase F1@5:" in capsys.readouterr().out
    assert main(["train", "--recipe", "keyphrase", "--model", str(model_dir)]) == 2
    assert "keyphrase training needs --train FILE" in capsys.readouterr().err
