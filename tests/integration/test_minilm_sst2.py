"""The real bundled all-MiniLM-L6-v2 on a slice of real SST-2 (marked slow; runs in CI)."""

import json

import pytest

from peftkit import PeftModel
from peftkit.core.pretrained import bundled_model_dir, load_sequence_classifier
from peftkit.recipes.classification import count_correct, train_classifier
from peftkit.recipes.training import TrainOptions
from peftkit.tasks.classification import Columns, LabelSet, bundled_sst2, load_examples, tokenize
from peftkit.tasks.data import read_rows

pytestmark = pytest.mark.slow


def test_lora_on_minilm_learns_sst2_and_round_trips(tmp_path):
    train_rows = read_rows(bundled_sst2("train"))[:960]
    dev_rows = read_rows(bundled_sst2("dev"))[:300]
    for name, rows in (("train.jsonl", train_rows), ("dev.jsonl", dev_rows)):
        (tmp_path / name).write_text("".join(json.dumps(row) + "\n" for row in rows))
    result = train_classifier(TrainOptions(train=str(tmp_path / "train.jsonl"), eval=str(tmp_path / "dev.jsonl"),
                                           epochs=1, batch_size=16, lr=2e-3, max_length=64,
                                           output=str(tmp_path / "adapter")))
    assert result.losses[-1] < result.losses[0] - 0.1
    assert result.accuracy >= 0.75  # chance is about 0.5
    assert 0.005 < result.trainable_parameters / result.total_parameters < 0.03

    tokenizer, base = load_sequence_classifier(bundled_model_dir(), result.labels)
    loaded = PeftModel.from_pretrained(base, tmp_path / "adapter")
    examples, _ = load_examples(tmp_path / "dev.jsonl", Columns("text", "label"), LabelSet(result.labels))
    assert count_correct(loaded, tokenizer, tokenize(tokenizer, examples, 64)) == result.correct
