"""Padding-free batches: the packed loss and its gradients equal the padded batch's, the probe tells a model that
keeps packed rows apart from one that does not, and the collator counts what packing saved."""

import pytest
import torch

from peftkit.core.mechanics.packing import (
    EncoderPackingCollator,
    PackingCollator,
    first_fit,
    keeps_rows_apart,
    packed_loss,
)
from peftkit.core.peft_model import get_peft_model
from peftkit.methods.lora import LoraConfig
from peftkit.recipes.causal_lm import LeftPadCollator, completion_loss
from peftkit.tasks.causal_lm import IGNORE
from tests.conftest import VOCAB, randomize_trainable, tiny_model

# rows of very different lengths, each with a prompt (untrained) and a completion (trained)
ROWS = [(11, 3), (2, 1), (25, 6), (7, 2)]


def rows() -> list[dict]:
    generator = torch.Generator().manual_seed(3)
    made = []
    for prompt, completion in ROWS:
        ids = torch.randint(1, VOCAB, (prompt + completion,), generator=generator).tolist()
        made.append({"input_ids": ids, "labels": [IGNORE] * prompt + ids[prompt:]})
    return made


def lora_model(kind: str) -> torch.nn.Module:
    model = get_peft_model(tiny_model(kind), LoraConfig(r=4, lora_alpha=8, target_modules="all-linear",
                                                        task_type="CAUSAL_LM"))
    randomize_trainable(model)
    return model


def loss_and_gradients(model, loss_fn, batch) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    model.zero_grad()
    loss = loss_fn(model, batch)
    loss.backward()
    return loss.detach(), {name: p.grad.clone() for name, p in model.named_parameters() if p.requires_grad}


@pytest.mark.parametrize("kind", ["llama", "gpt2"])
def test_packed_loss_and_gradients_equal_the_padded_batchs(kind):
    model = lora_model(kind)
    padded_loss, padded_grads = loss_and_gradients(model, completion_loss, LeftPadCollator(0)(rows()))
    assert padded_loss > 1.0  # a real loss, not an empty batch's zero
    for packed_batch in (PackingCollator()(rows()), PackingCollator().pack(rows(), 31)):  # 1 row, and 2 (padded)
        packed_loss_value, packed_grads = loss_and_gradients(model, packed_loss, packed_batch)
        assert torch.allclose(packed_loss_value, padded_loss, atol=1e-5)
        assert padded_grads.keys() == packed_grads.keys() and len(padded_grads) > 4
        for name, gradient in padded_grads.items():
            assert gradient.abs().max() > 0, name
            assert torch.allclose(packed_grads[name], gradient, atol=1e-5), name


def test_rows_are_packed_first_fit_into_rows_of_the_longest_rows_length():
    assert first_fit([14, 3, 31, 9], 31) == [[2], [0, 3, 1]]
    assert first_fit([5, 5, 5], 10) == [[0, 1], [2]]


def test_packed_rows_are_as_long_as_the_longest_row_or_256_tokens_or_one_row_for_flash_attention():
    assert PackingCollator().capacity([300, 200, 120]) == 300 and PackingCollator().capacity([10, 20]) == 256
    assert PackingCollator(one_row=True).capacity([300, 200, 120]) == 620
    long_rows = [{"input_ids": [1] * n, "labels": [1] * n} for n in (300, 200, 90)]
    assert PackingCollator()(long_rows)["input_ids"].shape == (2, 300)  # [300], [200, 90] (+ 10 padding)
    assert PackingCollator(one_row=True)(long_rows)["input_ids"].shape == (1, 590)


def test_the_collator_packs_rows_end_to_end_and_counts_the_padding_it_avoids():
    collator = PackingCollator(pad_token_id=7)
    batch = collator(rows())  # lengths 14, 3, 31, 9: all in one row (short rows share rows of up to 256)
    assert batch["input_ids"].shape == (1, 57) and batch["position_ids"][0].tolist() == [
        *range(31), *range(14), *range(9), *range(3)]
    assert collator.describe() == ("padding-free: 57 tokens packed into 57 positions where padded batches would "
                                   "have held 124 (54% less)")
    collator = PackingCollator(pad_token_id=7)
    batch = collator.pack(rows(), 31)  # rows of at most 31: [31] and [14, 9, 3] (+ 5 padding)
    assert batch["input_ids"].shape == batch["labels"].shape == batch["position_ids"].shape == (2, 31)
    assert batch["position_ids"][1].tolist() == [*range(14), *range(9), *range(3), *range(5)]
    assert batch["input_ids"][1, -5:].tolist() == [7] * 5 and batch["labels"][1, -5:].tolist() == [IGNORE] * 5
    assert [int(batch["labels"][1, s]) for s in (0, 14, 23)] == [IGNORE] * 3  # no row predicts the next row's start
    assert collator.tokens == 57 and collator.packed_tokens == 62 and collator.padded_tokens == 4 * 31
    assert collator.describe() == ("padding-free: 57 tokens packed into 62 positions where padded batches would "
                                   "have held 124 (50% less)")


