"""`torchrun -m peftkit train` with 2 processes on gloo: DDP through transformers' Trainer."""

from __future__ import annotations

import os
import re
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


LAUNCHERS = {"torchrun": ["-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr", "127.0.0.1",
                          "--master_port"],
             # accelerate's multi-process launcher; on a machine without GPUs its processes use gloo on the CPU
             "accelerate": ["-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
                            "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
                            "--main_process_port"]}
# (method, its options, the two processes' extra flags, launcher)
RUNS = [(method, [], [], "torchrun") for method in ("lora", "prompt_tuning", "bottleneck", "qlora", "meft")] + [
    ("lora", [], ["--gradient-checkpointing"], "torchrun")] + [
    (method, [], ["--fsdp"], "torchrun")
    for method in ("lora", "prompt_tuning", "bottleneck", "bitfit", "meft", "full")] + [
    ("lora", ["-o", "use_dora=true"], ["--fsdp"], "torchrun"), ("lora", ["-o", "bias=all"], ["--fsdp"], "torchrun"),
    ("lora", [], ["--fsdp", "--gradient-checkpointing"], "torchrun"),
    ("lora", [], [], "accelerate"), ("lora", [], ["--fsdp"], "accelerate")]


@pytest.mark.parametrize("method, options, extra, launcher", RUNS,
                         ids=[" ".join([launcher, method, *options, *extra]) for method, options, extra, launcher
                              in RUNS])
def test_two_processes_train_the_same_adapter_as_one(still_model, data, tmp_path, method, options, extra, launcher):
    assert main([*train_args(still_model, data, tmp_path / "one", 8, method), *options]) == 0
    done = two_processes([*train_args(still_model, data, tmp_path / "two", 4, method), *options, *extra],
                         launcher)  # 2 × 4: the same batch of 8
    assert done.returncode == 0, done.stderr[-8000:]
    assert done.stdout.count("peftkit train:") == 1  # only rank 0 prints (and writes)
    if "--fsdp" in extra:  # each process holds about half the frozen base weights (and the adapter whole)
        trainable = int(re.search(r"trainable parameters: ([\d,]+)", done.stdout).group(1).replace(",", ""))
        held, total = (int(n.replace(",", "")) for n in re.search(
            r"each of 2 processes holds ([\d,]+) of the ([\d,]+) parameters", done.stdout).groups())
        assert held < total and total - held >= 0.45 * (total - trainable), (held, trainable, total)
    # QLoRA too: DDP leaves the frozen NF4 weights alone (a broadcast would re-quantise them)
    assert_same_weights(tmp_path, "model.safetensors" if method == "full" else "adapter_model.safetensors")


def two_processes(arguments: list[str], launcher: str = "torchrun") -> subprocess.CompletedProcess:
    command = [sys.executable, *LAUNCHERS[launcher], str(free_port()), "-m", "peftkit", *arguments]
    return subprocess.run(command, capture_output=True, text=True, timeout=600,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})


def assert_same_weights(folder, weights: str = "adapter_model.safetensors", atol: float = 1e-5) -> None:
    """The weights trained by one process (``folder``/one) and by two (``folder``/two) are equal to ``atol``."""
    one, two = load_file(folder / "one" / weights), load_file(folder / "two" / weights)
    assert one.keys() == two.keys()
    for name in one:
        assert torch.allclose(one[name], two[name], atol=atol), (name, (one[name] - two[name]).abs().max())


@pytest.fixture(scope="module")
def wide_model(model_dir, tmp_path_factory):
    """A BERT wide enough (256) that its NF4 weights' blocks of scales split over 2 processes."""
    from transformers import BertConfig, BertForSequenceClassification

    folder = tmp_path_factory.mktemp("wide-bert")
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    torch.manual_seed(0)
    BertForSequenceClassification(BertConfig(
        vocab_size=len(tokenizer), hidden_size=256, num_hidden_layers=2, num_attention_heads=4, intermediate_size=512,
        max_position_embeddings=32, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def test_qlora_is_sharded_after_quantising_and_trains_the_same_adapter_as_one(wide_model, still_model, data,
                                                                              tmp_path):
    assert main(train_args(wide_model, data, tmp_path / "one", 8, "qlora")) == 0
    done = two_processes(train_args(wide_model, data, tmp_path / "two", 4, "qlora") + ["--fsdp"])
    assert done.returncode == 0, done.stderr[-8000:]
    assert "sharded with FSDP2" in done.stdout
    assert_same_weights(tmp_path, atol=1e-4)
    too_small = two_processes(train_args(still_model, data, tmp_path / "three", 4, "qlora") + ["--fsdp"])
    assert ("peftkit: error: --fsdp: the 4-bit weights of bert.encoder.layer.0 cannot be split over 2 processes"
            in too_small.stderr and "failed (exitcode: 2)" in too_small.stderr)  # each process: one line, exit 2


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

        run_trainer(setup.model, setup.dataset, DataCollatorWithPadding(setup.tokenizer), setup.options, 1e-2)
        assert len(calls) == (6 if checkpointing else 3)  # forward again in each backward
        adapters.append({n: p.detach().clone() for n, p in setup.model.named_parameters() if p.requires_grad})
    for name, value in adapters[0].items():
        assert torch.allclose(value, adapters[1][name], atol=1e-6), name


def test_a_causal_lm_sharded_over_two_processes_trains_the_same_lora_as_one(tmp_path):
    from tests.recipes.test_causal_lm_recipe import write_model_and_data

    model_dir, data = write_model_and_data(tmp_path)

    def arguments(output, batch_size):
        return ["train", "--task", "causal-lm", "--model", str(model_dir), "--train", str(data), "--eval", str(data),
                "--max-steps", "3", "--lr", "1e-2", "--batch-size", str(batch_size), "--output", str(output)]

    assert main(arguments(tmp_path / "one", 8)) == 0
    done = two_processes([*arguments(tmp_path / "two", 4), "--fsdp"])
    assert done.returncode == 0, done.stderr[-8000:]
    assert "sharded with FSDP2" in done.stdout
    assert_same_weights(tmp_path)


def test_fsdp_needs_several_processes_and_plain_training(still_model, data, tmp_path, monkeypatch, capsys):
    from peftkit.core.errors import ConfigError
    from peftkit.recipes.training import TrainOptions, sharded_run

    monkeypatch.delenv("WORLD_SIZE", raising=False)
    assert main([*train_args(still_model, data, tmp_path / "out", 8, "lora"), "--fsdp"]) == 2
    assert "--fsdp shards the model over the processes of torchrun" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()
    monkeypatch.setenv("WORLD_SIZE", "2")
    for options, reason in [({"save_steps": 2}, "cannot be combined with --save-steps"),
                            ({"recipe": "pet"}, "not to --recipe pet")]:
        with pytest.raises(ConfigError, match=reason):
            sharded_run(TrainOptions(fsdp=True, **options))
    assert sharded_run(TrainOptions(fsdp=True)) and not sharded_run(TrainOptions())


def test_each_transformer_layer_is_its_own_fsdp_unit():
    from transformers import BertConfig, BertForSequenceClassification, LlamaConfig, LlamaForCausalLM

    from peftkit.core.mechanics.sharding import layer_units

    with torch.device("meta"):
        bert = BertForSequenceClassification(BertConfig(num_hidden_layers=2))
        llama = LlamaForCausalLM(LlamaConfig(num_hidden_layers=2, hidden_size=64, intermediate_size=64,
                                             num_attention_heads=4))
    assert layer_units(bert) == {"bert.encoder.layer.*": "free_full_weight"}
    assert layer_units(llama) == {"model.layers.*": "free_full_weight"}
