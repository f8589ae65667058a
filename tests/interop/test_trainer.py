"""transformers' ``Trainer`` with its default arguments trains a peftkit model, checkpoints hold the adapter in peft's
format, resuming gives the uninterrupted run's weights, and ``load_best_model_at_end`` loads the best adapter."""

import os

import datasets
import peft
import pytest
import torch
from transformers import Trainer, TrainingArguments

import peftkit
from peftkit import get_peft_model_state_dict, load_peft_weights
from tests.conftest import VOCAB, logits, tiny_batch, tiny_model, without_dropout


def _classification_data(rows: int = 48) -> datasets.Dataset:
    """Token ids whose first token decides the label, plus a text column the model does not take."""
    ids = torch.randint(1, VOCAB, (rows, 8), generator=torch.Generator().manual_seed(3))
    return datasets.Dataset.from_dict({"input_ids": ids.tolist(), "attention_mask": [[1] * 8] * rows,
                                       "label": (ids[:, 0] % 3).tolist(), "text": ["unused"] * rows})


def _lm_data(rows: int = 32) -> datasets.Dataset:
    """One sequence, repeated: a tiny Llama learns it within a few steps."""
    ids = (torch.arange(10).repeat(rows, 1) * 7) % (VOCAB - 1) + 1
    return datasets.Dataset.from_dict({"input_ids": ids.tolist(), "attention_mask": [[1] * 10] * rows,
                                       "labels": ids.tolist()})


def _lora_classifier():
    return peftkit.get_peft_model(without_dropout(tiny_model("bert")), peftkit.LoraConfig(
        task_type="SEQ_CLS", r=4, lora_alpha=8, target_modules=["query", "value"]))


def _adapter_equal(a: dict, b: dict, tolerance: float = 1e-6) -> bool:
    return a.keys() == b.keys() and all(torch.allclose(a[k].float(), b[k].float(), atol=tolerance) for k in a)


def test_default_arguments_train_a_classifier_and_save_only_the_adapter(tmp_path):
    model = _lora_classifier()
    args = TrainingArguments(output_dir=str(tmp_path), max_steps=4, save_steps=2)
    Trainer(model=model, args=args, train_dataset=_classification_data()).train()
    Trainer(model=model, args=args).save_model()
    for folder in (tmp_path, tmp_path / "checkpoint-2"):
        files = set(os.listdir(folder))
        assert {"adapter_config.json", "adapter_model.safetensors"} <= files
        assert not {"model.safetensors", "pytorch_model.bin"} & files
    model.eval()
    for reader in (peft.PeftModel, peftkit.PeftModel):
        loaded = reader.from_pretrained(tiny_model("bert"), str(tmp_path))
        assert torch.allclose(logits(loaded), logits(model), atol=1e-5)


def test_default_arguments_train_a_causal_lm_with_falling_loss(tmp_path):
    model = peftkit.get_peft_model(tiny_model("llama"), peftkit.LoraConfig(task_type="CAUSAL_LM", r=8,
                                                                            target_modules="all-linear"))
    args = TrainingArguments(output_dir=str(tmp_path), max_steps=30, learning_rate=5e-2, logging_steps=1)
    trainer = Trainer(model=model, args=args, train_dataset=_lm_data())
    trainer.train()
    losses = [entry["loss"] for entry in trainer.state.log_history if "loss" in entry]
    assert sum(losses[-5:]) / 5 < sum(losses[:5]) / 5 - 0.15, losses  # measured: 4.71 -> 4.48
    trainer.save_model()
    loaded = peft.PeftModel.from_pretrained(tiny_model("llama"), str(tmp_path))
    model.eval()
    assert torch.allclose(logits(loaded, tiny_batch()), logits(model, tiny_batch()), atol=1e-5)


def test_resume_from_checkpoint_gives_the_uninterrupted_weights(tmp_path):
    def run(output, resume=None):
        torch.manual_seed(0)
        model = _lora_classifier()
        args = TrainingArguments(output_dir=str(output), max_steps=6, save_steps=3, learning_rate=5e-3)
        Trainer(model=model, args=args, train_dataset=_classification_data()).train(resume_from_checkpoint=resume)
        return get_peft_model_state_dict(model)

    whole = run(tmp_path / "whole")
    resumed = run(tmp_path / "resumed", resume=str(tmp_path / "whole" / "checkpoint-3"))
    halfway = load_peft_weights(str(tmp_path / "whole" / "checkpoint-3"))
    assert _adapter_equal(resumed, whole)
    assert not _adapter_equal(halfway, whole)  # the resumed run did train the last three steps


def test_load_best_model_at_end_loads_the_best_checkpoint(tmp_path):
    model = _lora_classifier()
    data = _classification_data()
    args = TrainingArguments(output_dir=str(tmp_path), max_steps=8, eval_strategy="steps", eval_steps=2,
                             save_steps=2, learning_rate=5e-2, load_best_model_at_end=True)
    trainer = Trainer(model=model, args=args, train_dataset=data, eval_dataset=data.select(range(16)))
    trainer.train()
    best = trainer.state.best_model_checkpoint
    assert best is not None and trainer.state.best_metric is not None
    losses = {entry["step"]: entry["eval_loss"] for entry in trainer.state.log_history if "eval_loss" in entry}
    assert best.endswith(f"checkpoint-{min(losses, key=losses.get)}")
    assert _adapter_equal(get_peft_model_state_dict(model), load_peft_weights(best))
    last = load_peft_weights(str(tmp_path / "checkpoint-8"))
    if not best.endswith("checkpoint-8"):
        assert not _adapter_equal(get_peft_model_state_dict(model), last)


@pytest.mark.parametrize("task_type", ["SEQ_CLS", None])
def test_trainer_reads_the_wrapped_models_inputs(task_type, tmp_path):
    """The column filter keeps what the wrapped model takes (token_type_ids here) and drops the rest."""
    model = peftkit.get_peft_model(tiny_model("bert"), peftkit.LoraConfig(task_type=task_type, r=2,
                                                                           target_modules=["query"]))
    trainer = Trainer(model=model, args=TrainingArguments(output_dir=str(tmp_path)))
    trainer._set_signature_columns_if_needed()
    assert {"input_ids", "attention_mask", "token_type_ids", "labels"} <= set(trainer._signature_columns)
    assert "text" not in trainer._signature_columns
    assert trainer.label_names == ["labels"]
