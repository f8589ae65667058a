import os

import pytest
import torch
from safetensors.torch import load_file, save_file

import peftkit.core.checkpoint as checkpoint
from peftkit import CheckpointError, ConfigError, LoraConfig, PeftModel, get_peft_model
from peftkit.core.layer import AdapterLayer
from tests.conftest import logits, randomize_trainable, tiny_model


def saved_adapter(path, **settings):
    settings = {"r": 4, "target_modules": ["query", "value"], "task_type": "SEQ_CLS", **settings}
    model = get_peft_model(tiny_model("bert"), LoraConfig(**settings))
    randomize_trainable(model)
    model.save_pretrained(path)
    return logits(model)


def assert_untouched(model):
    reference = tiny_model("bert")
    assert not any(isinstance(m, AdapterLayer) for m in model.modules())
    assert all(torch.equal(v, reference.state_dict()[k]) for k, v in model.state_dict().items())


def test_round_trip_gives_identical_logits_and_a_trainable_option(tmp_path):
    expected = saved_adapter(tmp_path)
    loaded = PeftModel.from_pretrained(tiny_model("bert"), tmp_path)
    assert torch.equal(logits(loaded), expected)
    assert not any(p.requires_grad for p in loaded.parameters())
    trainable = PeftModel.from_pretrained(tiny_model("bert"), tmp_path, is_trainable=True)
    assert any(p.requires_grad for p in trainable.parameters())


def test_truncated_file_names_the_file_and_leaves_the_model_unchanged(tmp_path):
    saved_adapter(tmp_path)
    weights = tmp_path / "adapter_model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-100])
    model = tiny_model("bert")
    with pytest.raises(CheckpointError, match="adapter_model.safetensors"):
        PeftModel.from_pretrained(model, tmp_path)
    assert_untouched(model)


@pytest.mark.parametrize("change", ["shape", "missing", "unexpected"])
def test_mismatched_file_names_the_key_and_leaves_the_model_unchanged(tmp_path, change):
    saved_adapter(tmp_path)
    weights = tmp_path / "adapter_model.safetensors"
    tensors = load_file(weights)
    key = "base_model.model.bert.encoder.layer.1.attention.self.value.lora_B.weight"
    if change == "shape":
        tensors[key] = torch.zeros(32, 5)
    elif change == "missing":
        del tensors[key]
    else:
        tensors["base_model.model.bert.pooler.dense.lora_A.weight"] = torch.zeros(4, 32)
    save_file(tensors, weights)
    model = tiny_model("bert")
    expected_key = "pooler.dense.lora_A" if change == "unexpected" else key
    with pytest.raises(CheckpointError, match=expected_key.replace(".", r"\.")):
        PeftModel.from_pretrained(model, tmp_path)
    assert_untouched(model)


def test_missing_folder_or_config_is_a_clear_error(tmp_path):
    with pytest.raises(CheckpointError, match="adapter folder not found"):
        PeftModel.from_pretrained(tiny_model("bert"), tmp_path / "nope")
    with pytest.raises(CheckpointError, match="adapter_config.json: adapter config not found"):
        PeftModel.from_pretrained(tiny_model("bert"), tmp_path)
    (tmp_path / "adapter_config.json").write_text("{not json")
    with pytest.raises(CheckpointError, match="not valid JSON"):
        PeftModel.from_pretrained(tiny_model("bert"), tmp_path)


def test_config_that_would_change_the_computation_is_refused_before_any_change(tmp_path):
    saved_adapter(tmp_path)
    path = tmp_path / "adapter_config.json"
    path.write_text(path.read_text().replace('"bias": "none"', '"bias": "none", "use_qalora": true'))
    model = tiny_model("bert")
    with pytest.raises(ConfigError, match="use_qalora"):
        PeftModel.from_pretrained(model, tmp_path)
    assert_untouched(model)


def test_legacy_bin_loads_through_weights_only_and_refuses_pickled_objects(tmp_path):
    expected = saved_adapter(tmp_path)
    tensors = load_file(tmp_path / "adapter_model.safetensors")
    (tmp_path / "adapter_model.safetensors").unlink()
    torch.save(tensors, tmp_path / "adapter_model.bin")
    assert torch.equal(logits(PeftModel.from_pretrained(tiny_model("bert"), tmp_path)), expected)

    class Payload:
        def __reduce__(self):
            return (os.system, ("echo pwned",))

    torch.save({"x": Payload()}, tmp_path / "adapter_model.bin")
    model = tiny_model("bert")
    with pytest.raises(CheckpointError, match="adapter_model.bin"):
        PeftModel.from_pretrained(model, tmp_path)
    assert_untouched(model)


def test_a_failed_write_leaves_the_previous_file_and_no_temporary_files(tmp_path, monkeypatch):
    saved_adapter(tmp_path)
    before = (tmp_path / "adapter_model.safetensors").read_bytes()

    def crash(tensors, filename, metadata=None):
        with open(filename, "wb") as handle:
            handle.write(b"half")
        raise KeyboardInterrupt

    monkeypatch.setattr(checkpoint, "save_file", crash)
    model = get_peft_model(tiny_model("bert"), LoraConfig(r=4, target_modules=["query", "value"]))
    with pytest.raises(KeyboardInterrupt):
        model.save_pretrained(tmp_path)
    assert (tmp_path / "adapter_model.safetensors").read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["adapter_config.json", "adapter_model.safetensors"]