@pytest.mark.parametrize("kind", ["llama", "gpt2"])
def test_the_probe_accepts_models_that_keep_packed_rows_apart(kind):
    model = tiny_model(kind).train()
    assert keeps_rows_apart(model, list(range(1, 12)), PackingCollator(), use_cache=False)
    assert keeps_rows_apart(model, list(range(1, 12)), PackingCollator(one_row=True), use_cache=False)
    assert model.training  # its mode restored


class Unmasked(torch.nn.Module):
    """A toy causal LM whose attention ignores position ids: each token sees every earlier token of the batch."""

    def __init__(self) -> None:
        super().__init__()
        self.embed = torch.nn.Embedding(VOCAB, 8)
        self.head = torch.nn.Linear(8, VOCAB)

    def forward(self, input_ids, position_ids=None, use_cache=None):
        hidden = self.embed(input_ids).cumsum(1)
        return type("Output", (), {"logits": self.head(hidden)})


def test_the_probe_refuses_a_model_whose_attention_mixes_packed_rows():
    assert not keeps_rows_apart(Unmasked(), list(range(1, 12)), PackingCollator(), use_cache=False)


def tagging_rows() -> list[dict]:
    generator = torch.Generator().manual_seed(4)
    made = []
    for length in (9, 3, 17, 6):
        ids = torch.randint(1, VOCAB, (length,), generator=generator).tolist()
        tags = torch.randint(0, 3, (length,), generator=generator).tolist()
        made.append({"input_ids": ids, "token_type_ids": [0] * length, "attention_mask": [1] * length,
                     "labels": [IGNORE] + tags[1:-1] + [IGNORE]})  # special tokens untagged, as tokenised
    return made


def tiny_tagger(attention: str) -> torch.nn.Module:
    from transformers import BertConfig, BertForTokenClassification

    torch.manual_seed(0)
    config = BertConfig(vocab_size=VOCAB, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                        intermediate_size=48, max_position_embeddings=64, num_labels=3, hidden_dropout_prob=0.0,
                        attention_probs_dropout_prob=0.0, attn_implementation=attention)
    model = get_peft_model(BertForTokenClassification(config),
                           LoraConfig(r=4, target_modules=["query", "value"], task_type="TOKEN_CLS"))
    randomize_trainable(model)
    return model


@pytest.mark.parametrize("attention", ["sdpa", "eager"])
def test_a_packed_encoder_batch_has_the_padded_batchs_loss_and_gradients(attention):
    from transformers import DataCollatorForTokenClassification

    from tests.conftest import word_tokenizer

    model = tiny_tagger(attention)
    model_loss = lambda model, batch: model(**batch).loss  # noqa: E731
    padded = DataCollatorForTokenClassification(word_tokenizer())(tagging_rows())
    padded_loss, padded_grads = loss_and_gradients(model, model_loss, padded)
    assert padded_loss > 0.5
    one_row = EncoderPackingCollator()(tagging_rows())
    three_rows = EncoderPackingCollator().pack(tagging_rows(), 17)  # lengths 9, 3, 17, 6: [17], [9, 6], [3]
    assert one_row["attention_mask"].shape == (1, 1, 35, 35) and three_rows["input_ids"].shape == (3, 17)
    for packed in (one_row, three_rows):
        packed_loss_value, packed_grads = loss_and_gradients(model, model_loss, packed)
        assert torch.allclose(packed_loss_value, padded_loss, atol=1e-5)
        for name, gradient in padded_grads.items():
            assert gradient.abs().max() > 0, name
            assert torch.allclose(packed_grads[name], gradient, atol=1e-5), name
    assert keeps_rows_apart(model, list(range(1, 12)), EncoderPackingCollator())
    assert not keeps_rows_apart(model, list(range(1, 12)), PackingCollator())  # no mask: every token sees every row
