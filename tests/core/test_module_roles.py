"""Default targets from the module structure: on the families the hand-made tables name, the roles find exactly the
tables' modules; on DeepSeek-V3 (multi-head latent attention) and Nemotron, which no table names, they find the
projections that play those roles."""

from __future__ import annotations

import pytest
import torch
from transformers import T5Config, T5ForConditionalGeneration

import peftkit
from peftkit.core.errors import ConfigError
from peftkit.core.module_names import name_matches
from peftkit.core.module_roles import role_targets, sublayers
from peftkit.core.targets import plan
from peftkit.methods.bottleneck import BLOCKS
from peftkit.methods.ia3 import IA3_DEFAULT_TARGETS
from peftkit.methods.lite_adapter import LITE_DEFAULT_TARGETS
from peftkit.methods.lora import LORA_DEFAULT_TARGETS
from tests.conftest import tiny_model


def model_of(kind: str) -> torch.nn.Module:
    if kind != "t5":
        return tiny_model(kind)
    torch.manual_seed(0)
    return T5ForConditionalGeneration(T5Config(vocab_size=120, d_model=32, d_kv=8, d_ff=48, num_layers=2, num_heads=4,
                                               decoder_start_token_id=0, pad_token_id=0))


def table_hits(model, targets: list[str]) -> list[str]:
    return [name for name, _ in model.named_modules() if name and name_matches(name, targets)]


@pytest.mark.parametrize("kind", ["bert", "gpt2", "llama", "t5"])
def test_query_and_value_roles_find_what_lora_s_table_names(kind):
    model = model_of(kind)
    assert role_targets(model, ("query", "value")) == table_hits(model, LORA_DEFAULT_TARGETS[model.config.model_type])


@pytest.mark.parametrize("kind", ["gpt2", "llama", "t5"])
def test_the_roles_find_what_ia3_s_and_the_lite_adapters_tables_name(kind):
    model = model_of(kind)
    model_type = model.config.model_type
    assert role_targets(model, ("key", "value", "mlp_output")) == table_hits(model, IA3_DEFAULT_TARGETS[model_type])
    if model_type in LITE_DEFAULT_TARGETS:
        assert role_targets(model, ("attention_output", "mlp_output")) == table_hits(model,
                                                                                     LITE_DEFAULT_TARGETS[model_type])


@pytest.mark.parametrize("kind, leaves", [("deepseek", {"q_b_proj", "kv_b_proj"}), ("nemotron", {"q_proj", "v_proj"})])
def test_a_family_no_table_names_gets_its_query_and_value_projections(kind, leaves):
    the_plan = plan(tiny_model(kind), peftkit.LoraConfig(r=2))
    assert {m.name.rsplit(".", 1)[-1] for m in the_plan.modules} == leaves
    assert len(the_plan.modules) == 2 * 2  # two layers


@pytest.mark.parametrize("kind", ["deepseek", "nemotron"])
def test_ia3_finds_keys_values_and_feed_forward_outputs_on_a_new_family(kind):
    the_plan = plan(tiny_model(kind), peftkit.IA3Config())
    config = the_plan.config
    assert config.feedforward_modules and all(name.endswith("down_proj") for name in config.feedforward_modules)
    assert any(name.endswith("down_proj") for name in (m.name for m in the_plan.modules))


def test_a_model_without_attention_or_feed_forward_blocks_is_refused_in_one_line():
    model = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.ReLU(), torch.nn.Linear(4, 2))
    with pytest.raises(ConfigError, match="no default for model type 'None'.*set target_modules") as error:
        plan(model, peftkit.LoraConfig(r=2))
    assert "\n" not in str(error.value)


@pytest.mark.parametrize("kind", ["gpt2", "llama", "t5"])
def test_the_sub_layers_found_are_the_bottleneck_table_s_blocks(kind):
    model = model_of(kind)
    attention, feed_forward, _, _ = BLOCKS[model.config.model_type]
    config = peftkit.BottleneckConfig(placement="houlsby")
    assert config.structure_targets(model) == table_hits(model, f"{attention}|{feed_forward}")


def test_the_feed_forward_sub_layer_of_a_mixture_of_experts_block_is_the_whole_block():
    model = tiny_model("deepseek")
    found = sublayers(model)
    assert found["attention"] == ["model.layers.0.self_attn", "model.layers.1.self_attn"]
    assert found["feed_forward"] == ["model.layers.0.mlp", "model.layers.1.mlp"]  # layer 1: experts + shared expert


@pytest.mark.parametrize("method", ["bottleneck", "vl_pet"])
@pytest.mark.parametrize("kind", ["deepseek", "nemotron"])
def test_block_adapters_find_their_sub_layers_on_a_new_family(method, kind):
    config = {"bottleneck": peftkit.BottleneckConfig(placement="houlsby"), "vl_pet": peftkit.VlPetConfig()}[method]
    attention = "self_attn.o_proj" if method == "bottleneck" else "self_attn"
    names = [m.name for m in plan(tiny_model(kind), config).modules]
    assert names == [f"model.layers.{i}.{sub}" for i in (0, 1) for sub in (attention, "mlp")]
