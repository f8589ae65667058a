"""Causal-LM data: the loss falls on completions and assistant turns only; bad rows are named."""

import pytest
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import PreTrainedTokenizerFast

from peftkit import DataError
from peftkit.tasks.causal_lm import IGNORE, encode, to_example

WORDS = ["<pad>", "<unk>", "<eos>", "<user>", "<assistant>", "<system>", "great", "film", "dull", "plot",
         "positive", "negative", "review", "be", "brief", "hi", "hello"]
CHAT_TEMPLATE = ("{% for m in messages %}<{{ m.role }}> {{ m.content }} <eos> {% endfor %}"
                 "{% if add_generation_prompt %}<assistant> {% endif %}")


def tiny_tokenizer() -> PreTrainedTokenizerFast:
    """A word-level tokenizer with a chat template, built in memory."""
    backend = Tokenizer(models.WordLevel({w: i for i, w in enumerate(WORDS)}, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend, pad_token="<pad>", eos_token="<eos>",
                                        unk_token="<unk>", padding_side="left")
    tokenizer.chat_template = CHAT_TEMPLATE
    return tokenizer


def trained_words(tokenizer, encoded) -> list[str]:
    return [WORDS[i] for i, label in zip(encoded["input_ids"], encoded["labels"], strict=True) if label != IGNORE]


def test_prompt_completion_trains_the_completion_and_end_token_only():
    tokenizer = tiny_tokenizer()
    example = to_example(tokenizer, {"prompt": "review great film ", "completion": "positive"}, "row 1")
    encoded = encode(tokenizer, example, max_length=64)
    assert [WORDS[i] for i in encoded["input_ids"]] == ["review", "great", "film", "positive", "<eos>"]
    assert trained_words(tokenizer, encoded) == ["positive", "<eos>"]
    assert example.answer == "positive<eos>"


def test_chat_trains_every_assistant_turn_and_nothing_else():
    tokenizer = tiny_tokenizer()
    messages = [{"role": "system", "content": "be brief"}, {"role": "user", "content": "hi"},
                {"role": "assistant", "content": "hello"}, {"role": "user", "content": "review dull plot"},
                {"role": "assistant", "content": "negative"}]
    encoded = encode(tokenizer, to_example(tokenizer, {"messages": messages}, "row 1"), max_length=64)
    assert trained_words(tokenizer, encoded) == ["hello", "<eos>", "negative", "<eos>"]
    assert [WORDS[i] for i in encoded["input_ids"]][:3] == ["<system>", "be", "brief"]


def test_long_examples_keep_their_end():
    tokenizer = tiny_tokenizer()
    example = to_example(tokenizer, {"prompt": "review " + "dull " * 20, "completion": "negative"}, "row 1")
    encoded = encode(tokenizer, example, max_length=5)
    assert len(encoded["input_ids"]) == 5
    assert trained_words(tokenizer, encoded) == ["negative", "<eos>"]


@pytest.mark.parametrize(("row", "message"), [
    ({"text": "hi"}, "needs 'prompt' and 'completion', or 'messages'; columns: text"),
    ({"prompt": "hi", "completion": ""}, "completion non-empty"),
    ({"messages": [{"role": "user", "content": "hi"}]}, "no assistant turn"),
    ({"messages": "hi"}, "must be a list"),
])
def test_bad_rows_are_named(row, message):
    with pytest.raises(DataError, match=message) as error:
        to_example(tiny_tokenizer(), row, "data.jsonl:3")
    assert str(error.value).startswith("data.jsonl:3: ")
