"""QLoRA: NF4 base weights (torchao) with LoRA on top; peft-format adapters; merging dequantises."""

import pytest
import torch

import peftkit
from peftkit import ConfigError, LoraConfig, quantize_nf4
from peftkit.core.mechanics.quantization import dequantized, is_nf4, stored_bytes
from tests.conftest import logits, randomize_trainable, tiny_batch, tiny_model, train_losses


def test_nf4_stores_linear_weights_in_about_an_eighth_and_stays_close():
    model = tiny_model("llama")
    expected = logits(model)
    report = quantize_nf4(model)
    assert len(report.quantized) == 2 * 7  # q k v o gate up down in both layers; not the lm_head
    assert not is_nf4(model.lm_head.weight) and not is_nf4(model.model.embed_tokens.weight)
    assert report.ratio <= 0.16
    assert report.nf4_bytes == sum(stored_bytes(model.get_submodule(n).weight) for n in report.quantized)
    got = logits(model)
    assert (got - expected).norm() <= 0.1 * expected.norm()


def test_qlora_trains_only_lora_and_saves_a_plain_lora_adapter(tmp_path):
    model = tiny_model("llama")
    quantize_nf4(model)
    codes = model.model.layers[0].self_attn.q_proj.weight.quantized_data.clone()
    peft_model = peftkit.get_peft_model(model, LoraConfig(r=4, target_modules="all-linear"))
    batch = {**tiny_batch(batch=4), "labels": tiny_batch(batch=4)["input_ids"]}
    losses = train_losses(peft_model, batch, steps=30, lr=3e-2)
    assert losses[-1] < 0.95 * losses[0]  # the float model with the same LoRA: 4.79 -> 4.41
    query = peft_model.get_base_model().model.layers[0].self_attn.q_proj
    assert torch.equal(query.base_layer.weight.quantized_data, codes)
    peft_model.eval()
    peft_model.save_pretrained(tmp_path)
    # the same adapter on the float model: differs only by NF4's rounding of the base weights
    on_float = peftkit.PeftModel.from_pretrained(tiny_model("llama"), tmp_path)
    on_nf4_model = tiny_model("llama")
    quantize_nf4(on_nf4_model)
    on_nf4 = peftkit.PeftModel.from_pretrained(on_nf4_model, tmp_path)
    assert torch.allclose(logits(on_nf4), logits(peft_model), atol=1e-5)
    assert (logits(on_float) - logits(peft_model)).norm() <= 0.1 * logits(peft_model).norm()


def test_merging_into_nf4_dequantises_with_a_warning():
    model = tiny_model("llama")
    quantize_nf4(model)
    peft_model = peftkit.get_peft_model(model, LoraConfig(r=4, target_modules=["q_proj", "v_proj"]))
    randomize_trainable(peft_model)
    expected = logits(peft_model)
    with pytest.warns(UserWarning, match="dequantised"):
        merged = peft_model.merge_and_unload()
    assert not is_nf4(merged.model.layers[0].self_attn.q_proj.weight)
    assert is_nf4(merged.model.layers[0].self_attn.k_proj.weight)  # not merged into: still 4-bit
    assert torch.allclose(logits(merged), expected, atol=1e-5)


def test_dora_on_nf4_starts_at_the_quantised_model():
    model = tiny_model("llama")
    quantize_nf4(model)
    expected = logits(model)
    peft_model = peftkit.get_peft_model(model, LoraConfig(r=4, use_dora=True, target_modules=["q_proj"]))
    assert torch.allclose(logits(peft_model), expected, atol=1e-5)


def test_quantizing_nothing_is_an_error():
    with pytest.raises(ConfigError, match="matches no Linear"):
        quantize_nf4(tiny_model("llama"), target_modules=["no_such_module"])


def test_qlora_equals_lora_on_the_dequantised_weights():
    """QLoRA (fused LoRA on NF4 weights) trains like LoRA on a float copy of the dequantised weights."""
    quantized = tiny_model("llama")
    quantize_nf4(quantized)
    reference = tiny_model("llama")
    with torch.no_grad():
        for (name, module), (_, twin) in zip(quantized.named_modules(), reference.named_modules(), strict=True):
            if isinstance(module, torch.nn.Linear) and module is not quantized.lm_head:
                twin.weight.copy_(dequantized(module.weight))
    grads = []
    for model in (quantized, reference):
        torch.manual_seed(1)  # the same LoRA initialisation for both
        model = peftkit.get_peft_model(model, LoraConfig(r=4, target_modules="all-linear"))
        randomize_trainable(model)
        model.train()
        model(**tiny_batch(batch=2, length=16)).logits.pow(2).mean().backward()
        grads.append({n: p.grad for n, p in model.named_parameters() if p.requires_grad})
    assert grads[0].keys() == grads[1].keys() and len(grads[0]) > 0
    for name, grad in grads[1].items():
        assert (grads[0][name] - grad).norm() <= 1e-4 * grad.norm() + 1e-9, name
