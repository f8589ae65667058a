"""Adaptive masked-LM training (plain and self-evolution) and vocab-reduce on the tiny BERT folder."""

from __future__ import annotations

import random

import pytest
import torch
from transformers import AutoModelForMaskedLM, AutoModelForTokenClassification, AutoTokenizer

import peftkit
from peftkit.cli import main
from peftkit.recipes.masked_lm import train_masked_lm
from peftkit.recipes.training import TrainOptions
from tests.conftest import WORDS


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    """Raw text with a strong pattern: "the <noun> was very <adjective>"."""
    generator = random.Random(0)
    lines = [f"the {generator.choice(['movie', 'film', 'plot'])} was very {generator.choice(['good', 'bad'])}"
             for _ in range(240)]
    path = tmp_path_factory.mktemp("text") / "corpus.txt"
    path.write_text("\n".join(lines) + "\n\n")
    return path


@pytest.mark.parametrize(("method", "objective"), [("full", "mlm"), ("lora", "mlm"), ("lora", "self-evolution")])
def test_adaptive_training_lowers_the_held_out_loss_and_writes_a_model_folder(method, objective, model_dir,
                                                                              corpus, tmp_path):
    options = TrainOptions(model=str(model_dir), train=str(corpus), method=method, epochs=4, batch_size=16,
                           lr=3e-3 if method == "full" else 2e-2, output=str(tmp_path / "adapted"))
    result = train_masked_lm(options, objective=objective)
    name, after, detail = result.metric
    before = float(detail.split(" ")[0])
    # self-evolution masks the hardest tokens only, so the random-mask loss falls less
    assert name == "masked-LM loss" and after < (0.6 if objective == "mlm" else 0.8) * before
    assert result.eval_examples == 24 and result.train_examples == 216  # 10 % held out, blank lines skipped
    folder = tmp_path / "adapted"
    assert (folder / "adapter" / "adapter_config.json").is_file() == (method == "lora")
    tokenizer = AutoTokenizer.from_pretrained(folder)
    adapted = AutoModelForMaskedLM.from_pretrained(folder).eval()
    batch = tokenizer(["the film was very [MASK]"], return_tensors="pt")
    with torch.no_grad():
        best = adapted(**batch).logits[0, -2].argmax().item()
    assert tokenizer.convert_ids_to_tokens(best) in ("good", "bad")  # it learnt the pattern
    AutoModelForTokenClassification.from_pretrained(folder, num_labels=3)  # usable downstream


def test_errors_name_the_problem(model_dir, corpus, tmp_path):
    with pytest.raises(peftkit.ConfigError, match="needs --train FILE"):
        train_masked_lm(TrainOptions(model=str(model_dir)))
    with pytest.raises(peftkit.ConfigError, match="objective must be one of"):
        train_masked_lm(TrainOptions(model=str(model_dir), train=str(corpus)), objective="clm")
    empty = tmp_path / "empty.txt"
    empty.write_text("\n \n")
    with pytest.raises(peftkit.PeftkitError, match="no text found"):
        train_masked_lm(TrainOptions(model=str(model_dir), train=str(empty)))


def test_cli_recipe_and_vocab_reduce(model_dir, corpus, tmp_path, capsys):
    assert main(["train", "--recipe", "self-evolution", "--model", str(model_dir), "--train", str(corpus),
                 "--max-steps", "3", "--output", str(tmp_path / "adapted")]) == 0
    out = capsys.readouterr().out
    assert "self-evolution recipe" in out and "eval masked-LM loss:" in out
    assert main(["vocab-reduce", "--model", str(tmp_path / "adapted"), "--corpus", str(corpus), "--output",
                 str(tmp_path / "small")]) == 0
    out = capsys.readouterr().out
    kept = 5 + 8  # the special tokens and the 8 words of the corpus
    assert f"vocabulary {5 + len(WORDS)} -> {kept} tokens" in out
    assert AutoModelForMaskedLM.from_pretrained(tmp_path / "small").config.vocab_size == kept
    assert main(["vocab-reduce", "--model", str(model_dir), "--output", str(tmp_path / "x")]) == 2
    assert "needs --corpus FILE or --scripts" in capsys.readouterr().err
    assert main(["train", "--recipe", "mix", "--model", str(model_dir)]) == 2
    error = capsys.readouterr().err
    assert "recipe (--recipe) must be one of pet, list, mlm, self-evolution, keyphrase, got 'mix'" in error


def test_the_head_on_masked_positions_only_gives_the_models_own_loss(model_dir):
    from transformers import DataCollatorForLanguageModeling

    from peftkit.core.pretrained import load_masked_lm
    from peftkit.recipes.masked_lm import MaskedOnly, encode_passages

    tokenizer, model = load_masked_lm(model_dir)
    model.eval()
    encoded = encode_passages(tokenizer, ["the movie was very good", "a plot", "the film was bad"], 16)
    batch = DataCollatorForLanguageModeling(tokenizer, mlm_probability=0.5, seed=3)(encoded)
    batch.pop("special_tokens_mask", None)
    with torch.no_grad():
        expected = model(**batch).loss
        masked_only = MaskedOnly(model)
        ours, outputs = masked_only.loss(model, batch)
        masked_only.remove()
        after = model(**{k: v for k, v in batch.items() if k != "labels"}).logits
    assert abs(ours.item() - expected.item()) <= 1e-5
    assert outputs.logits.shape == (int((batch["labels"] != -100).sum()), len(tokenizer))
    assert after.shape[:2] == batch["input_ids"].shape  # the hook is gone
