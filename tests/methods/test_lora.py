import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from peftkit import ConfigError, LoraConfig, get_peft_model
from peftkit.core.mechanics.lean_ops import dropped_positions
from peftkit.methods.lora import DroppedLowRank, LoraEmbedding, LoraLinear
from tests.conftest import (
    ATTENTION_TARGETS,
    MODEL_KINDS,
    assert_changed,
    logits,
    randomize_trainable,
    tiny_batch,
    tiny_model,
)

EMBEDDING = {"bert": "word_embeddings", "gpt2": "wte", "llama": "embed_tokens"}


@pytest.mark.parametrize("variant", [{}, {"use_rslora": True}, {"use_dora": True}, {"init_lora_weights": "gaussian"},
                                     {"init_lora_weights": "pissa"}, {"init_lora_weights": "pissa_niter_4"}])
def test_a_new_adapter_starts_at_the_pretrained_model(kind, variant):
    base = logits(tiny_model(kind))
    targets = "all-linear" if "init_lora_weights" in variant else ATTENTION_TARGETS[kind] + [EMBEDDING[kind]]
    model = get_peft_model(tiny_model(kind), LoraConfig(r=4, target_modules=targets, **variant))
    assert (logits(model) - base).abs().max() <= 1e-5


def test_rslora_scales_by_alpha_over_root_r():
    model = get_peft_model(tiny_model("llama"), LoraConfig(r=16, lora_alpha=8, use_rslora=True))
    layer = model.get_base_model().model.layers[0].self_attn.q_proj
    assert layer.scaling["default"] == pytest.approx(8 / math.sqrt(16))
    plain = get_peft_model(tiny_model("llama"), LoraConfig(r=16, lora_alpha=8))
    assert plain.get_base_model().model.layers[0].self_attn.q_proj.scaling["default"] == pytest.approx(0.5)


def test_pissa_puts_the_principal_part_in_the_adapter_and_the_residual_in_the_base():
    original = tiny_model("llama").model.layers[0].self_attn.q_proj.weight.detach().clone()
    model = get_peft_model(tiny_model("llama"), LoraConfig(r=4, lora_alpha=4, init_lora_weights="pissa"))
    layer = model.get_base_model().model.layers[0].self_attn.q_proj
    residual = layer.base_layer.weight
    singular = torch.linalg.svdvals(original)
    assert torch.linalg.svdvals(residual)[0] == pytest.approx(singular[4].item(), rel=1e-4)
    assert torch.allclose(residual + layer.delta_weight("default"), original, atol=1e-5)


def test_only_b_gets_a_gradient_at_the_start_and_both_after_a_step():
    model = get_peft_model(tiny_model("bert"), LoraConfig(r=4, target_modules=["query"], task_type="SEQ_CLS"))
    layer = model.get_base_model().bert.encoder.layer[0].attention.self.query
    loss = model(**tiny_batch(), labels=torch.tensor([0, 1])).loss
    loss.backward()
    assert layer.lora_A["default"].weight.grad.abs().max() == 0  # B = 0 blocks A's gradient
    assert layer.lora_B["default"].weight.grad.abs().max() > 0
    assert layer.base_layer.weight.grad is None


def test_dora_magnitude_gets_a_gradient_and_starts_at_the_weight_norm():
    model = get_peft_model(tiny_model("llama"), LoraConfig(r=4, use_dora=True))
    layer = model.get_base_model().model.layers[0].self_attn.q_proj
    magnitude = layer.lora_magnitude_vector["default"]
    assert torch.allclose(magnitude, layer.base_layer.weight.norm(dim=1))
    randomize_trainable(model)
    model(**tiny_batch()).logits.sum().backward()
    assert magnitude.grad.abs().max() > 0


def test_dropout_acts_only_in_training_mode():
    model = get_peft_model(tiny_model("gpt2"), LoraConfig(r=4, lora_dropout=0.5, target_modules=["c_attn"]))
    randomize_trainable(model)
    evaluated = logits(model)
    assert torch.equal(logits(model), evaluated)
    model.train()
    torch.manual_seed(3)
    assert_changed(logits(model), evaluated, at_least=1e-4)


@pytest.mark.parametrize(("bias", "count"), [("none", 0), ("lora_only", 2), ("all", 19)])
def test_bias_option_chooses_which_biases_train(bias, count):
    model = get_peft_model(tiny_model("bert"), LoraConfig(r=2, target_modules=["query"], bias=bias))
    trainable_biases = [n for n, p in model.named_parameters() if p.requires_grad and n.endswith("bias")]
    assert len(trainable_biases) == count


