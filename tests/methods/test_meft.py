"""MEFT: reversible layers invert exactly, their backward equals ordinary autograd, memory stays flat."""

import pytest
import torch
from transformers import BertConfig, BertForSequenceClassification

import peftkit
from peftkit import ConfigError, MeftConfig
from peftkit.methods.meft import MeftLayer, MeftStep, run_streams
from peftkit.methods.reversible import coupled, inverted
from peftkit.utils.memory import SavedForBackward
from tests.conftest import assert_changed, logits, randomize_trainable, tiny_batch, tiny_model, train_losses

KINDS = ["bert", "llama"]
VARIANTS = [1, 2, 3]


def meft_model(kind, variant, dtype=torch.float64, **options):
    options = {"reduction_factor": 4, **options}
    model = peftkit.get_peft_model(tiny_model(kind).to(dtype), MeftConfig(variant=variant, **options))
    randomize_trainable(model, scale=0.1)
    return model


def segment_of(model):
    layers = [m for _, m in model.adapter_layers() if isinstance(m, MeftLayer)]
    return layers[0].segments["default"]


def set_reversible_layers(model, count):
    for layer in segment_of(model):
        layer.settings["default"].reversible_layers = count


def loss_and_grads(model, batch, seed=0):
    model.zero_grad(set_to_none=True)
    torch.manual_seed(seed)
    out = model(**batch).logits
    out.pow(2).mean().backward()
    return out.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("variant", VARIANTS)
def test_inversion_rebuilds_a_layers_inputs_in_float64(kind, variant):
    model = meft_model(kind, variant)
    layer = segment_of(model)[0]
    arguments = {"attention_mask": None}
    if kind == "llama":
        x = torch.zeros(2, 7, 32, dtype=torch.float64)
        arguments["position_embeddings"] = model.get_base_model().model.rotary_emb(x, torch.arange(7)[None])
    step = MeftStep(layer, "default", arguments)
    coupling = layer.settings["default"].coupling()
    generator = torch.Generator().manual_seed(0)
    x1, x2 = (torch.randn(2, 7, 32, dtype=torch.float64, generator=generator) for _ in range(2))
    states = []
    outputs = coupled(step, coupling, x1, x2, states)
    zeros = tuple(torch.zeros_like(o) for o in outputs)
    (r1, r2), _ = inverted(step, coupling, states, outputs, zeros, {})
    assert (r1 - x1).abs().max() <= 1e-10
    assert (r2 - x2).abs().max() <= 1e-10


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("variant", VARIANTS)
def test_reversible_backward_equals_ordinary_autograd(kind, variant):
    model = meft_model(kind, variant)
    batch = tiny_batch()
    set_reversible_layers(model, 0)
    out_plain, plain = loss_and_grads(model, batch)
    set_reversible_layers(model, None)
    out_reversible, reversible = loss_and_grads(model, batch)
    assert torch.equal(out_plain, out_reversible)
    assert len(plain) == 2 * (1 if variant == 2 else 2) * 4  # every layer's adapters get a gradient
    for name, grad in plain.items():
        assert grad.norm() > 0, name
        assert (reversible[name] - grad).norm() <= 1e-6 * grad.norm(), name


@pytest.mark.parametrize("variant", VARIANTS)
def test_reversible_backward_replays_dropout(variant):
    model = meft_model("bert", variant, adapter_dropout=0.2).train()
    batch = tiny_batch()
    set_reversible_layers(model, 0)
    out_a, _ = loss_and_grads(model, batch, seed=5)
    out_b, plain = loss_and_grads(model, batch, seed=6)
    assert_changed(out_a, out_b)  # dropout really draws new masks per seed
    set_reversible_layers(model, None)
    _, reversible = loss_and_grads(model, batch, seed=6)
    for name, grad in plain.items():
        assert (reversible[name] - grad).norm() <= 1e-6 * grad.norm(), name


def test_only_the_bottom_layers_reversible_gives_the_same_gradients():
    model = meft_model("bert", 1)
    batch = tiny_batch()
    _, everything = loss_and_grads(model, batch)
    set_reversible_layers(model, 1)
    _, bottom = loss_and_grads(model, batch)
    for name, grad in everything.items():
        assert (bottom[name] - grad).norm() <= 1e-9 * grad.norm(), name


