"""peft's names, arguments and wrapper shape: code written for peft runs with ``import peftkit as peft``."""

import dataclasses
from pathlib import Path

import peft
import pytest
import torch
from safetensors.torch import load_file

import peftkit
from peftkit import ConfigError
from tests.conftest import logits, randomize_trainable, tiny_batch, tiny_model

PEFT_NAMES = ["TaskType", "PeftType", "PeftModelForCausalLM", "PeftModelForSequenceClassification",
              "PeftModelForTokenClassification", "PeftModelForSeq2SeqLM", "PeftModelForQuestionAnswering",
              "PeftModelForFeatureExtraction", "AutoPeftModel", "AutoPeftModelForCausalLM", "AutoPeftModelForSeq2SeqLM",
              "AutoPeftModelForSequenceClassification", "AutoPeftModelForTokenClassification",
              "AutoPeftModelForQuestionAnswering", "AutoPeftModelForFeatureExtraction", "get_peft_model_state_dict",
              "set_peft_model_state_dict", "load_peft_weights", "inject_adapter_in_model",
              "prepare_model_for_kbit_training", "get_peft_config", "get_layer_status", "get_model_status",
              "cast_mixed_precision_params", "PeftConfig", "PeftModel", "get_peft_model", "LoraConfig"]

CONFIGS = {  # (model kind, config factory taking the library)
    "lora": ("bert", lambda lib: lib.LoraConfig(task_type="SEQ_CLS", r=2, target_modules=["query", "value"])),
    "lora-llama": ("llama", lambda lib: lib.LoraConfig(task_type="CAUSAL_LM", r=2, target_modules="all-linear")),
    "ia3": ("llama", lambda lib: lib.IA3Config(target_modules=["k_proj", "down_proj"],
                                               feedforward_modules=["down_proj"])),
    "prompt": ("llama", lambda lib: lib.PromptTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=3)),
}


def both(name: str):
    kind, make = CONFIGS[name]
    return (peft.get_peft_model(tiny_model(kind), make(peft)), peftkit.get_peft_model(tiny_model(kind), make(peftkit)))


def test_every_name_listed_exists():
    assert [name for name in PEFT_NAMES if not hasattr(peftkit, name)] == []


def test_every_public_method_and_property_of_peft_is_peftkits_own():
    """peftkit's class derives from peft's (so that Trainer, TRL and accelerate recognise it); none of peft's
    public attributes may be inherited, since peft's code expects peft's internals."""
    mine = peftkit.PeftModel.__mro__[:peftkit.PeftModel.__mro__.index(peft.PeftModel)]
    inherited = [name for name in vars(peft.PeftModel) if not name.startswith("_")
                 and not any(name in vars(cls) for cls in mine)]
    assert inherited == []


@pytest.mark.parametrize("name", list(CONFIGS))
def test_parameter_and_state_dict_names_and_classes_are_peft_s(name):
    theirs, ours = both(name)
    assert isinstance(ours, peft.PeftModel) and type(ours).__name__ == type(theirs).__name__
    assert list(ours.state_dict()) == list(theirs.state_dict())
    assert [n for n, p in ours.named_parameters() if p.requires_grad] == \
           [n for n, p in theirs.named_parameters() if p.requires_grad]
    assert type(ours.get_base_model()) is type(theirs.get_base_model())
    assert type(ours.base_model.model) is type(theirs.base_model.model)
    assert ours.active_adapters == theirs.active_adapters == ["default"]
    assert ours.active_adapter == theirs.active_adapter == "default"
    assert ours.modules_to_save == theirs.modules_to_save
    assert ours.peft_config["default"].peft_type == theirs.peft_config["default"].peft_type
    assert ours.active_peft_config is ours.peft_config["default"]


def test_state_dicts_written_for_peft_load_into_peftkit_with_equal_outputs():
    theirs, ours = both("lora-llama")
    randomize_trainable(theirs)
    ours.load_state_dict(theirs.state_dict())
    assert torch.allclose(logits(ours), logits(theirs), atol=1e-6)


