"""Vocabulary reduction (MAFT): same tokens and hidden states for covered text, the parameter count cut."""

from __future__ import annotations

import pytest
import torch
from transformers import AutoTokenizer, BertConfig, BertForMaskedLM, LlamaConfig, LlamaForCausalLM

import peftkit
from peftkit.core.pretrained import bundled_model_dir, smollm2_dir
from peftkit.recipes.vocabulary import reduce_vocabulary, save_reduced

CORPUS = ["Habari za asubuhi, rais amesema leo.", "Watoto wanacheza mpira uwanjani kesho!",
          "Ìròyìn: ọjà ń lọ dáadáa ní Èkó."]
INSIDE = ["Habari za asubuhi, rais amesema", "Watoto wanacheza mpira uwanjani"]  # its tokens all occur in CORPUS


def tiny_bert_mlm(vocab_size: int) -> BertForMaskedLM:
    torch.manual_seed(0)
    config = BertConfig(vocab_size=vocab_size, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                        intermediate_size=48, max_position_embeddings=64)
    return BertForMaskedLM(config).eval()


def tiny_llama(vocab_size: int) -> LlamaForCausalLM:
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=vocab_size, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=True,
                         bos_token_id=1, eos_token_id=2, pad_token_id=2)
    return LlamaForCausalLM(config).eval()


def outputs(model, tokenizer, texts) -> tuple[list[list[str]], torch.Tensor, torch.Tensor]:
    batch = tokenizer(texts, return_tensors="pt", padding=True)
    tokens = [tokenizer.convert_ids_to_tokens(ids) for ids in batch["input_ids"]]
    with torch.no_grad():
        result = model(**batch, output_hidden_states=True)
    return tokens, result.hidden_states[-1] * batch["attention_mask"][..., None], result.logits


@pytest.mark.parametrize("kind", ["wordpiece", "bpe"])
def test_covered_text_keeps_its_tokens_hidden_states_and_logits(kind, tmp_path):
    folder = bundled_model_dir() if kind == "wordpiece" else smollm2_dir()
    tokenizer = AutoTokenizer.from_pretrained(folder)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    model = (tiny_bert_mlm if kind == "wordpiece" else tiny_llama)(len(tokenizer))
    tokens, hidden, logits = outputs(model, tokenizer, INSIDE)

    model, reduced, report = reduce_vocabulary(model, tokenizer, texts=CORPUS)
    assert report["vocabulary_after"] < 0.1 * report["vocabulary_before"]
    assert report["parameters_removed"] >= (report["vocabulary_before"] - report["vocabulary_after"]) * 32
    new_tokens, new_hidden, new_logits = outputs(model, reduced, INSIDE)
    assert new_tokens == tokens and all(reduced.unk_token not in t for t in new_tokens)
    assert (new_hidden - hidden).abs().max() <= 1e-6
    kept_logit_columns = [tokenizer.convert_tokens_to_ids(t) for t in reduced.convert_ids_to_tokens(
        list(range(len(reduced))))]
    assert (new_logits - logits[..., kept_logit_columns]).abs().max() <= 1e-5

    save_reduced(model, reduced, tmp_path)  # a working smaller model folder
    loaded_tokenizer = AutoTokenizer.from_pretrained(tmp_path)
    loaded = type(model).from_pretrained(tmp_path).eval()
    assert outputs(loaded, loaded_tokenizer, INSIDE)[0] == tokens
    assert (outputs(loaded, loaded_tokenizer, INSIDE)[1] - hidden).abs().max() <= 1e-6


def test_the_parameter_reduction_is_removed_rows_times_hidden_size():
    tokenizer = AutoTokenizer.from_pretrained(bundled_model_dir())
    model = tiny_bert_mlm(len(tokenizer))
    before = sum(p.numel() for p in model.parameters())
    model, reduced, report = reduce_vocabulary(model, tokenizer, texts=CORPUS)
    removed_rows = report["vocabulary_before"] - report["vocabulary_after"]
    # tied embedding / decoder matrix (32 wide) + the MLM head's bias over the vocabulary
    assert report["parameters_removed"] == removed_rows * (32 + 1)
    assert sum(p.numel() for p in model.parameters()) == before - removed_rows * 33
    assert model.get_output_embeddings().weight is model.get_input_embeddings().weight  # still tied
    assert model.config.vocab_size == len(reduced) == report["vocabulary_after"]


def test_scripts_keep_only_tokens_of_those_scripts():
    tokenizer = AutoTokenizer.from_pretrained(bundled_model_dir())
    model = tiny_bert_mlm(len(tokenizer))
    _, reduced, report = reduce_vocabulary(model, tokenizer, scripts=["latin"])
    vocabulary = reduced.get_vocab()
    assert "habari" in vocabulary or "##bari" in vocabulary or "the" in vocabulary
    assert not any("\u4e00" <= ch <= "\u9fff" for token in vocabulary for ch in token)  # no CJK
    assert 0.5 * report["vocabulary_before"] < report["vocabulary_after"] < report["vocabulary_before"]


def test_nothing_to_keep_is_an_error():
    tokenizer = AutoTokenizer.from_pretrained(bundled_model_dir())
    with pytest.raises(peftkit.ConfigError, match="needs a corpus"):
        reduce_vocabulary(tiny_bert_mlm(len(tokenizer)), tokenizer)