@pytest.mark.parametrize(("variant", "scale", "pretrained_stream"), [(1, "lam", 1), (2, "beta", 0)])
def test_zero_adapters_and_zero_scale_carry_the_pretrained_hidden_states(kind_llama_or_bert, variant, scale,
                                                                          pretrained_stream):
    kind = kind_llama_or_bert
    base = tiny_model(kind).double()
    with torch.no_grad():
        start = base.get_input_embeddings()(tiny_batch()["input_ids"])
    arguments = {"attention_mask": None}
    if kind == "llama":
        arguments["position_embeddings"] = base.model.rotary_emb(start, torch.arange(start.shape[1])[None])
    model = peftkit.get_peft_model(base, MeftConfig(variant=variant, reversible_layers=0, **{scale: 0.0}))
    segment = segment_of(model)
    with torch.no_grad():
        streams = run_streams(segment, "default", start, arguments)
        pretrained = start
        for layer in segment:
            pretrained = layer.base(pretrained, **arguments)
    assert (streams[pretrained_stream] - pretrained).abs().max() <= 1e-12


@pytest.fixture(params=KINDS)
def kind_llama_or_bert(request):
    return request.param


def saved_activation_bytes(model, batch) -> int:
    with SavedForBackward(skip=model.parameters()) as saved:
        loss = model(**batch).logits.sum()
    loss.backward()
    return saved.bytes


def deep_bert(layers):
    torch.manual_seed(0)
    config = BertConfig(vocab_size=120, hidden_size=32, num_hidden_layers=layers, num_attention_heads=4,
                        intermediate_size=48, max_position_embeddings=64, num_labels=3)
    return BertForSequenceClassification(config).eval()


def test_memory_saved_for_backward_does_not_grow_with_depth():
    batch = tiny_batch(batch=4, length=32)
    saved = {}
    for layers in (2, 8):
        for reversible in (None, 0):
            model = peftkit.get_peft_model(deep_bert(layers), MeftConfig(reversible_layers=reversible))
            saved[layers, reversible] = saved_activation_bytes(model, batch)
    assert saved[8, None] == saved[2, None]
    assert saved[8, 0] > 3 * saved[2, 0]  # the ordinary backward keeps every layer's activations
    assert saved[8, None] < saved[8, 0] / 4


def test_meft_trains_saves_loads_and_refuses_to_merge(tmp_path):
    model = peftkit.get_peft_model(tiny_model("bert"), MeftConfig(variant=1, reduction_factor=4, task_type="SEQ_CLS"))
    batch = {**tiny_batch(batch=8), "labels": torch.tensor([0, 1, 2, 0, 1, 2, 0, 1])}
    losses = train_losses(model, batch, steps=30, lr=1e-2)
    assert losses[-1] < 0.5 * losses[0]
    model.eval()
    expected = logits(model, batch)
    model.save_pretrained(tmp_path)
    loaded = peftkit.PeftModel.from_pretrained(tiny_model("bert"), tmp_path)
    assert torch.allclose(logits(loaded, batch), expected, atol=1e-6)
    with pytest.raises(ConfigError, match="MEFT cannot be merged"):
        model.merge_and_unload()


def test_meft_decoder_generates_the_same_with_and_without_cache():
    model = meft_model("llama", 3, dtype=torch.float32)
    prompt = tiny_batch()["input_ids"][:1]
    cached = model.generate(input_ids=prompt, max_new_tokens=5, do_sample=False, use_cache=True)
    uncached = model.generate(input_ids=prompt, max_new_tokens=5, do_sample=False, use_cache=False)
    assert torch.equal(cached, uncached)


def test_bad_meft_settings_are_named():
    with pytest.raises(ConfigError, match="variant"):
        MeftConfig(variant=4)
    with pytest.raises(ConfigError, match="cannot be inverted"):
        MeftConfig(variant=1, lam=0.0)
    with pytest.raises(ConfigError, match="consecutive"):
        peftkit.get_peft_model(deep_bert(3), MeftConfig(layers_to_transform=[0, 2]))
    with pytest.raises(ConfigError, match="transformer layer"):
        peftkit.get_peft_model(tiny_model("gpt2"), MeftConfig())


def test_wide_streams_keep_float32_layers_and_match_the_narrow_result():
    narrow = meft_model("bert", 1, dtype=torch.float32)
    wide = meft_model("bert", 1, dtype=torch.float32, wide_streams=True)
    batch = tiny_batch()
    out_narrow, grads_narrow = loss_and_grads(narrow, batch)
    out_wide, grads_wide = loss_and_grads(wide, batch)
    assert out_wide.dtype == torch.float32
    assert torch.allclose(out_wide, out_narrow, atol=1e-5)
    for name, grad in grads_narrow.items():
        assert (grads_wide[name] - grad).norm() <= 1e-4 * grad.norm(), name
