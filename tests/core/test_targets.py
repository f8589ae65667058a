import pytest
import torch
from torch import nn

from peftkit import ConfigError, LoraConfig, get_peft_model, plan
from tests.conftest import tiny_model


def names(model, **settings):
    return [m.name for m in plan(model, LoraConfig(**settings)).modules if m.role == "adapt"]


def test_list_matches_exact_names_and_dotted_suffixes():
    model = tiny_model("bert")
    assert names(model, target_modules=["query"]) == [
        "bert.encoder.layer.0.attention.self.query", "bert.encoder.layer.1.attention.self.query"]
    assert names(model, target_modules=["bert.encoder.layer.1.attention.self.query"]) == [
        "bert.encoder.layer.1.attention.self.query"]
    with pytest.raises(ConfigError):  # suffixes are cut at dots only
        names(model, target_modules=["uery"])


def test_string_is_a_full_match_regex():
    model = tiny_model("llama")
    assert names(model, target_modules=r".*\.0\.self_attn\.(q|v)_proj") == [
        "model.layers.0.self_attn.q_proj", "model.layers.0.self_attn.v_proj"]
    with pytest.raises(ConfigError, match="matched no module"):
        names(model, target_modules="q_proj")  # not a full match of any name


@pytest.mark.parametrize(("kind", "head", "count"), [("gpt2", "lm_head", 8), ("llama", "lm_head", 14),
                                                     ("bert", "classifier", 13)])
def test_all_linear_hits_every_linear_and_conv1d_but_the_output_head(kind, head, count):
    hit = names(tiny_model(kind), target_modules="all-linear")
    assert head not in hit
    assert len(hit) == count


def test_exclude_modules_and_layers_to_transform():
    model = tiny_model("llama")
    hit = names(model, target_modules="all-linear", exclude_modules=["mlp.up_proj", "down_proj"],
                layers_to_transform=[1], layers_pattern="layers")
    assert hit == ["model.layers.1.self_attn.q_proj", "model.layers.1.self_attn.k_proj",
                   "model.layers.1.self_attn.v_proj", "model.layers.1.self_attn.o_proj",
                   "model.layers.1.mlp.gate_proj"]
    assert names(model, target_modules=["q_proj"], exclude_modules=r".*layers\.0.*") == [
        "model.layers.1.self_attn.q_proj"]


def test_unmatched_target_error_names_the_field_and_lists_existing_modules():
    with pytest.raises(ConfigError, match=r"target_modules=\['qkv'\] matched no module.*query.*value") as error:
        get_peft_model(tiny_model("bert"), LoraConfig(target_modules=["qkv"]))
    assert "\n" not in str(error.value)


def test_layers_filter_that_removes_everything_says_so():
    with pytest.raises(ConfigError, match="layers_to_transform"):
        plan(tiny_model("bert"), LoraConfig(target_modules=["query"], layers_to_transform=[7]))


def test_unsupported_module_type_is_named():
    with pytest.raises(ConfigError, match=r"LayerNorm.*lora wraps Linear, Conv1D, Embedding"):
        plan(tiny_model("bert"), LoraConfig(target_modules=["LayerNorm"]))


def test_plan_counts_parameters_and_leaves_the_model_unchanged():
    model = tiny_model("bert")
    before = {k: v.clone() for k, v in model.state_dict().items()}
    modules_before = [type(m) for m in model.modules()]
    result = plan(model, LoraConfig(r=4, target_modules=["query", "word_embeddings"], modules_to_save=["classifier"]))
    # query: 4 * (32 + 32) per layer, two layers; embedding 4 * (120 + 32); classifier 32 * 3 + 3
    assert result.new_parameters == 2 * 4 * 64 + 4 * 152 + 99
    assert [type(m) for m in model.modules()] == modules_before
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert "classifier" in str(result) and "new parameters" in str(result)


def test_plan_parameters_equal_what_get_peft_model_adds():
    model = tiny_model("gpt2")
    config = LoraConfig(r=3, target_modules="all-linear", use_dora=True)
    expected = plan(model, config).new_parameters
    before = sum(p.numel() for p in model.parameters())
    peft_model = get_peft_model(model, config)
    trainable, total = peft_model.get_nb_trainable_parameters()
    assert trainable == expected == total - before


def test_default_targets_come_from_the_model_type():
    assert names(tiny_model("llama")) == ["model.layers.0.self_attn.q_proj", "model.layers.0.self_attn.v_proj",
                                          "model.layers.1.self_attn.q_proj", "model.layers.1.self_attn.v_proj"]
    with pytest.raises(ConfigError, match="no default for model type"):
        plan(nn.Sequential(nn.Linear(2, 2)), LoraConfig())


def test_modules_to_save_that_matches_nothing_is_an_error():
    with pytest.raises(ConfigError, match="modules_to_save: 'head'"):
        plan(tiny_model("bert"), LoraConfig(target_modules=["query"], modules_to_save=["head"]))
