"""`torchrun -m peftkit train` with 2 processes on gloo: DDP through transformers' Trainer."""

from __future__ import annotations

import os
import socket
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoConfig, AutoModelForSequenceClassification, AutoTokenizer

from peftkit.cli import main


@pytest.fixture(scope="module")
def still_model(model_dir, tmp_path_factory):
    """The tiny BERT folder without dropout: two processes draw other masks than one."""
    folder = tmp_path_factory.mktemp("tiny-bert-no-dropout")
    config = AutoConfig.from_pretrained(model_dir, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    AutoModelForSequenceClassification.from_pretrained(model_dir, config=config).save_pretrained(folder)
    AutoTokenizer.from_pretrained(model_dir).save_pretrained(folder)
    return folder


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def train_args(model, data, output, batch_size: int, method: str) -> list[str]:
    return ["train", "--model", str(model), "--train", str(data / "train.csv"), "--eval", str(data / "dev.jsonl"),
            "--text-column", "review", "--label-column", "sentiment", "--max-steps", "6", "--lr", "1e-2",
            "--batch-size", str(batch_size), "--method", method, "--output", str(output)]


@pytest.mark.parametrize("method, extra", [("lora", []), ("prompt", []), ("adapter", []), ("qlora", []),
                                           ("meft", []), ("lora", ["--gradient-checkpointing"])])
def test_two_processes_train_the_same_adapter_as_one(still_model, data, tmp_path, method, extra):
    assert main(train_args(still_model, data, tmp_path / "one", 8, method)) == 0
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr", "127.0.0.1",
               "--master_port", str(free_port()), "-m", "peftkit",
               *train_args(still_model, data, tmp_path / "two", 4, method), *extra]  # 2 × 4: the same batch of 8
    done = subprocess.run(command, capture_output=True, text=True, timeout=600,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.count("peftkit train:") == 1  # only rank 0 prints (and writes)
    one, two = load_file(tmp_path / "one" / "adapter_model.safetensors"), load_file(
        tmp_path / "two" / "adapter_model.safetensors")
    assert one.keys() == two.keys()
    for name in one:  # QLoRA too: DDP leaves the frozen NF4 weights alone (a broadcast would re-quantise them)
        assert torch.allclose(one[name], two[name], atol=1e-5), (name, (one[name] - two[name]).abs().max())


def test_gradient_checkpointing_recomputes_layers_and_trains_the_same(still_model, data, tmp_path):
    from peftkit.recipes.classification import setup_classifier
    from peftkit.recipes.training import TrainOptions, run_trainer

    adapters = []
    for checkpointing in (False, True):
        options = TrainOptions(model=str(still_model), train=str(data / "train.csv"), eval=str(data / "dev.jsonl"),
                               text_column="review", label_column="sentiment", max_steps=3, lr=1e-2,
                               batch_size=8, output=str(tmp_path / str(checkpointing)),
                               gradient_checkpointing=checkpointing)
        setup = setup_classifier(options)
        calls = []
        attention = setup.model.get_base_model().bert.encoder.layer[0].attention  # inside the checkpointed forward
        attention.register_forward_pre_hook(lambda *_: calls.append(1))
        from transformers import DataCollatorWithPadding

        run_trainer(setup.model, setup.dataset, DataCollatorWithPadding(setup.tokenizer), options, 1e-2)
        assert len(calls) == (6 if checkpointing else 3)  # forward again in each backward
        adapters.append({n: p.detach().clone() for n, p in setup.model.named_parameters() if p.requires_grad})
    for name, value in adapters[0].items():
        assert torch.allclose(value, adapters[1][name], atol=1e-6), name