def test_layer_types():
    model = get_peft_model(tiny_model("gpt2"), LoraConfig(r=2, target_modules=["c_attn", "wte"]))
    assert isinstance(model.get_base_model().transformer.h[0].attn.c_attn, LoraLinear)
    assert model.get_base_model().transformer.h[0].attn.c_attn.transposed  # Conv1D stores in × out
    assert isinstance(model.get_base_model().transformer.wte, LoraEmbedding)


@settings(max_examples=25, deadline=None)
@given(kind=st.sampled_from(MODEL_KINDS), r=st.integers(1, 8), alpha=st.floats(0.5, 32), dora=st.booleans(),
       rslora=st.booleans(), with_embedding=st.booleans())
def test_merge_then_unmerge_restores_weights_and_merged_outputs_match(kind, r, alpha, dora, rslora, with_embedding):
    targets = ATTENTION_TARGETS[kind] + ([EMBEDDING[kind]] if with_embedding else [])
    model = get_peft_model(tiny_model(kind), LoraConfig(r=r, lora_alpha=alpha, use_dora=dora, use_rslora=rslora,
                                                        target_modules=targets))
    randomize_trainable(model, scale=0.1)
    weights = {n: p.detach().clone() for n, p in model.named_parameters()}
    unmerged = logits(model)
    if kind == "gpt2" and with_embedding:  # wte is tied to lm_head: merging would change both
        with pytest.raises(ConfigError, match="shared with lm_head.weight"):
            model.merge_adapter()
        return
    model.merge_adapter()
    merged = logits(model)
    model.unmerge_adapter()
    assert (merged - unmerged).abs().max() <= 1e-4 * max(1.0, unmerged.abs().max().item())
    for name, parameter in model.named_parameters():
        assert torch.allclose(parameter, weights[name], atol=1e-5), name
    assert torch.allclose(logits(model), unmerged, atol=1e-5)


def test_dropout_path_matches_autograd_through_the_same_mask_in_float64():
    x = torch.randn(2, 5, 7, dtype=torch.float64, requires_grad=True)
    a = torch.randn(3, 7, dtype=torch.float64, requires_grad=True)
    b = torch.randn(4, 3, dtype=torch.float64, requires_grad=True)
    torch.manual_seed(1)
    out = DroppedLowRank.apply(x, a, b, 0.7, 0.3)
    grad = torch.randn_like(out)
    ours = torch.autograd.grad(out, (x, a, b), grad)
    torch.manual_seed(1)
    dropped, keep_scale = dropped_positions(x, 0.3)
    reference = 0.7 * ((x * ~dropped * keep_scale) @ a.T) @ b.T
    expected = torch.autograd.grad(reference, (x, a, b), grad)
    assert (out - reference).abs().max() <= 1e-12
    for got, want in zip(ours, expected, strict=True):
        assert (got - want).abs().max() <= 1e-12


@pytest.mark.parametrize("p", [0.05, 0.1, 0.5])
def test_dropout_drops_the_requested_fraction(p):
    dropped, keep_scale = dropped_positions(torch.empty(400_000), p)
    assert dropped.float().mean().item() == pytest.approx(p, abs=0.003)
    assert keep_scale == pytest.approx(1 / (1 - p), rel=1e-4)


def test_dropout_path_saves_less_for_backward_than_a_dropped_copy_per_module():
    def saved_bytes(model):
        storages = {}

        def pack(tensor):
            storages[tensor.untyped_storage().data_ptr()] = tensor.untyped_storage().nbytes()
            return tensor

        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            model(**tiny_batch(batch=8, length=32)).logits.sum()
        return sum(storages.values())

    settings = {"r": 4, "target_modules": ["q_proj", "k_proj", "v_proj"]}
    plain = get_peft_model(tiny_model("llama"), LoraConfig(**settings)).train()
    dropped = get_peft_model(tiny_model("llama"), LoraConfig(lora_dropout=0.1, **settings)).train()
    # q, k and v share one input; a dropped float copy per module would add 3 x 4 bytes per input element,
    # the masks add 3 x 1 byte
    inputs = 2 * 8 * 32 * 32
    assert saved_bytes(dropped) - saved_bytes(plain) <= 3 * inputs + 4096
