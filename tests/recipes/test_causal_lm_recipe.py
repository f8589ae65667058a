"""Causal-LM recipe: the completion-only loss equals the model's own, training learns a toy task, the
answers are ranked, and the saved adapter generates."""

import json

import torch

from peftkit.recipes.causal_lm import (
    LeftPadCollator,
    completion_loss,
    generate_text,
    load_adapter_for_generation,
    score_answers,
    train_causal_lm,
)
from peftkit.recipes.training import TrainOptions
from peftkit.tasks.causal_lm import IGNORE, encode, to_example
from tests.conftest import tiny_model
from tests.tasks.test_causal_lm import tiny_tokenizer

ROWS = [{"prompt": f"review {a} {b} ", "completion": label}
        for a, b, label in [("great", "film", "positive"), ("dull", "plot", "negative"), ("great", "plot", "positive"),
                            ("dull", "film", "negative"), ("film", "great", "positive"), ("plot", "dull", "negative")]]


def encoded_rows(tokenizer):
    return [encode(tokenizer, to_example(tokenizer, row, "toy"), 32) for row in ROWS]


def test_completion_loss_on_the_last_positions_equals_the_models_loss():
    tokenizer = tiny_tokenizer()
    model = tiny_model("llama")
    rows = encoded_rows(tokenizer)
    rows[0] = {"input_ids": [3] * 4 + rows[0]["input_ids"], "labels": [IGNORE] * 4 + rows[0]["labels"]}
    ours = completion_loss(model, LeftPadCollator(tokenizer.pad_token_id)(rows))
    expected = []
    for row in rows:  # one unpadded row at a time: the model's own shifted cross-entropy
        ids = torch.tensor([row["input_ids"]])
        logits = model(input_ids=ids).logits[0, :-1]
        labels = torch.tensor(row["labels"][1:])
        expected.append(torch.nn.functional.cross_entropy(logits, labels, ignore_index=IGNORE, reduction="sum"))
    tokens = sum(sum(label != IGNORE for label in row["labels"]) for row in rows)
    assert torch.allclose(ours, torch.stack(expected).sum() / tokens, atol=1e-5)


def write_model_and_data(tmp_path):
    model_dir = tmp_path / "model"
    tiny_model("llama").save_pretrained(model_dir)
    tiny_tokenizer().save_pretrained(model_dir)
    data = tmp_path / "toy.jsonl"
    data.write_text("".join(json.dumps(row) + "\n" for row in ROWS * 4))
    return model_dir, data


def test_lora_learns_a_toy_task_ranks_answers_and_generates(tmp_path):
    model_dir, data = write_model_and_data(tmp_path)
    tokenizer = tiny_tokenizer()
    examples = [to_example(tokenizer, row, "toy") for row in ROWS]
    untrained = score_answers(tiny_model("llama"), tokenizer, examples, 32)
    result = train_causal_lm(TrainOptions(task="causal-lm", train=str(data), eval=str(data), model=str(model_dir),
                                          max_steps=60, batch_size=8, lr=1e-2, output=str(tmp_path / "adapter")))
    assert result.accuracy == 1.0 and result.labels == ["negative<eos>", "positive<eos>"]
    assert result.eval_loss < untrained[0] - 0.4  # the tiny model's frozen head keeps its logits small
    tokenizer, model = load_adapter_for_generation(str(tmp_path / "adapter"))
    assert generate_text(tokenizer, model, "review dull plot ", max_new_tokens=2, chat=False).split() == ["negative"]


def test_cli_trains_a_causal_lm_adapter_and_generates(tmp_path, capsys):
    from peftkit.cli import main

    model_dir, data = write_model_and_data(tmp_path)
    out = tmp_path / "cli-adapter"
    assert main(["train", "--task", "causal-lm", "--model", str(model_dir), "--train", str(data), "--eval", str(data),
                 "--max-steps", "60", "--batch-size", "8", "--lr", "1e-2", "--output", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "eval accuracy:  1.0000 (24/24)" in printed and "60 steps" in printed and "eval loss:" in printed
    assert main(["generate", "--adapter", str(out), "--prompt", "review great plot ", "--raw",
                 "--max-new-tokens", "1"]) == 0
    assert capsys.readouterr().out.split() == ["positive"]
    not_data = str(model_dir / "config.json")
    assert main(["train", "--task", "causal-lm", "--model", str(model_dir), "--train", not_data]) == 2


def toy_options(tmp_path, **given) -> TrainOptions:
    model_dir, data = write_model_and_data(tmp_path)
    return TrainOptions(task="causal-lm", train=str(data), eval=str(data), model=str(model_dir), max_steps=20,
                        batch_size=8, lr=1e-2, output=str(tmp_path / "adapter"), **given)


def test_padding_free_training_follows_the_padded_runs_losses(tmp_path):
    packed = train_causal_lm(toy_options(tmp_path))
    padded = train_causal_lm(toy_options(tmp_path, packing="off"))
    assert packed.batches.startswith("padding-free") and padded.batches == "padded (--packing off)"
    assert len(packed.losses) == len(padded.losses) > 0
    assert max(abs(a - b) for a, b in zip(packed.losses, padded.losses, strict=True)) < 1e-4
    assert abs(packed.eval_loss - padded.eval_loss) < 1e-4


def test_prompt_learning_pads_and_packing_on_names_why(tmp_path):
    import pytest

    from peftkit.core.errors import ConfigError

    result = train_causal_lm(toy_options(tmp_path, method="prefix_tuning"))
    assert result.batches == "padded: PREFIX_TUNING adds virtual tokens to each row"
    with pytest.raises(ConfigError, match="--packing on: PREFIX_TUNING adds virtual tokens to each row; use "):
        train_causal_lm(toy_options(tmp_path, method="prefix_tuning", packing="on"))


def test_the_summary_says_how_batches_were_formed(tmp_path, capsys):
    from peftkit.cli import main

    model_dir, data = write_model_and_data(tmp_path)
    assert main(["train", "--task", "causal-lm", "--model", str(model_dir), "--train", str(data), "--max-steps", "3",
                 "--output", str(tmp_path / "out")]) == 0
    assert "  batches:              padding-free: " in capsys.readouterr().out
    assert main(["train", "--task", "causal-lm", "--model", str(model_dir), "--train", str(data),
                 "--packing", "sometimes"]) == 2
