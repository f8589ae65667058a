import peft
import pytest
import torch

import peftkit
from peftkit import ConfigError
from tests.conftest import assert_changed, logits, randomize_trainable, tiny_model


def test_bitfit_trains_one_delta_per_bias_and_starts_at_the_base():
    base_model = tiny_model("bert")
    bias_elements = sum(p.numel() for n, p in base_model.named_parameters()
                        if n.endswith("bias") and not n.startswith("classifier"))
    model = peftkit.get_peft_model(tiny_model("bert"), peftkit.BitFitConfig())
    assert torch.equal(logits(model), logits(base_model))
    trainable = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    assert all("bitfit_bias" in n for n, _ in trainable)
    assert sum(p.numel() for _, p in trainable) == bias_elements


def test_bitfit_merges_into_the_biases_exactly_and_disables_cleanly(kind):
    if kind == "llama":
        with pytest.raises(ConfigError, match="finds no module it can adapt.*with a bias"):
            peftkit.get_peft_model(tiny_model(kind), peftkit.BitFitConfig())
        return
    model = peftkit.get_peft_model(tiny_model(kind), peftkit.BitFitConfig())
    randomize_trainable(model)
    expected = logits(model)
    assert_changed(expected, logits(tiny_model(kind)))
    with model.disable_adapter():
        assert torch.equal(logits(model), logits(tiny_model(kind)))
    assert (logits(model.merge_and_unload()) - expected).abs().max() <= 1e-6


def test_ln_tuning_hits_every_norm_and_crosses_to_peft_both_ways(kind, tmp_path):
    model = peftkit.get_peft_model(tiny_model(kind), peftkit.LNTuningConfig())
    norms = [name for name, _ in model.adapter_layers()]
    assert len(norms) == 5  # embeddings/final + two per layer
    assert torch.equal(logits(model), logits(tiny_model(kind)))
    randomize_trainable(model)
    expected = logits(model)
    model.save_pretrained(tmp_path / "ours")
    theirs = peft.PeftModel.from_pretrained(tiny_model(kind), tmp_path / "ours")
    assert (logits(theirs) - expected).abs().max() <= 1e-6
    theirs.save_pretrained(tmp_path / "theirs")
    back = peftkit.PeftModel.from_pretrained(tiny_model(kind), tmp_path / "theirs")
    assert (logits(back) - expected).abs().max() <= 1e-6
    assert (logits(model.merge_and_unload()) - expected).abs().max() <= 1e-6


@pytest.mark.parametrize(("kind", "config"), [("bart", peftkit.BitFitConfig()), ("t5", peftkit.LNTuningConfig()),
                                              ("bart", peftkit.LNTuningConfig())])
def test_bitfit_and_ln_tuning_on_encoder_decoders(kind, config):
    from tests.methods.test_lora_encoder_decoder import seq2seq, seq2seq_logits

    base = seq2seq_logits(seq2seq(kind))
    model = peftkit.get_peft_model(seq2seq(kind), config)
    assert torch.equal(seq2seq_logits(model), base)
    randomize_trainable(model)
    adapted = seq2seq_logits(model)
    assert_changed(adapted, base, at_least=1e-3)
    assert (seq2seq_logits(model.merge_and_unload()) - adapted).abs().max() <= 1e-5


def test_bitfit_says_t5_has_no_biases():
    from tests.methods.test_lora_encoder_decoder import seq2seq

    with pytest.raises(ConfigError, match="with a bias"):
        peftkit.get_peft_model(seq2seq("t5"), peftkit.BitFitConfig())
