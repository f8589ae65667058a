"""LoRA on encoder-decoder models (T5, BART): starts at the base model, merges exactly, crosses to peft."""

import peft
import pytest
import torch
from transformers import BartConfig, BartForConditionalGeneration, T5Config, T5ForConditionalGeneration

import peftkit
from tests.conftest import VOCAB, assert_changed, randomize_trainable


def seq2seq(kind: str) -> torch.nn.Module:
    torch.manual_seed(0)
    if kind == "t5":
        config = T5Config(vocab_size=VOCAB, d_model=32, d_kv=8, d_ff=48, num_layers=2, num_heads=4,
                          decoder_start_token_id=0, pad_token_id=0, eos_token_id=1)
        return T5ForConditionalGeneration(config).eval()
    config = BartConfig(vocab_size=VOCAB, d_model=32, encoder_layers=2, decoder_layers=2, encoder_attention_heads=4,
                        decoder_attention_heads=4, encoder_ffn_dim=48, decoder_ffn_dim=48, max_position_embeddings=64,
                        pad_token_id=1, bos_token_id=0, eos_token_id=2, decoder_start_token_id=2)
    return BartForConditionalGeneration(config).eval()


def seq2seq_logits(model) -> torch.Tensor:
    generator = torch.Generator().manual_seed(3)
    inputs = torch.randint(3, VOCAB, (2, 7), generator=generator)
    targets = torch.randint(3, VOCAB, (2, 5), generator=generator)
    with torch.no_grad():
        return model(input_ids=inputs, decoder_input_ids=targets).logits


@pytest.mark.parametrize("kind", ["t5", "bart"])
def test_encoder_decoder_lora_starts_at_base_merges_and_loads_into_peft(kind, tmp_path):
    base = seq2seq_logits(seq2seq(kind))
    model = peftkit.get_peft_model(seq2seq(kind), peftkit.LoraConfig(r=4))  # default targets for the model type
    assert len(peftkit.plan(seq2seq(kind), peftkit.LoraConfig(r=4)).modules) == 12  # q and v in 6 attention blocks
    assert (seq2seq_logits(model) - base).abs().max() <= 1e-6
    randomize_trainable(model)
    adapted = seq2seq_logits(model)
    assert_changed(adapted, base)
    model.save_pretrained(tmp_path)
    theirs = peft.PeftModel.from_pretrained(seq2seq(kind), tmp_path)
    assert (seq2seq_logits(theirs) - adapted).abs().max() <= 1e-5
    merged = model.merge_and_unload()
    assert (seq2seq_logits(merged) - adapted).abs().max() <= 1e-5
