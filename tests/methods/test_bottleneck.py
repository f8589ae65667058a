import pytest
import torch

import peftkit
from peftkit import BottleneckConfig, ConfigError
from peftkit.methods.bottleneck import BottleneckLayer
from tests.conftest import assert_changed, assert_merge_round_trip, logits, randomize_trainable, tiny_batch, tiny_model
from tests.methods.test_lora_encoder_decoder import seq2seq, seq2seq_logits

PLACEMENTS = ["houlsby", "pfeiffer", "parallel"]


@pytest.mark.parametrize("placement", PLACEMENTS)
def test_adapters_start_at_the_base_model_round_trip_and_refuse_to_merge(kind, placement, tmp_path):
    base = logits(tiny_model(kind))
    model = peftkit.get_peft_model(tiny_model(kind), BottleneckConfig(placement=placement, reduction_factor=4))
    assert len(list(model.adapter_layers())) == (4 if placement == "houlsby" else 2)
    assert torch.equal(logits(model), base)
    randomize_trainable(model)
    expected = logits(model)
    assert_changed(expected, base)
    model.save_pretrained(tmp_path)
    assert torch.equal(logits(peftkit.PeftModel.from_pretrained(tiny_model(kind), tmp_path)), expected)
    with pytest.raises(ConfigError, match="cannot be merged"):
        model.merge_and_unload()
    assert torch.equal(logits(model), expected)


@pytest.mark.parametrize("kind", ["t5", "bart"])
@pytest.mark.parametrize("placement", PLACEMENTS)
def test_adapters_on_encoder_decoders_start_at_the_base(kind, placement):
    model = peftkit.get_peft_model(seq2seq(kind), BottleneckConfig(placement=placement))
    assert torch.equal(seq2seq_logits(model), seq2seq_logits(seq2seq(kind)))


def test_bert_parallel_adapter_reads_the_feed_forward_input():
    model = peftkit.get_peft_model(tiny_model("bert"), BottleneckConfig(placement="parallel", reduction_factor=4))
    randomize_trainable(model)
    layer0 = model.get_base_model().bert.encoder.layer[0]
    seen = {}
    layer0.intermediate.register_forward_hook(lambda m, args, out: seen.update(block_input=args[0]))
    layer0.output.dense.base_layer.register_forward_hook(lambda m, args, out: seen.update(dense=out))
    wrapper = layer0.output.dense
    wrapper.register_forward_hook(lambda m, args, out: seen.update(adapted=out))
    logits(model, tiny_batch())
    expected = seen["dense"] + 4.0 * wrapper.bottleneck["default"](seen["block_input"])
    assert torch.allclose(seen["adapted"], expected, atol=1e-6)


@pytest.mark.parametrize("placement", ["pfeiffer", "parallel"])
def test_linear_adapters_merge_and_unmerge_exactly(placement):
    targets = ["attention.output.dense"]
    config = BottleneckConfig(placement=placement, non_linearity="identity", reduction_factor=4,
                              target_modules=targets)
    model = peftkit.get_peft_model(tiny_model("bert"), config)
    randomize_trainable(model)
    plain = assert_merge_round_trip(model, weight_tolerance=1e-5)
    assert not any(isinstance(m, BottleneckLayer) for m in plain.modules())


def test_bad_bottleneck_settings_name_the_field():
    with pytest.raises(ConfigError, match="placement"):
        BottleneckConfig(placement="middle")
    with pytest.raises(ConfigError, match="non_linearity"):
        BottleneckConfig(non_linearity="softplus")
    with pytest.raises(ConfigError, match="reduction_factor"):
        BottleneckConfig(reduction_factor=0)
