"""ScaLearn / AdapterFusion transfer recipe on the tiny BERT folder: sources without heads, then stage 2."""

from __future__ import annotations

import pytest
import torch

from peftkit.core.checkpoint import read_adapter_config, read_adapter_weights
from peftkit.core.peft_model import PeftModel
from peftkit.core.pretrained import load_sequence_classifier
from peftkit.recipes.training import TrainOptions
from peftkit.recipes.transfer import train_source, train_transfer


@pytest.fixture(scope="module")
def sources(model_dir, data, tmp_path_factory):
    folder = tmp_path_factory.mktemp("sources")
    options = TrainOptions(model=str(model_dir), train=str(data / "train.csv"), eval=str(data / "dev.jsonl"),
                           epochs=1, batch_size=16)
    for index, name in enumerate(("a", "b")):
        accuracy = train_source(TrainOptions(**{**options.__dict__, "seed": index}), folder / name)
        assert 0 <= accuracy <= 1
    return {name: folder / name for name in ("a", "b")}


def test_sources_keep_the_adapter_and_leave_the_head_behind(sources):
    tensors, _ = read_adapter_weights(sources["a"])
    assert tensors and all(".bottleneck." in key for key in tensors)
    config = read_adapter_config(sources["a"])
    assert config["modules_to_save"] is None and config["task_type"] is None


@pytest.mark.parametrize(("method", "parameters"), [
    ("scalearn", 2 * 2 * 32), ("scalearn_uniform", 2 * 2), ("scalearn++", 2 * 32), ("scalearn_uniform++", 2),
    ("fuse", 2 * 3 * (32 * 32 + 32)),
])
def test_transfer_trains_only_the_composition_and_the_head(method, parameters, sources, model_dir, data, tmp_path):
    options = TrainOptions(model=str(model_dir), train=str(data / "train.csv"), eval=str(data / "dev.jsonl"),
                           epochs=3, batch_size=16)
    result = train_transfer(options, sources, method)
    assert result.transfer_parameters == parameters
    assert result.head_parameters == 2 * 32 + 2
    assert 0 <= result.accuracy <= 1
    model = result.model
    trained = [p for _, layer in model.adapter_layers() for p in layer.fusion.parameters()]
    if method.startswith("scalearn"):  # ω started at N(2/N, 0.001²) and moved
        assert max((p.detach() - 1.0).abs().max().item() for p in trained) > 0.005  # 5 init sds
    for name, folder in sources.items():  # the sources stayed as saved
        saved, _ = read_adapter_weights(folder)
        live = model._adapter_tensors(name)
        assert all(torch.equal(live[key].detach(), tensor) for key, tensor in saved.items())
    # the saved folder holds the sources, the composition and the trained head: a fresh model gives the same logits
    model.eval()
    batch = {"input_ids": torch.tensor([[2, 7, 9, 11, 3]]), "attention_mask": torch.ones(1, 5, dtype=torch.long)}
    with torch.no_grad():
        expected = model(**batch).logits
    model.save_pretrained(tmp_path)
    _, fresh = load_sequence_classifier(model_dir, ["negative", "positive"])
    loaded = PeftModel.from_pretrained(fresh, tmp_path)
    with torch.no_grad():
        assert (loaded(**batch).logits - expected).abs().max() <= 1e-6


def test_unknown_method_and_single_source_are_errors(sources, model_dir, data):
    import peftkit

    options = TrainOptions(model=str(model_dir), train=str(data / "train.csv"))
    with pytest.raises(peftkit.ConfigError, match="unknown transfer method 'mix'"):
        train_transfer(options, sources, "mix")
    with pytest.raises(peftkit.ConfigError, match="two or more source adapters"):
        train_transfer(options, {"a": sources["a"]}, "scalearn")
