"""PET with adapters: cloze encoding, verbalizer scores against a hand computation, few-shot training."""

from __future__ import annotations

import json

import pytest
import torch
from transformers import AutoTokenizer

import peftkit
from peftkit.recipes.pet import ClozeEncoder, Pattern, train_pet
from peftkit.recipes.training import TrainOptions
from tests.conftest import tiny_model
from tests.tasks.test_causal_lm import tiny_tokenizer


def test_masks_sit_where_the_pattern_puts_them_and_the_text_is_cut_first(mlm_dir):
    tokenizer = AutoTokenizer.from_pretrained(mlm_dir)
    pattern = Pattern("{text} was {mask} .", {"pos": ["good", "very good"], "neg": ["bad"]})
    encoder = ClozeEncoder(tokenizer, pattern, ["neg", "pos"], causal=False, max_length=10)
    assert encoder.masks == 2  # "very good" is two tokens
    encoded = encoder.encode("the movie the plot the film the plot")
    tokens = tokenizer.convert_ids_to_tokens(encoded["input_ids"])
    assert len(tokens) == 10 and tokens[-5:] == ["was", "[MASK]", "[MASK]", "[UNK]", "[SEP]"]
    assert encoded["score_at"] == 6 and tokens[:4] == ["[CLS]", "the", "movie", "the"]


def test_label_scores_equal_a_hand_computation(mlm_dir):
    tokenizer = AutoTokenizer.from_pretrained(mlm_dir)
    pattern = Pattern("{text} {mask}", {"pos": ["good", "very good"], "neg": ["bad"]})
    encoder = ClozeEncoder(tokenizer, pattern, ["neg", "pos"], causal=False, max_length=16)
    logits = torch.randn(2, 7, len(tokenizer))
    score_at = torch.tensor([2, 3])
    ids = tokenizer.convert_tokens_to_ids
    for b in range(2):
        at = int(score_at[b])
        neg = logits[b, at, ids("bad")]
        pos = (logits[b, at, ids("good")] + logits[b, at, ids("very")] + logits[b, at + 1, ids("good")]) / 2
        scores = encoder.label_scores(logits, score_at)[b]
        assert torch.allclose(scores, torch.stack([neg, pos]), atol=1e-6)


def test_pet_with_lora_learns_the_task_on_a_masked_lm(mlm_dir, data, tmp_path):
    pattern = Pattern("{text} was {mask}", {"pos": ["good"], "neg": ["bad"]})
    result = train_pet(TrainOptions(model=str(mlm_dir), train=str(data / "train.csv"), eval=str(data / "dev.jsonl"),
                                    epochs=8, batch_size=16, lr=1e-2, output=str(tmp_path / "pet")), pattern)
    assert result.accuracy >= 0.9
    assert result.losses[-1] < 0.6 * result.losses[0]
    saved = json.loads((tmp_path / "pet" / "peftkit_task.json").read_text())
    assert saved["task"] == "pet" and saved["verbalizer"] == {"pos": ["good"], "neg": ["bad"]}


def test_pet_on_a_causal_lm_scores_the_next_token(tmp_path):
    folder = tmp_path / "llama"
    tiny_model("llama").save_pretrained(folder)
    tiny_tokenizer().save_pretrained(folder)
    rows = [{"text": f"{a} {b}", "label": "pos" if a == "great" else "neg"}
            for a in ("great", "dull") for b in ("film", "plot")] * 8
    (tmp_path / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    pattern = Pattern("review {text} {mask}", {"pos": ["positive"], "neg": ["negative"]})
    result = train_pet(TrainOptions(task="causal-lm", model=str(folder), train=str(tmp_path / "train.jsonl"),
                                    eval=str(tmp_path / "train.jsonl"), max_steps=40, batch_size=8, lr=2e-2,
                                    output=str(tmp_path / "pet")), pattern)
    assert result.accuracy == 1.0


def test_bad_patterns_and_models_are_named(model_dir, mlm_dir, data):
    tokenizer = AutoTokenizer.from_pretrained(mlm_dir)
    with pytest.raises(peftkit.ConfigError, match="exactly one"):
        ClozeEncoder(tokenizer, Pattern("{text}", {"a": ["good"]}), ["a"], causal=False, max_length=16)
    with pytest.raises(peftkit.ConfigError, match="no words for label"):
        ClozeEncoder(tokenizer, Pattern("{text} {mask}", {"a": ["good"]}), ["a", "b"], causal=False, max_length=16)
    with pytest.raises(peftkit.ConfigError, match="must be one token"):
        ClozeEncoder(tokenizer, Pattern("{text} {mask}", {"a": ["very good"], "b": ["bad"]}), ["a", "b"],
                     causal=True, max_length=16)
    with pytest.raises(peftkit.PeftkitError, match="has no trained masked-LM head"):
        train_pet(TrainOptions(model=str(model_dir), train=str(data / "train.csv")),
                  Pattern("{text} {mask}", {"pos": ["good"], "neg": ["bad"]}))


def test_the_cli_runs_pet_and_names_a_missing_head(mlm_dir, model_dir, data, tmp_path, capsys):
    from peftkit.cli import main

    assert main(["train", "--recipe", "pet", "--model", str(mlm_dir), "--train", str(data / "train.csv"),
                 "--pattern", "{text} was {mask}", "--verbalizer", "{pos: good, neg: [bad, poor]}", "--epochs", "1",
                 "--output", str(tmp_path / "pet")]) == 0
    assert "pet recipe, lora on" in capsys.readouterr().out
    saved = json.loads((tmp_path / "pet" / "peftkit_task.json").read_text())
    assert saved["verbalizer"] == {"pos": ["good"], "neg": ["bad", "poor"]}
    assert main(["train", "--recipe", "pet", "--model", str(model_dir), "--train", str(data / "train.csv")]) == 2
    assert "has no trained masked-LM head" in capsys.readouterr().err
    assert main(["train", "--recipe", "pet", "--model", str(mlm_dir), "--train", str(data / "train.csv"),
                 "--verbalizer", "[good, bad]"]) == 2
    assert "--verbalizer must map labels to words" in capsys.readouterr().err
