"""Stack, Average, BatchSplit, Parallel and Fuse over adapters of one method and of different methods."""

import pytest
import torch

import peftkit
from peftkit import (
    Average,
    BatchSplit,
    BottleneckConfig,
    ConfigError,
    Fuse,
    IA3Config,
    LoraConfig,
    Parallel,
    PromptTuningConfig,
    Stack,
)
from tests.conftest import logits, randomize_trainable, tiny_batch, tiny_model

ADAPTERS = {
    "lora": LoraConfig(r=4, target_modules=["q_proj", "v_proj"]),
    "lora_out": LoraConfig(r=4, target_modules=["o_proj", "down_proj"]),
    "bottleneck": BottleneckConfig(reduction_factor=4),
    "ia3": IA3Config(),
}


def model_with(*names):
    model = peftkit.get_peft_model(tiny_model("llama"), ADAPTERS[names[0]], adapter_name=names[0])
    for name in names[1:]:
        model.add_adapter(name, ADAPTERS[name])
    for index, name in enumerate(names):
        model.set_adapter(name)
        randomize_trainable(model, seed=index + 10)
    return model


def alone(model, name, batch=None):
    model.set_adapter(name)
    return logits(model, batch)


def test_stack_of_lora_and_a_bottleneck_adapter_applies_both():
    model = model_with("lora", "bottleneck")
    base = logits(tiny_model("llama"))
    a, b = alone(model, "lora"), alone(model, "bottleneck")
    model.set_adapter(Stack("lora", "bottleneck"))
    both = logits(model)
    assert (both - a).abs().max() > 1e-3 and (both - b).abs().max() > 1e-3 and (both - base).abs().max() > 1e-3
    # stacking two LoRA adapters on different modules equals merging both
    twin = model_with("lora", "lora_out")
    twin.set_adapter(Stack("lora", "lora_out"))
    expected = logits(twin)
    assert (logits(twin.merge_and_unload()) - expected).abs().max() <= 1e-5


def test_average_weights_layer_outputs():
    model = model_with("lora", "lora_out")
    model.set_adapter(Average("lora", "lora_out", weights=(1.0, 0.0)))
    only_first = logits(model)
    assert (only_first - alone(model, "lora")).abs().max() <= 1e-5


@pytest.mark.parametrize("pair", [("lora", "bottleneck"), ("lora", "ia3"), ("bottleneck", "ia3")])
def test_batch_split_and_parallel_across_method_types(pair):
    model = model_with(*pair)
    batch = tiny_batch(batch=4)
    first = alone(model, pair[0], batch)
    second = alone(model, pair[1], batch)
    model.set_adapter(BatchSplit(*pair, sizes=(1, 3)))
    split = logits(model, batch)
    assert (split[:1] - first[:1]).abs().max() <= 1e-5
    assert (split[1:] - second[1:]).abs().max() <= 1e-5

    model.set_adapter(Parallel(*pair))
    both = logits(model, batch)
    assert both.shape[0] == 8
    assert (both[:4] - first).abs().max() <= 1e-5 and (both[4:] - second).abs().max() <= 1e-5


def test_fuse_starts_at_the_mean_trains_only_the_fusion_and_round_trips(tmp_path):
    model = peftkit.get_peft_model(tiny_model("llama"), BottleneckConfig(reduction_factor=4), adapter_name="a")
    model.add_adapter("b", BottleneckConfig(reduction_factor=4))
    for index, name in enumerate("ab"):
        model.set_adapter(name)
        randomize_trainable(model, seed=index)
    model.set_adapter(Average("a", "b"))
    mean = logits(model)
    model.set_adapter(Fuse("a", "b"))
    assert (logits(model) - mean).abs().max() <= 2e-3  # near-uniform attention at the start
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert trainable and all(".fusion." in n for n in trainable)
    randomize_trainable(model, seed=7)
    fused = logits(model)
    model.save_pretrained(tmp_path)
    loaded = peftkit.PeftModel.from_pretrained(tiny_model("llama"), tmp_path)
    assert loaded.active_composition == Fuse("a", "b")
    assert (logits(loaded) - fused).abs().max() <= 1e-6


def test_invalid_combinations_say_why():
    model = model_with("lora", "bottleneck")
    model.add_adapter("prompt", PromptTuningConfig(num_virtual_tokens=2))
    with pytest.raises(ConfigError, match="only Stack combines them"):
        model.set_adapter(Parallel("lora", "prompt"))
    with pytest.raises(ConfigError, match="no module holds two of these adapters"):
        model.set_adapter(Fuse("lora", "bottleneck"))
    with pytest.raises(ConfigError, match="no adapter named 'nope'"):
        model.set_adapter(Stack("lora", "nope"))
    model.set_adapter(BatchSplit("lora", "bottleneck", sizes=(1, 2)))
    with pytest.raises(ConfigError, match="add up to 3, but the batch has 2 rows"):
        logits(model)
    with pytest.raises(ConfigError, match="only a single adapter or a Stack"):
        model.merge_adapter()


def test_stack_with_a_prompt_adapter_and_lora():
    model = model_with("lora")
    model.add_adapter("prompt", PromptTuningConfig(num_virtual_tokens=2))
    model.set_adapter(Stack("prompt", "lora"), train=["lora"])
    out = logits(model)
    assert out.shape[1] == 9 + 2
    trainable = {n.split(".")[-2] for n, p in model.named_parameters() if p.requires_grad}
    assert trainable == {"lora"}


def test_a_cross_method_composition_saves_and_loads_with_each_adapter(tmp_path):
    model = model_with("lora", "bottleneck")
    model.set_adapter(BatchSplit("lora", "bottleneck", sizes=(3, 1)), train=["bottleneck"])
    batch = tiny_batch(batch=4)
    expected = logits(model, batch)
    model.save_pretrained(tmp_path)
    assert (tmp_path / "lora" / "adapter_model.safetensors").is_file()
    assert (tmp_path / "bottleneck" / "adapter_config.json").is_file()
    loaded = peftkit.PeftModel.from_pretrained(tiny_model("llama"), tmp_path, is_trainable=True)
    assert loaded.active_composition == BatchSplit("lora", "bottleneck", sizes=(3, 1))
    assert torch.equal(logits(loaded, batch), expected)
    trained = [n for n, p in loaded.named_parameters() if p.requires_grad]
    assert trained and all(".bottleneck.bottleneck." in n for n in trained)
