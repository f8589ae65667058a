"""LiST self-training on the tiny masked LM: few-shot split, fresh students, rounds that stay accurate."""

from __future__ import annotations

import pytest
import torch
from transformers import AutoModelForMaskedLM, AutoTokenizer

import peftkit
from peftkit.recipes.pet import Pattern
from peftkit.recipes.self_training import SelfTraining, SelfTrainingSettings, few_shot_split
from peftkit.tasks.classification import Columns, load_examples


def test_few_shot_split_takes_k_per_class_and_keeps_the_rest_apart(data):
    examples, _ = load_examples(data / "train.csv", Columns(text="review", label="sentiment"))
    labelled, unlabelled = few_shot_split(examples, per_class=4, unlabelled=50, seed=0)
    assert sorted(labelled.labels) == [0] * 4 + [1] * 4
    assert len(unlabelled.labels) == 50
    again, _ = few_shot_split(examples, per_class=4, unlabelled=50, seed=0)
    assert again.texts == labelled.texts  # deterministic from the seed
    with pytest.raises(peftkit.ConfigError, match="fewer than 100 training examples"):
        few_shot_split(examples, per_class=100, unlabelled=None, seed=0)


def test_self_training_rounds_use_fresh_students_and_learn_the_task(mlm_dir, data):
    examples, labels = load_examples(data / "train.csv", Columns(text="review", label="sentiment"))
    evaluation, _ = load_examples(data / "dev.jsonl", Columns(text="review", label="sentiment"), labels)
    labelled, unlabelled = few_shot_split(examples, per_class=4, unlabelled=64, seed=0)
    model = AutoModelForMaskedLM.from_pretrained(mlm_dir)
    loop = SelfTraining(model, AutoTokenizer.from_pretrained(mlm_dir),
                        Pattern("{text} was {mask}", {"pos": ["good"], "neg": ["bad"]}), labels.names,
                        SelfTrainingSettings(rounds=1, steps=100, batch_size=8, lr=3e-2, adapter={"r": 16}))
    frozen = {n: p.detach().clone() for n, p in model.named_parameters()}
    result = loop.run(labelled, unlabelled, evaluation)
    # 8 labelled examples teach the tiny model part of the task; the unlabelled texts take it further
    assert result.teacher_accuracy >= 0.7
    assert len(result.round_accuracies) == 1 and result.round_accuracies[0] >= max(0.9, result.teacher_accuracy)
    assert list(loop.peft_model.peft_config) == ["generation2"]  # the teacher, then a re-initialised student
    assert result.trainable_parameters == 2 * 2 * (32 * 16 + 16 * 32)  # lite adapters only
    for name, parameter in model.named_parameters():  # the masked LM itself never trains
        if "lite_" not in name:
            assert torch.equal(parameter.detach(), frozen[name.replace(".base_layer", "")]), name


def test_the_cli_runs_list(mlm_dir, data, tmp_path, capsys):
    from peftkit.cli import main

    assert main(["train", "--recipe", "list", "--model", str(mlm_dir), "--train", str(data / "train.csv"),
                 "--eval", str(data / "dev.jsonl"), "--verbalizer", "{pos: good, neg: bad}", "--shots", "4",
                 "--unlabelled", "16", "--rounds", "1", "--max-steps", "5", "--output", str(tmp_path / "list")]) == 0
    out = capsys.readouterr().out
    assert "list recipe" in out and "eval teacher accuracy:" in out and "4 labelled per class, 16 unlabelled" in out
    loaded = peftkit.PeftModel.from_pretrained(AutoModelForMaskedLM.from_pretrained(mlm_dir), tmp_path / "list")
    assert list(loaded.peft_config) == ["default"] and loaded.peft_config["default"].peft_type == "LITE_ADAPTER"