def test_layer_and_model_status_match_peft_s():
    theirs, ours = both("lora")
    ours.add_adapter("other", peftkit.LoraConfig(r=2, target_modules=["query"]))
    theirs.add_adapter("other", peft.LoraConfig(r=2, target_modules=["query"]))
    mine, peft_status = ours.get_model_status(), theirs.get_model_status()
    for field in ("trainable_params", "total_params", "num_adapter_layers", "enabled", "active_adapters",
                  "merged_adapters", "requires_grad", "available_adapters", "devices"):
        assert getattr(mine, field) == getattr(peft_status, field), field
    layers = {s.name: s for s in peftkit.get_layer_status(ours)}
    for status in peft.get_layer_status(theirs):
        if status.name in layers:  # peft lists the modules_to_save wrapper too
            ours_status = layers[status.name]
            assert (ours_status.available_adapters, ours_status.requires_grad, ours_status.active_adapters) == \
                   (status.available_adapters, status.requires_grad, status.active_adapters)


def test_get_prompt_and_the_saved_prompt_embedding_match_peft_s():
    theirs, ours = both("prompt")
    ours.load_state_dict(theirs.state_dict())
    assert torch.equal(ours.get_prompt(batch_size=2), theirs.get_prompt(batch_size=2))
    assert torch.equal(ours.get_prompt_embedding_to_save("default"), theirs.get_prompt_embedding_to_save("default"))
    with pytest.raises(ConfigError, match="task_ids"):
        ours.get_prompt(2, task_ids=torch.zeros(2))


def test_save_arguments(tmp_path):
    _, ours = both("lora-llama")
    ours.save_pretrained(tmp_path / "plain", safe_serialization=True, save_embedding_layers=False)
    ours.save_pretrained(tmp_path / "embeddings", save_embedding_layers=True)
    plain, embeddings = load_file(tmp_path / "plain/adapter_model.safetensors"), load_file(
        tmp_path / "embeddings/adapter_model.safetensors")
    assert set(embeddings) - set(plain) == {"base_model.model.model.embed_tokens.weight",
                                            "base_model.model.lm_head.weight"}
    with pytest.raises(ConfigError, match="safetensors only"):
        ours.save_pretrained(tmp_path / "pickle", safe_serialization=False)
    with pytest.raises(ConfigError, match="does not convert"):
        ours.save_pretrained(tmp_path / "x", path_initial_model_for_weight_conversion="somewhere")
    with pytest.raises(ConfigError, match="does not support: push_to_hub_token"):
        ours.save_pretrained(tmp_path / "x", push_to_hub_token="t")
    assert not (tmp_path / "pickle").exists() and not (tmp_path / "x").exists()
    loaded = peft.PeftModel.from_pretrained(tiny_model("llama"), tmp_path / "embeddings")
    assert torch.allclose(logits(loaded), logits(ours), atol=1e-6)


def test_load_arguments_and_key_mapping(tmp_path):
    theirs, _ = both("lora-llama")
    randomize_trainable(theirs)
    theirs.save_pretrained(tmp_path)
    model = peftkit.PeftModel.from_pretrained(tiny_model("llama"), tmp_path, autocast_adapter_dtype=True,
                                              low_cpu_mem_usage=True, ephemeral_gpu_offload=False)
    assert torch.allclose(logits(model), logits(theirs), atol=1e-6)
    with pytest.raises(ConfigError, match="ephemeral_gpu_offload"):
        peftkit.PeftModel.from_pretrained(tiny_model("llama"), tmp_path, ephemeral_gpu_offload=True)
    renamed = {key.replace("self_attn", "attention"): value for key, value in theirs.state_dict().items()}
    mapping = {r"^model\.layers\.(\d+)\.self_attn": r"model.layers.\1.attn"}
    weights = peftkit.load_peft_weights(tmp_path, key_mapping=mapping)
    assert all(".attn." in key for key in weights if "q_proj" in key) and renamed


