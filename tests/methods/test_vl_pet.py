"""VL-PET: identity at the start, the formula on one sub-layer per granularity, gate shapes, where the
modules go (encoder sub-layers; decoder cross-attention values only), training and save / load."""

import pytest
import torch
import torch.nn.functional as F

import peftkit
from peftkit import ConfigError, PeftModel, VlPetConfig
from peftkit.methods.vl_pet import GRANULARITIES, GatedModule
from tests.conftest import logits, randomize_trainable, tiny_model, train_losses
from tests.methods.test_lora_encoder_decoder import seq2seq, seq2seq_logits


@pytest.mark.parametrize("granularity", GRANULARITIES)
@pytest.mark.parametrize("kind", ["t5", "bart"])
def test_starts_at_the_base_model_and_then_changes_it(kind, granularity):
    model = seq2seq(kind)
    base = seq2seq_logits(model)
    peft_model = peftkit.get_peft_model(model, VlPetConfig(granularity=granularity))
    assert (seq2seq_logits(peft_model) - base).abs().max() <= 1e-6
    randomize_trainable(peft_model)
    assert (seq2seq_logits(peft_model) - base).abs().max() > 1e-3


def test_encoder_sub_layers_get_modules_and_the_decoder_only_value_adapters():
    names = [n for n, _ in peftkit.get_peft_model(seq2seq("t5"), VlPetConfig()).adapter_layers()]
    encoder = [n for n in names if n.startswith("encoder.")]
    decoder = [n for n in names if n.startswith("decoder.")]
    assert encoder == [f"encoder.block.{i}.layer.{j}.{m}" for i in range(2)
                       for j, m in ((0, "SelfAttention"), (1, "DenseReluDense"))]
    assert decoder == [f"decoder.block.{i}.layer.1.EncDecAttention.v" for i in range(2)]


@pytest.mark.parametrize("granularity, shape", [("large", (2, 5, 32)), ("middle-x", (2, 5, 1)),
                                                ("middle-y", (32,)), ("small", (2, 1, 1))])
def test_gate_shapes_per_granularity(granularity, shape):
    module = GatedModule(32, VlPetConfig(granularity=granularity), torch.empty(0))
    x, h = torch.randn(2, 5, 32), torch.randn(2, 5, 32)
    assert module.gate(x, h, module.delta(x)).shape == shape


@pytest.mark.parametrize("granularity", GRANULARITIES)
def test_bert_feed_forward_module_is_the_formula_on_the_block_input(granularity):
    """BERT's feed-forward block has no module: the module wraps output.dense and reads x at intermediate."""
    model = peftkit.get_peft_model(tiny_model("bert"), VlPetConfig(granularity=granularity, num_heads=2))
    randomize_trainable(model)
    layer = model.get_base_model().bert.encoder.layer[0]
    module = layer.output.dense.vl_pet["default"]
    x = torch.randn(2, 6, 32)
    with torch.no_grad():
        got = layer.output.dense(layer.intermediate(x))  # the hook captures x at intermediate
        h = layer.output.dense.base_layer(layer.intermediate(x))
        sliced = x.unflatten(-1, (2, 16))
        delta = module.up(F.gelu(torch.einsum("bthi,hio->btho", sliced, module.down).flatten(-2)))
        w = module.gate_weight
        gate = {"large": lambda: 2 * torch.sigmoid(delta),
                "middle-x": lambda: 2 * torch.sigmoid((x + h) @ w)[..., None],
                "middle-y": lambda: 1 + w,
                "small": lambda: (2 * torch.sigmoid(torch.cat([x, h], -1) @ w)).mean(1)[:, None, None]}[granularity]()
    assert torch.allclose(got, (h + delta) * gate, atol=1e-6)


def test_encoder_only_model_trains_and_round_trips(tmp_path):
    model = peftkit.get_peft_model(tiny_model("bert"), VlPetConfig(granularity="middle-x", task_type="SEQ_CLS"))
    batch = {"input_ids": torch.randint(1, 120, (8, 12), generator=torch.Generator().manual_seed(0)),
             "labels": torch.tensor([0, 1, 2, 0, 1, 2, 0, 1])}
    losses = train_losses(model, batch, steps=50, lr=2e-2)
    assert losses[-1] < 0.5 * losses[0]
    model.eval()
    expected = logits(model, {"input_ids": batch["input_ids"]})
    model.save_pretrained(tmp_path / "vl-pet")
    loaded = PeftModel.from_pretrained(tiny_model("bert"), tmp_path / "vl-pet")
    assert torch.allclose(logits(loaded, {"input_ids": batch["input_ids"]}), expected, atol=1e-6)


def test_bad_settings_name_the_problem():
    with pytest.raises(ConfigError, match="granularity must be one of"):
        VlPetConfig(granularity="huge")
    with pytest.raises(ConfigError, match="not divisible by num_heads=5"):
        peftkit.get_peft_model(tiny_model("bert"), VlPetConfig(num_heads=5))
    with pytest.raises(ConfigError, match="cannot be merged"):
        peftkit.get_peft_model(tiny_model("bert"), VlPetConfig()).merge_and_unload()
