"""LoRA on mixture-of-experts weights stored as 3-D parameters (peft's ``target_parameters``), on tiny DeepSeek-V3,
Qwen-MoE, Mixtral and GPT-OSS models (GPT-OSS stores its experts transposed): each expert's update is s · B_e A_e,
the files are peft's both ways, and merging equals the unmerged model."""

from __future__ import annotations

import peft
import pytest
import torch
from transformers import (
    GptOssConfig,
    GptOssForCausalLM,
    MixtralConfig,
    MixtralForCausalLM,
    Qwen2MoeConfig,
    Qwen2MoeForCausalLM,
)

import peftkit
from peftkit.core.errors import ConfigError
from tests.conftest import VOCAB, randomize_trainable, tiny_batch, tiny_model

COMMON = dict(vocab_size=VOCAB, hidden_size=32, intermediate_size=48, num_hidden_layers=1, num_attention_heads=4,
              num_key_value_heads=2, max_position_embeddings=64, bos_token_id=0, eos_token_id=0, pad_token_id=0)
TARGETS = ["mlp.experts.gate_up_proj", "mlp.experts.down_proj"]


def moe_model(kind: str) -> torch.nn.Module:
    torch.manual_seed(0)
    if kind == "deepseek":
        return tiny_model("deepseek")
    if kind == "mixtral":
        return MixtralForCausalLM(MixtralConfig(**COMMON, num_local_experts=4, num_experts_per_tok=2)).eval()
    if kind == "qwen_moe":
        return Qwen2MoeForCausalLM(Qwen2MoeConfig(**COMMON, num_experts=4, num_experts_per_tok=2,
                                                  moe_intermediate_size=16, shared_expert_intermediate_size=16)).eval()
    return GptOssForCausalLM(GptOssConfig(**COMMON, num_local_experts=4, num_experts_per_tok=2, head_dim=8)).eval()


KINDS = ["deepseek", "qwen_moe", "mixtral", "gpt_oss"]


def outputs(model) -> torch.Tensor:
    with torch.no_grad():
        return model(**tiny_batch()).logits


@pytest.mark.parametrize("kind", KINDS)
def test_expert_weights_round_trip_through_peft_and_merge(kind, tmp_path):
    ours = peftkit.get_peft_model(moe_model(kind), peftkit.LoraConfig(r=2, target_parameters=TARGETS))
    randomize_trainable(ours)
    expected = outputs(ours)
    assert (expected - outputs(moe_model(kind))).abs().max() > 1e-3  # the adapter changes the output
    ours.save_pretrained(tmp_path / "ours")
    theirs = peft.PeftModel.from_pretrained(moe_model(kind), tmp_path / "ours").eval()
    assert torch.allclose(outputs(theirs), expected, atol=1e-5)
    theirs.save_pretrained(tmp_path / "theirs")
    back = peftkit.PeftModel.from_pretrained(moe_model(kind), tmp_path / "theirs")
    assert torch.allclose(outputs(back), expected, atol=1e-5)
    assert torch.allclose(outputs(back.merge_and_unload()), expected, atol=1e-5)


@pytest.mark.parametrize("kind", ["deepseek", "gpt_oss"])
def test_each_expert_gets_its_own_rank_r_update(kind):
    model = peftkit.get_peft_model(moe_model(kind), peftkit.LoraConfig(r=2, lora_alpha=6,
                                                                       target_parameters=["mlp.experts.down_proj"]))
    randomize_trainable(model)
    layer = next(m for n, m in model.named_modules() if n.endswith("mlp.experts"))
    a, b = layer.lora_A["default"]["down_proj"].weight, layer.lora_B["default"]["down_proj"].weight
    delta = layer.delta("default", "down_proj")
    assert delta.shape == layer.base_layer.down_proj.shape
    for expert in range(4):
        a_e, b_e = a[2 * expert:2 * expert + 2], b[:, expert::4]  # A: (E·r) × in by expert; B: out × (r·E) by rank
        expected = 3.0 * b_e @ a_e
        got = delta[expert].T if kind == "gpt_oss" else delta[expert]
        assert torch.allclose(got, expected, atol=1e-6)
        assert torch.linalg.matrix_rank(got) <= 2


def test_training_reaches_the_expert_factors_only():
    model = peftkit.get_peft_model(moe_model("deepseek"), peftkit.LoraConfig(r=2, target_parameters=TARGETS))
    randomize_trainable(model)
    model(**tiny_batch(), labels=tiny_batch()["input_ids"]).loss.backward()
    trained = {n: p for n, p in model.named_parameters() if p.requires_grad}
    assert trained and all("lora_" in n for n in trained)
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in trained.values())
    assert sum(p.numel() for p in trained.values()) == 2 * 4 * (32 + 32) + 2 * 4 * (16 + 32)


@pytest.mark.parametrize("settings, message", [({"target_parameters": ["mlp.experts.nothing"]}, "names no parameter"),
                                               ({"target_parameters": TARGETS, "lora_dropout": 0.1}, "lora_dropout")])
def test_bad_target_parameters_are_refused_in_one_line(settings, message):
    model = moe_model("deepseek")
    with pytest.raises(ConfigError, match=message) as error:
        peftkit.get_peft_model(model, peftkit.LoraConfig(r=2, **settings))
    assert "\n" not in str(error.value)
    assert not any("lora" in n for n, _ in model.named_parameters())