def test_autocast_adapter_dtype_keeps_adapters_in_float32_like_peft():
    kind, make = CONFIGS["lora-llama"]
    theirs = peft.get_peft_model(tiny_model(kind).to(torch.bfloat16), make(peft))
    ours = peftkit.get_peft_model(tiny_model(kind).to(torch.bfloat16), make(peftkit), autocast_adapter_dtype=True)
    default = peftkit.get_peft_model(tiny_model(kind).to(torch.bfloat16), make(peftkit))
    dtypes = lambda m: {n: p.dtype for n, p in m.named_parameters() if "lora_" in n}  # noqa: E731
    assert dtypes(ours) == dtypes(theirs) and set(dtypes(ours).values()) == {torch.float32}
    assert set(dtypes(default).values()) == {torch.bfloat16}  # peftkit's default: the model's dtype
    ours.load_state_dict(theirs.state_dict())
    assert torch.allclose(logits(ours).float(), logits(theirs).float(), atol=1e-2)


def test_merge_set_adapter_and_requires_grad_arguments():
    _, ours = both("lora-llama")
    randomize_trainable(ours)
    ours.add_adapter("other", peftkit.LoraConfig(r=2, target_modules=["q_proj"]))
    ours.set_adapter("other", inference_mode=True)
    assert not any(p.requires_grad for p in ours.parameters())
    ours.set_requires_grad("other")
    assert {n.split(".")[-2] for n, p in ours.named_parameters() if p.requires_grad} == {"other"}
    with ours.disable_adapter():
        base = logits(ours)
    ours.set_adapter("default")
    expected = logits(ours)
    merged = ours.merge_and_unload(progressbar=True, adapter_names=["default"])
    assert torch.allclose(logits(merged), expected, atol=1e-5) and not torch.allclose(expected, base, atol=1e-3)


def test_peft_state_dict_functions_match_peft_s(tmp_path):
    theirs, ours = both("lora")
    randomize_trainable(theirs)
    ours.load_state_dict(theirs.state_dict())
    mine, peft_dict = peftkit.get_peft_model_state_dict(ours), peft.get_peft_model_state_dict(theirs)
    assert mine.keys() == peft_dict.keys() and all(torch.equal(mine[k], peft_dict[k]) for k in mine)
    fresh = both("lora")[1]
    assert peftkit.set_peft_model_state_dict(fresh, peft_dict).missing_keys == []
    assert torch.allclose(logits(fresh), logits(theirs), atol=1e-6)
    with pytest.raises(Exception, match="missing key"):
        peftkit.set_peft_model_state_dict(fresh, {k: v for k, v in list(peft_dict.items())[1:]})


def test_inject_adapter_in_model_matches_peft_s():
    kind, make = CONFIGS["lora-llama"]
    theirs = peft.inject_adapter_in_model(make(peft), tiny_model(kind))
    ours = peftkit.inject_adapter_in_model(make(peftkit), tiny_model(kind))
    assert type(ours).__name__ == "LlamaForCausalLM"
    assert [n for n, p in ours.named_parameters() if p.requires_grad] == \
           [n for n, p in theirs.named_parameters() if p.requires_grad]
    randomize_trainable(theirs)
    ours.load_state_dict(theirs.state_dict())
    assert torch.allclose(logits(ours), logits(theirs), atol=1e-6)


def test_precision_helpers_match_peft_s():
    for prepare in ("prepare_model_for_kbit_training", "cast_mixed_precision_params"):
        models = []
        for lib in (peft, peftkit):
            model = lib.get_peft_model(tiny_model("llama").to(torch.bfloat16), CONFIGS["lora-llama"][1](lib))
            arguments = (model,) if prepare.startswith("prepare") else (model, torch.bfloat16)
            getattr(lib, prepare)(*arguments)
            models.append({n: (p.dtype, p.requires_grad) for n, p in model.named_parameters()})
        assert models[0] == models[1], prepare


