"""Causal-LM data: prompt / completion pairs and chat conversations, with the loss on what the model writes.

Each row becomes a list of text pieces, each marked trained or not:

* ``{"prompt": ..., "completion": ...}`` — the prompt as written, then the completion and the end-of-text
  token (trained);
* ``{"messages": [{"role": ..., "content": ...}, ...]}`` — rendered with the tokenizer's chat template;
  every assistant turn (its text and closing tokens) is trained, everything else is context.

Pieces are tokenised one by one and concatenated, so the labels are exactly the trained pieces' tokens
(−100 elsewhere). Sequences longer than ``max_length`` keep their end (where the completion is).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from peftkit.core.errors import DataError
from peftkit.tasks.classification import bundled_sst2
from peftkit.tasks.data import read_rows

IGNORE = -100
SST2_INSTRUCTION = "Is the sentiment of this movie review positive or negative?\n\nReview: {sentence}"


@dataclass
class Example:
    pieces: list[tuple[str, bool]]  # (text, trained)

    @property
    def answer(self) -> str:
        """The last trained piece: the completion, or the last assistant turn."""
        return next(text for text, trained in reversed(self.pieces) if trained)

    @property
    def context(self) -> list[tuple[str, bool]]:
        """Everything before the answer."""
        last = max(i for i, (_, trained) in enumerate(self.pieces) if trained)
        return self.pieces[:last]


def _chat_pieces(tokenizer, messages, where: str) -> list[tuple[str, bool]]:
    if not isinstance(messages, list) or not all(isinstance(m, dict) and {"role", "content"} <= set(m)
                                                 for m in messages):
        raise DataError(f"{where}: 'messages' must be a list of {{'role': ..., 'content': ...}} objects")
    if not any(m["role"] == "assistant" for m in messages):
        raise DataError(f"{where}: the conversation has no assistant turn to learn")
    if tokenizer.chat_template is None:
        raise DataError(f"{where}: chat-format data needs a tokenizer with a chat template; this model has none")
    pieces, rendered = [], ""
    for index, message in enumerate(messages):
        if message["role"] == "assistant":
            prefix = tokenizer.apply_chat_template(messages[:index], tokenize=False, add_generation_prompt=True)
            pieces.append((prefix[len(rendered):], False))
            rendered = prefix
        upto = tokenizer.apply_chat_template(messages[:index + 1], tokenize=False)
        if not upto.startswith(rendered):
            raise DataError(f"{where}: the chat template does not render conversations incrementally")
        pieces.append((upto[len(rendered):], message["role"] == "assistant"))
        rendered = upto
    return [(text, trained) for text, trained in pieces if text]


def to_example(tokenizer, row: dict, where: str) -> Example:
    if "messages" in row:
        return Example(_chat_pieces(tokenizer, row["messages"], where))
    if "prompt" in row and "completion" in row:
        prompt, completion = row["prompt"], row["completion"]
        if not isinstance(prompt, str) or not isinstance(completion, str) or not completion:
            raise DataError(f"{where}: 'prompt' and 'completion' must be text, the completion non-empty")
        return Example([(prompt, False), (completion + (tokenizer.eos_token or ""), True)])
    raise DataError(f"{where}: a causal-LM row needs 'prompt' and 'completion', or 'messages'; "
                    f"columns: {', '.join(row)}")


def load_lm_examples(tokenizer, path: str | Path, rows: list[dict] | None = None) -> list[Example]:
    rows = read_rows(path) if rows is None else rows
    return [to_example(tokenizer, row, f"{path}:{number}") for number, row in enumerate(rows, start=1)]


def _ids(tokenizer, text: str) -> list[int]:
    return tokenizer(text, add_special_tokens=False)["input_ids"]


def encode(tokenizer, example: Example, max_length: int) -> dict:
    """input_ids and labels (−100 outside the trained pieces), cut to the last ``max_length`` tokens, and
    ``answer_from_end``: how many tokens from the answer's first token to the end."""
    input_ids, labels, answer_start = [], [], None
    for text, trained in example.pieces:
        ids = _ids(tokenizer, text)
        if trained:
            answer_start = len(input_ids)
        input_ids += ids
        labels += ids if trained else [IGNORE] * len(ids)
    return {"input_ids": input_ids[-max_length:], "labels": labels[-max_length:],
            "answer_from_end": 0 if answer_start is None else min(len(input_ids) - answer_start, max_length)}


def sst2_instruction_rows(split: str) -> list[dict]:
    """The bundled SST-2 as a chat instruction task: the review in a question, "positive"/"negative" answered."""
    return [{"messages": [{"role": "user", "content": SST2_INSTRUCTION.format(sentence=row["text"])},
                          {"role": "assistant", "content": row["label"]}]}
            for row in read_rows(bundled_sst2(split))]