def test_configs_from_folders_and_dicts(tmp_path):
    peft.LoraConfig(r=3, target_modules=["q_proj"], task_type="CAUSAL_LM").save_pretrained(tmp_path)
    config = peftkit.PeftConfig.from_pretrained(tmp_path)
    assert isinstance(config, peftkit.LoraConfig) and config.r == 3 and config.task_type == peftkit.TaskType.CAUSAL_LM
    assert peftkit.LoraConfig.from_pretrained(tmp_path, r=5).r == 5
    built = peftkit.get_peft_config({"peft_type": "LORA", "r": 4, "target_modules": ["q_proj"]})
    assert isinstance(built, peftkit.LoraConfig) and built.r == 4
    with pytest.raises(ConfigError, match="peft_type 'NO_SUCH_TYPE' is not supported"):
        peftkit.get_peft_config({"peft_type": "NO_SUCH_TYPE"})
    typed = peftkit.LoraConfig(task_type=peftkit.TaskType.SEQ_CLS, target_modules=["query"])
    assert dataclasses.asdict(typed)["task_type"] == "SEQ_CLS"


def test_auto_peft_model_loads_base_and_adapter(tmp_path):
    base = tiny_model("llama")
    base.save_pretrained(tmp_path / "base")
    base = type(base).from_pretrained(tmp_path / "base")
    for lib, folder in ((peft, "from-peft"), (peftkit, "from-peftkit")):
        model = lib.get_peft_model(type(base).from_pretrained(tmp_path / "base"), CONFIGS["lora-llama"][1](lib))
        randomize_trainable(model)
        model.save_pretrained(tmp_path / folder)
        for auto in (peft.AutoPeftModelForCausalLM, peftkit.AutoPeftModelForCausalLM):
            loaded = auto.from_pretrained(tmp_path / folder)
            assert torch.allclose(logits(loaded, tiny_batch()), logits(model.eval(), tiny_batch()), atol=1e-6)
    assert type(peftkit.AutoPeftModel.from_pretrained(tmp_path / "from-peftkit")).__name__ == "PeftModelForCausalLM"
    with pytest.raises(ConfigError, match="task_type is CAUSAL_LM"):
        peftkit.AutoPeftModelForSequenceClassification.from_pretrained(tmp_path / "from-peftkit")


def test_a_prompt_saved_without_task_type_runs_its_prompt_in_peft(tmp_path):
    ours = peftkit.get_peft_model(tiny_model("llama"), peftkit.PromptTuningConfig(num_virtual_tokens=3))
    randomize_trainable(ours, scale=1.0)
    ours.save_pretrained(tmp_path)
    assert peftkit.PeftConfig.from_pretrained(tmp_path).task_type == "CAUSAL_LM"
    loaded = peft.PeftModel.from_pretrained(tiny_model("llama"), tmp_path)
    with torch.no_grad():
        theirs, mine = loaded(**tiny_batch()).logits, ours(**tiny_batch()).logits
        base = tiny_model("llama")(**tiny_batch()).logits
    assert torch.allclose(theirs, mine, atol=1e-5) and not torch.allclose(mine[:, -9:], base, atol=1e-3)


def test_peft_fields_at_their_defaults_load_silently_and_others_are_named(tmp_path, recwarn):
    theirs, _ = both("lora-llama")
    theirs.save_pretrained(tmp_path / "defaults")
    peftkit.PeftModel.from_pretrained(tiny_model("llama"), tmp_path / "defaults")
    package = Path(peftkit.__file__).resolve().parent  # not the path's name: a clone may sit in a "peftkit" folder
    assert [str(w.message) for w in recwarn if Path(w.filename).resolve().is_relative_to(package)] == []
    changed = peft.get_peft_model(tiny_model("llama"), peft.LoraConfig(r=2, target_modules=["q_proj"]))
    changed.save_pretrained(tmp_path / "qalora")
    config_file = tmp_path / "qalora" / "adapter_config.json"
    config_file.write_text(config_file.read_text().replace('"use_qalora": false', '"use_qalora": true'))
    with pytest.raises(ConfigError, match=r"field 'use_qalora' = True changes the computation"):
        peftkit.PeftModel.from_pretrained(tiny_model("llama"), tmp_path / "qalora")
